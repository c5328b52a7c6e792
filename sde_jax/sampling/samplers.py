"""The samplers (one function each, k-diffusion style) and the entry points ``sample``, ``encode``, ``decode``.

    samples, info = sample(score, sde, key, shape, method="ode", **options)

draws x_T ~ p_T (``sde.prior_sample``), runs the sampler of ``method`` from T down to ``eps`` (or along ``ts``) and,
with ``denoise=True`` (the default), ends with one Tweedie step at the last time (:func:`sde_jax.score.denoise`)

    x_0 = (x_eps + sigma(eps)^2 s(x_eps, eps)) / alpha(eps).

``info["nfe"]`` is the number of score evaluations, an int32 array (the denoising step included).

================== ================================================================ ==============================
method             what it integrates                                               own options (defaults)
================== ================================================================ ==============================
``"ode"``          probability-flow ODE (diffrax); adaptive if ``steps`` and        solver="tsit5", rtol=1e-5,
                   ``ts`` are None, else fixed steps on the grid                    atol=1e-5, max_steps=4096
``"sde"``          reverse-time SDE (diffrax: Euler–Maruyama / SRA1 / ShARK)        steps=1000, solver="euler",
                                                                                    brownian="unsafe"
``"pc"``           predictor-corrector (Song et al. 2021, Alg. 1-3)                 steps=1000, n_corrector=1,
                                                                                    predictor="reverse_diffusion",
                                                                                    snr=sde.corrector_snr
``"ancestral"``    ancestral sampling on the SDE's discrete chain (DDPM for VP,     steps=sde.N - 1
                   SMLD for VE, the sampled schedule otherwise)
``"ddim"``         DDIM, eta = 0 deterministic, eta > 0 stochastic (any SDE)        steps=50, eta=0.0
``"dpmpp_2m"``     DPM-Solver++(2M), multistep in log-SNR time (Lu et al. 2022)     steps=20, grid="logsnr",
                                                                                    lower_order_final=True
``"dpmpp_3m"``     DPM-Solver++(3M)                                                 steps=20, grid="logsnr",
                                                                                    lower_order_final=True
``"dpmpp_2m_sde"`` SDE-DPM-Solver++(2M), stochastic                                 steps=20, grid="logsnr",
                                                                                    lower_order_final=True
``"unipc"``        UniPC predictor-corrector (Zhao et al. 2023); the corrector      steps=20, grid="logsnr",
                   costs no extra evaluation                                        order=2, variant="bh2",
                                                                                    lower_order_final=True
``"heun"``         EDM's Heun sampler (Karras et al. 2022, Alg. 1), with Alg. 2's   steps=17, grid="edm",
                   churn when s_churn > 0 (2 evaluations per step)                  s_churn=0, s_tmin=0,
                                                                                    s_tmax=inf, s_noise=1
``"consistency"``  a consistency model f(x, t) -> x_0 in place of the score (Song et al.  steps=1, grid="edm"
                   2023): one step, or multistep with re-noising at ``ts``; no
                   denoising step
``"picard"``       parallel-in-time (Shih et al. 2023, ParaDiGMS): the trajectory   base="ddim", window=16,
                   of the fixed-grid sampler ``base`` (ddim, ancestral, pc, heun;   tol=0.1, devices=1, and the
                   its noise drawn from the same key) by Picard sweeps over a       options of ``base``
                   sliding window, sharded over ``devices``; tol = 0 reproduces
                   the sequential run. info adds sweeps (the parallel depth),
                   accepted, residuals
================== ================================================================ ==============================

The multistep methods (:mod:`sde_jax.sampling.multistep`) use one evaluation per step, lower orders while their
history fills and, with ``lower_order_final`` on grids of fewer than 15 steps, in the last two steps. With
``denoise=True`` their run ends with the data prediction at the last time, which is exactly their (and EDM's)
first-order final step to sigma = 0: ``steps=N`` then costs N + 1 evaluations, like diffusers' N + 1 timesteps
with ``final_sigmas_type="zero"`` or EDM's N + 1 noise levels.

Every method takes ``eps`` (default ``sde.eps``) and ``denoise``; the fixed-step ones take ``steps=N`` with
``grid="uniform" | "logsnr" | "edm" | "quadratic"`` and ``rho=7`` (:mod:`sde_jax.sampling.grids`), or an explicit
decreasing grid ``ts`` (then not ``steps``, ``grid``, ``rho`` or ``eps``; the last time of ``ts`` plays eps).
Step defaults follow score_sde (1000 steps for the SDE, PC and ancestral samplers), DDIM (50 steps), DPM-Solver++ and
UniPC (20) and EDM (N = 18 noise levels: 17 steps and the denoising step).

Options are plain keyword arguments of the sampler functions below, checked once in Python before anything is
traced (an unknown name or a bad value raises ``ValueError`` saying what to change). The work is compiled with
``equinox.filter_jit``, the score and the SDE as arguments: a pytree score (:class:`sde_jax.ScoreModel`, the
guidance transforms) with new weights of the same shapes reuses the compiled program, and its weights are never
XLA constants. A plain function ``score(x, t)`` works too, but it is static: a new function object (a new closure,
a new ``lambda``) compiles again, and whatever it closes over becomes a constant of the program.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_jax.sampling import grids
from sde_jax.sampling.diffrax_solves import pf_ode_solve, reverse_sde_solve
from sde_jax.sampling.solvers import ADAPTIVE_ODE_SOLVERS, ODE_SOLVERS, SDE_SOLVERS
from sde_jax.sampling import multistep
from sde_jax.sampling.picard import picard_loop
from sde_jax.sampling.steps import (PREDICTORS, ancestral_step, ddim_step, heun_step, interval_loop,
                                    interval_update, langevin_step, stochastic_heun_step)
from sde_jax.score import denoise as tweedie
from sde_jax.sde import LinearSDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


# ------------------------------------------------------------------------------------------ samplers
# Each: sampler(score, sde, key, x, *, options) -> (x at the last time, nfe), x the prior sample at T.
def _ode_ts(sde: LinearSDE, steps, grid, rho, ts, eps) -> tuple[Array, bool]:
    """(grid, adaptive): the end points (T, eps) for an adaptive solve, else the fixed grid."""
    if steps is None and ts is None:
        return jnp.asarray([sde.T, sde.eps if eps is None else eps], jnp.float32), True
    return grids.resolve(sde, ts, steps, grid, rho, eps), False


def sample_ode(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, solver: str = "tsit5", steps: int | None = None,
    grid: str = "uniform", rho: float = 7.0, ts=None, eps: float | None = None, rtol: float = 1e-5,
    atol: float = 1e-5, max_steps: int = 4096,
) -> tuple[Array, Array]:
    """Probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021, eq. 13) from T to eps:
    adaptive (``rtol``, ``atol``, ``max_steps``) when ``steps`` and ``ts`` are None, else fixed steps on the grid
    (:func:`~sde_jax.sampling.diffrax_solves.pf_ode_solve`). Deterministic given x_T; ``key`` is unused."""
    del key
    ts, adaptive = _ode_ts(sde, steps, grid, rho, ts, eps)
    return pf_ode_solve(score, sde, x, ts, solver=solver, adaptive=adaptive, rtol=rtol, atol=atol,
                        max_steps=max_steps)


def sample_sde(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, steps: int = 1000, grid: str = "uniform",
    rho: float = 7.0, ts=None, eps: float | None = None, solver: str = "euler", brownian: str = "unsafe",
) -> tuple[Array, int]:
    """Reverse-time SDE dx = [f - g^2 s] dt + g dw_bar (Song et al. 2021, eq. 6) on the grid, with diffrax
    (:func:`~sde_jax.sampling.diffrax_solves.reverse_sde_solve`)."""
    return reverse_sde_solve(score, sde, key, x, grids.resolve(sde, ts, steps, grid, rho, eps), solver=solver,
                             brownian=brownian)


class StepPlan(NamedTuple):
    """A fixed-grid sampler as data: its grid ``ts``, the map of one interval ``interval(score, sde, key, x, t,
    t_next) -> x_next`` (:func:`~sde_jax.sampling.steps.interval_update` with the method's steps) and the score
    evaluations one interval costs. :func:`run_plan` runs it sequentially (``interval_loop``); the Picard sampler
    (:mod:`sde_jax.sampling.picard`) solves for the same trajectory in parallel."""
    ts: Array
    interval: Callable[..., Array]
    evals: int


def run_plan(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, plan: StepPlan) -> tuple[Array, int]:
    """The sequential run of ``plan``: one ``lax.scan`` over its grid. nfe = evals x steps."""
    return interval_loop(score, sde, key, x, plan.ts, plan.interval), plan.evals * (plan.ts.shape[0] - 1)


def _plan(ts: Array, predictor, evals: int = 1, **loop) -> StepPlan:
    return StepPlan(ts, functools.partial(interval_update, predictor=predictor, **loop), evals)


def plan_pc(
    sde: LinearSDE, x: Array, *, steps: int = 1000, grid: str = "uniform", rho: float = 7.0, ts=None,
    eps: float | None = None, predictor: str = "reverse_diffusion", n_corrector: int = 1, snr: float | None = None,
) -> StepPlan:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3; score_sde ``pc_sampler``): at each t_k of the grid,
    ``n_corrector`` Langevin steps (``langevin_step``, ``snr`` default ``sde.corrector_snr``), then one predictor
    step t_k -> t_{k+1} (``reverse_diffusion_step`` or ``euler_maruyama_step``). nfe = steps (1 + n_corrector)."""
    snr = sde.corrector_snr if snr is None else snr
    return _plan(grids.resolve(sde, ts, steps, grid, rho, eps), PREDICTORS[predictor], 1 + n_corrector,
                 corrector=functools.partial(langevin_step, snr=snr), n_corrector=n_corrector)


def plan_ancestral(
    sde: LinearSDE, x: Array, *, steps: int | None = None, grid: str = "uniform", rho: float = 7.0, ts=None,
    eps: float | None = None,
) -> StepPlan:
    """Ancestral sampling (Ho et al. 2020, Alg. 2; score_sde ``AncestralSamplingPredictor``): one ``ancestral_step``
    per grid interval between the discrete levels the times stand for. The default, ``steps = N - 1`` uniform
    steps from T to eps, visits every level once (score_sde's N - 1 transitions; with the denoising step, its N
    updates). nfe = steps."""
    steps = sde.N - 1 if steps is None else steps
    return _plan(grids.resolve(sde, ts, steps, grid, rho, eps), ancestral_step)


def plan_ddim(
    sde: LinearSDE, x: Array, *, steps: int = 50, grid: str = "uniform", rho: float = 7.0, ts=None,
    eps: float | None = None, eta: float = 0.0,
) -> StepPlan:
    """DDIM (Song, Meng & Ermon 2021): one ``ddim_step`` per grid interval. nfe = steps."""
    return _plan(grids.resolve(sde, ts, steps, grid, rho, eps), functools.partial(ddim_step, eta=eta))


def plan_heun(
    sde: LinearSDE, x: Array, *, steps: int = 17, grid: str = "edm", rho: float = 7.0, ts=None,
    eps: float | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> StepPlan:
    """EDM's sampler (Karras et al. 2022): Heun steps on the rho-grid (``heun_step``, Alg. 1), with ``s_churn`` > 0
    the stochastic sampler (``stochastic_heun_step``, Alg. 2) with gamma = min(s_churn / (steps + 1), sqrt(2) - 1),
    steps + 1 being EDM's N (which counts the final step to s~ = 0, the denoising step here); ``s_tmin``,
    ``s_tmax`` bound the noise levels s~ = sigma / alpha that are churned, ``s_noise`` scales the added noise.
    The default, 17 steps, is EDM's N = 18 (35 NFE with the denoising step). nfe = 2 steps."""
    ts = _grid(sde, x, ts, steps, grid, rho, eps)
    step = heun_step
    if s_churn > 0:
        gamma = min(s_churn / ts.shape[0], math.sqrt(2.0) - 1.0)
        step = functools.partial(stochastic_heun_step, gamma=gamma, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return _plan(ts, step, 2)


def sample_pc(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, **options) -> tuple[Array, int]:
    """:func:`plan_pc`, run sequentially."""
    return run_plan(score, sde, key, x, plan_pc(sde, x, **options))


def sample_ancestral(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, **options) -> tuple[Array, int]:
    """:func:`plan_ancestral`, run sequentially."""
    return run_plan(score, sde, key, x, plan_ancestral(sde, x, **options))


def sample_ddim(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, **options) -> tuple[Array, int]:
    """:func:`plan_ddim`, run sequentially."""
    return run_plan(score, sde, key, x, plan_ddim(sde, x, **options))


def sample_heun(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, **options) -> tuple[Array, int]:
    """:func:`plan_heun`, run sequentially."""
    return run_plan(score, sde, key, x, plan_heun(sde, x, **options))


def _grid(sde: LinearSDE, x: Array, ts, steps, grid, rho, eps) -> Array:
    """The fixed grid in the state's dtype (the fast samplers compute their coefficients from it)."""
    return grids.resolve(sde, ts, steps, grid, rho, eps).astype(x.dtype)


def sample_dpmpp_2m(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, steps: int = 20, grid: str = "logsnr",
    rho: float = 7.0, ts=None, eps: float | None = None, lower_order_final: bool = True,
) -> tuple[Array, int]:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second-order multistep in log-SNR time with data prediction,
    first-order warm-up step (:func:`~sde_jax.sampling.multistep.dpmpp_2m_update`). Deterministic; nfe = steps."""
    return multistep.multistep_loop(score, sde, key, x, _grid(sde, x, ts, steps, grid, rho, eps),
                                    (multistep.dpmpp_1_update, multistep.dpmpp_2m_update),
                                    lower_order_final=lower_order_final)


def sample_dpmpp_3m(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, steps: int = 20, grid: str = "logsnr",
    rho: float = 7.0, ts=None, eps: float | None = None, lower_order_final: bool = True,
) -> tuple[Array, int]:
    """DPM-Solver++(3M): third-order multistep in log-SNR time with data prediction, first- and second-order
    warm-up (:func:`~sde_jax.sampling.multistep.dpmpp_3m_update`). Deterministic; nfe = steps."""
    return multistep.multistep_loop(score, sde, key, x, _grid(sde, x, ts, steps, grid, rho, eps),
                                    (multistep.dpmpp_1_update, multistep.dpmpp_2m_update, multistep.dpmpp_3m_update),
                                    lower_order_final=lower_order_final)


def sample_dpmpp_2m_sde(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, steps: int = 20, grid: str = "logsnr",
    rho: float = 7.0, ts=None, eps: float | None = None, lower_order_final: bool = True,
) -> tuple[Array, int]:
    """SDE-DPM-Solver++(2M) (diffusers ``sde-dpmsolver++``, midpoint form): the reverse SDE in log-SNR time with
    data prediction, fresh noise every step (:func:`~sde_jax.sampling.multistep.dpmpp_2m_sde_update`).
    nfe = steps."""
    return multistep.multistep_loop(score, sde, key, x, _grid(sde, x, ts, steps, grid, rho, eps),
                                    (multistep.dpmpp_sde_1_update, multistep.dpmpp_2m_sde_update),
                                    lower_order_final=lower_order_final)


def sample_unipc(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, steps: int = 20, grid: str = "logsnr",
    rho: float = 7.0, ts=None, eps: float | None = None, order: int = 2, variant: str = "bh2",
    lower_order_final: bool = True,
) -> tuple[Array, int]:
    """UniPC (Zhao et al. 2023): the predictor UniP-``order`` and, after each new evaluation, the corrector
    UniC-``order`` that reuses it (no extra NFE; order + 1 in all), in log-SNR time with data prediction.
    ``order`` 1, 2 or 3; ``variant`` B(h) = h (``"bh1"``, the paper's choice for unconditional sampling) or e^h - 1
    (``"bh2"``, guided sampling; diffusers' default). The last step is not corrected (no evaluation follows).
    Deterministic; nfe = steps."""
    predictors = [functools.partial(multistep.unipc_predict_update, order=k, variant=variant)
                  for k in range(1, order + 1)]
    correctors = [functools.partial(multistep.unipc_correct_update, order=k, variant=variant)
                  for k in range(1, order + 1)]
    return multistep.multistep_loop(score, sde, key, x, _grid(sde, x, ts, steps, grid, rho, eps), predictors,
                                    lower_order_final=lower_order_final, correctors=correctors)


PLANS: dict[str, Callable[..., StepPlan]] = {"pc": plan_pc, "ancestral": plan_ancestral, "ddim": plan_ddim,
                                            "heun": plan_heun}


def sample_picard(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, base: str = "ddim", window: int = 16, tol: float = 0.1,
    devices: int = 1, **base_options,
) -> tuple[Array, dict[str, Array]]:
    """Parallel-in-time sampling (Shih et al. 2023, ParaDiGMS): the trajectory of the fixed-grid sampler ``base``
    (``"ddim"``, ``"ancestral"``, ``"pc"`` or ``"heun"``, with its own options ``base_options`` and the same key)
    found by Picard iteration over a sliding window of ``window`` steps, sharded over ``devices`` local devices
    (:func:`~sde_jax.sampling.picard.picard_loop`). ``tol`` = 0 reproduces the sequential sampler to float
    rounding; info adds ``sweeps`` (the parallel depth), ``accepted`` and ``residuals``."""
    plan = PLANS[base](sde, x, **base_options)
    return picard_loop(score, sde, key, x, plan.ts, plan.interval, plan.evals, window=window, tol=tol,
                       devices=devices)


def sample_consistency(
    model: ScoreFn, sde: LinearSDE, key: Array, x: Array, *, steps: int = 1, grid: str = "edm", rho: float = 7.0,
    ts=None, eps: float | None = None,
) -> tuple[Array, int]:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1) with a consistency model ``model(x, t) -> x_0``
    (:class:`sde_jax.distill.ConsistencyModel`) in place of the score: x_0 = f(x_T, T), then ``steps`` - 1 times
    re-noise x_0 to the next time and map back. The noise-injection times are the first ``steps`` times of the
    ``grid`` from T to ``eps`` (one step: T alone), or ``ts`` (decreasing, starting at T). nfe = steps."""
    if ts is None:
        ts = grids.time_grid(sde, steps, sde.T, sde.eps if eps is None else eps, grid, rho)[:-1]
    ts = jnp.asarray(ts, x.dtype)
    bt = lambda t: jnp.full((x.shape[0],), t, x.dtype)
    x0 = model(x, bt(ts[0]))
    for i in range(1, ts.shape[0]):
        x0 = model(sde.marginal_sample(jax.random.fold_in(key, i), x0, bt(ts[i])), bt(ts[i]))
    return x0, ts.shape[0]


SAMPLERS: dict[str, Callable[..., tuple[Array, Any]]] = {
    "ode": sample_ode, "sde": sample_sde, "pc": sample_pc, "ancestral": sample_ancestral, "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m, "dpmpp_3m": sample_dpmpp_3m, "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc, "heun": sample_heun, "picard": sample_picard, "consistency": sample_consistency,
}
LOG_SNR_METHODS = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "heun")  # need sigma(t) > 0 on the whole grid
UNIPC_ORDERS = (1, 2, 3)
METHODS: tuple[str, ...] = tuple(SAMPLERS)


# -------------------------------------------------------------------------------------- validation
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _choice(choices, what: str):
    def check(name, v):
        if v not in choices:
            raise ValueError(f"unknown {what} {name}={v!r}; choose one of {sorted(choices)}.")
    return check


def _positive(name, v):
    if not (_is_real(v) and v > 0):
        raise ValueError(f"{name} must be a positive number; got {v!r}.")


def _int_at_least(low: int):
    def check(name, v):
        if not (_is_int(v) and v >= low):
            raise ValueError(f"{name} must be an integer >= {low}; got {v!r}.")
    return check


def _snr(name, v):
    if v is not None and not (_is_real(v) and v > 0):
        raise ValueError(f"snr must be > 0 (the Langevin signal-to-noise ratio; score_sde: 0.16 VE, 0.01 VP); got "
                         f"{v!r}. Leave it None for sde.corrector_snr, or pass n_corrector=0 to drop the corrector.")


def _eta(name, v):
    if not (_is_real(v) and 0 <= v <= 1):
        raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: posterior sampling); got {v!r}.")


def _bool(name, v):
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False; got {v!r}.")


def _order(name, v):
    if not (_is_int(v) and v in UNIPC_ORDERS):
        raise ValueError(f"order must be one of {UNIPC_ORDERS} for method='unipc' (UniP-p with UniC-p, order p + 1 "
                         f"in all); got {v!r}.")


def _non_negative(what: str):
    def check(name, v):
        if not (_is_real(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 ({what}); got {v!r}.")
    return check


def _s_noise(name, v):
    if not (_is_real(v) and v > 0):
        raise ValueError(f"s_noise must be a positive finite number (EDM uses 1.0 to 1.007); got {v!r}.")


def _s_tmax(name, v):
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0 and not math.isnan(v)):
        raise ValueError(f"s_tmax must be a number >= 0 or math.inf (the largest churned sigma / alpha); got {v!r}.")


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "grid": _choice(grids.GRIDS, "time grid"), "rho": _positive, "rtol": _positive, "atol": _positive,
    "max_steps": _int_at_least(1), "predictor": _choice(PREDICTORS, "predictor"),
    "n_corrector": _int_at_least(0), "snr": _snr, "eta": _eta,
    "brownian": _choice(("unsafe", "tree"), "Brownian motion"),
    "order": _order, "variant": _choice(multistep.UNIPC_VARIANTS, "UniPC B(h) variant"),
    "lower_order_final": _bool, "s_churn": _non_negative("EDM's S_churn; 0 is the deterministic sampler"),
    "s_tmin": _non_negative("the smallest churned sigma / alpha"), "s_tmax": _s_tmax, "s_noise": _s_noise,
}
_SOLVER_CHECKS = {"ode": _choice(ODE_SOLVERS, "ODE solver"), "sde": _choice(SDE_SOLVERS, "SDE solver")}


def _check_steps(method: str, v, allow_none: bool) -> None:
    if not ((v is None and allow_none) or (_is_int(v) and v >= 1)):
        hint = " (or None for its default)" if allow_none else ""
        raise ValueError(f"steps must be an integer >= 1{hint} for method={method!r}; got {v!r}.")


def _validate(method: str, sde: LinearSDE, options: dict) -> dict:
    """All keyword options of the sampler of ``method`` (its plan's, for the fixed-grid samplers): ``options``
    checked against its keyword-only parameters, defaults filled in, every value checked; ``eps`` resolved (default
    ``sde.eps``) and ``ts`` a tuple of float32 values. For ``"picard"``, its own options and those of its base."""
    if method == "picard":
        return _validate_picard(sde, options)
    fn = PLANS.get(method, SAMPLERS[method])
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"unknown option {unknown} for method={method!r}; valid options: {sorted(params)} and "
                         "denoise.")
    opts = {n: options.get(n, p.default) for n, p in params.items()}
    for name, value in opts.items():
        if name == "solver":
            _SOLVER_CHECKS[method](name, value)
        elif name in _CHECKS:
            _CHECKS[name](name, value)
    _check_steps(method, opts["steps"], allow_none=params["steps"].default is None)

    if opts["ts"] is not None:
        clash = sorted(set(options) & {"steps", "grid", "rho", "eps"})
        if clash:
            raise ValueError(f"ts fixes the time grid, so {clash} cannot be passed with it: drop {clash} or ts.")
        opts["ts"] = tuple(float(v) for v in grids.check_ts(opts["ts"], sde.T))
    else:
        eps = sde.eps if opts["eps"] is None else opts["eps"]
        if not (_is_real(eps) and 0 < eps < sde.T):
            raise ValueError(f"eps must lie in (0, T={sde.T}); got {eps!r}. The default is sde.eps={sde.eps}.")
        opts["eps"] = float(eps)
        if opts["steps"] is not None:
            opts["steps"] = int(opts["steps"])

    if method == "ode":
        adaptive = opts["steps"] is None and opts["ts"] is None
        off = sorted(set(options) & ({"grid", "rho"} if adaptive else {"rtol", "atol", "max_steps"}))
        if off:
            raise ValueError(f"{off} apply only to {'fixed' if adaptive else 'adaptive'} ODE solves: "
                             f"{'pass steps=N or ts' if adaptive else 'drop steps and ts'} or drop {off}.")
        if adaptive and opts["solver"] not in ADAPTIVE_ODE_SOLVERS:
            raise ValueError(f"solver={opts['solver']!r} has no error estimate, so it cannot choose its own steps: "
                             f"pass steps=N for a fixed grid, or use an adaptive solver {list(ADAPTIVE_ODE_SOLVERS)}.")
    if method in LOG_SNR_METHODS and opts["ts"] is not None and opts["ts"][-1] <= 0:
        raise ValueError(f"method={method!r} works with sigma(t) / alpha(t) and the log-SNR, which need sigma(t) > 0 "
                         "at every time of ts, so ts must end above 0 (e.g. at sde.eps). To land on the data, keep "
                         "denoise=True: its Tweedie step is the first-order step to sigma = 0 of these solvers.")
    if method == "heun":
        if opts["s_tmin"] > opts["s_tmax"]:
            raise ValueError(f"s_tmin={opts['s_tmin']!r} must not exceed s_tmax={opts['s_tmax']!r} (the range of "
                             "sigma / alpha where EDM's churn adds noise).")
        off = sorted(set(options) & {"s_tmin", "s_tmax", "s_noise"})
        if opts["s_churn"] == 0 and off:
            raise ValueError(f"{off} apply only to EDM's stochastic sampler: pass s_churn > 0 as well, or drop {off}.")
    if method == "ancestral" and opts["steps"] is not None and opts["steps"] > sde.N - 1:
        raise ValueError(f"ancestral sampling walks the SDE's N={sde.N} discrete levels, so steps must be <= N - 1 = "
                         f"{sde.N - 1}; got {opts['steps']}. Build the SDE with a larger N for more steps.")
    return opts


def _validate_picard(sde: LinearSDE, options: dict) -> dict:
    own = {n: p.default for n, p in inspect.signature(sample_picard).parameters.items() if p.kind is p.KEYWORD_ONLY}
    opts = {n: options.get(n, d) for n, d in own.items()}
    if opts["base"] not in PLANS:
        raise ValueError(f"method='picard' iterates a fixed-grid sampler: base must be one of {sorted(PLANS)}; got "
                         f"base={opts['base']!r}. The multistep solvers carry a history between steps, which a Picard "
                         "sweep would have to rebuild.")
    _int_at_least(1)("window", opts["window"])
    _non_negative("the accepted change per step, in units of the step's noise std; 0 = exact")("tol", opts["tol"])
    _int_at_least(1)("devices", opts["devices"])
    if opts["devices"] > jax.local_device_count():
        raise ValueError(f"devices={opts['devices']} but this process has {jax.local_device_count()} local "
                         "devices.")
    if opts["window"] % opts["devices"]:
        raise ValueError(f"window={opts['window']} must be a multiple of devices={opts['devices']} (each device "
                         "evaluates window / devices steps of a sweep).")
    base = _validate(opts["base"], sde, {n: v for n, v in options.items() if n not in own})
    steps = len(base["ts"]) - 1 if base["ts"] is not None else base["steps"]
    if steps is not None and opts["window"] > steps and steps % opts["devices"]:
        raise ValueError(f"the window is cut to the {steps} steps of the grid, which must then be a multiple of "
                         f"devices={opts['devices']}.")
    return {**opts, **base}


def _check_denoise(denoise, opts: dict) -> float:
    """The last time of the solve, where the denoising step reads the score."""
    if not isinstance(denoise, bool):
        raise ValueError(f"denoise must be True or False; got {denoise!r}.")
    t_end = opts["ts"][-1] if opts["ts"] is not None else opts["eps"]
    if denoise and t_end <= 0:
        raise ValueError("the denoising step reads the score at the last time of ts, which is 0 here; end ts above "
                         "0 (e.g. at sde.eps) or pass denoise=False.")
    return t_end


def _check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple (B, *data_shape); got {shape!r}.") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (B, *data_shape) with a batch dimension and positive sizes; got {shape}. "
                         f"For a single sample of shape {shape} pass shape=(1, *{shape}).")
    return shape


# ------------------------------------------------------------------------------------ entry points
@eqx.filter_jit
def _sample(score, sde, key, shape, method, denoise, t_end, options):
    k_prior, k_run = jax.random.split(key)
    x = sde.prior_sample(k_prior, shape).astype(jnp.float32)
    x, out = SAMPLERS[method](score, sde, k_run, x, **options)
    info = dict(out) if isinstance(out, dict) else {"nfe": out}
    if denoise:
        x, info["nfe"] = tweedie(score, sde, x, t_end), info["nfe"] + 1
    return x, {**info, "nfe": jnp.asarray(info["nfe"], jnp.int32)}


def sample(
    score: ScoreFn, sde: LinearSDE, key: Array, shape: tuple[int, ...], method: str = "ode", **options: Any
) -> tuple[Array, dict[str, Array]]:
    """Draw ``shape[0]`` samples by running the reverse process of ``sde`` with the score ``score``.

    Args:
      score: ``score(x, t) -> array like x``, x of shape (B, *data_shape), t of shape (B,): a
        :class:`~sde_jax.ScoreModel` (or any pytree callable: a jit argument) or a plain function (static).
      sde: a :class:`~sde_jax.LinearSDE`.
      key: a ``jax.random`` key (prior sample and, for stochastic methods, the noise).
      shape: ``(B, *data_shape)``; a batch dimension is required.
      method: ``"ode"``, ``"sde"``, ``"pc"``, ``"ancestral"``, ``"ddim"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``,
        ``"dpmpp_2m_sde"``, ``"unipc"``, ``"heun"`` or ``"picard"``; options as in the module docstring.

    Returns:
      ``(samples, info)``: samples of shape ``shape``; ``info["nfe"]`` the number of score evaluations (int32
      array; for adaptive ODE solves it depends on the key).

    Raises:
      ValueError: unknown method or option, or an invalid option value (checked before any tracing).
    """
    shape = _check_shape(shape)
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampling method method={method!r}; choose one of {list(METHODS)}.")
    options = dict(options)
    denoise = options.pop("denoise", method != "consistency")
    if method == "consistency" and denoise:
        raise ValueError("method='consistency' maps straight to x_0 (the model is a consistency function, not a "
                         "score): drop denoise or pass denoise=False.")
    opts = _validate(method, sde, options)
    return _sample(score, sde, key, shape, method, denoise, _check_denoise(denoise, opts), opts)


@eqx.filter_jit
def _pf_ode(score, sde, x, forward, denoise, t_end, options):
    o = dict(options)
    ts, adaptive = _ode_ts(sde, o.pop("steps"), o.pop("grid"), o.pop("rho"), o.pop("ts"), o.pop("eps"))
    x, nfe = pf_ode_solve(score, sde, x, ts[::-1] if forward else ts, adaptive=adaptive, **o)
    if denoise:
        x, nfe = tweedie(score, sde, x, t_end), nfe + 1
    return x, {"nfe": jnp.asarray(nfe, jnp.int32)}


def _run_pf_ode(score, sde, x, forward: bool, denoise, options: dict):
    _check_shape(jnp.shape(x))
    opts = _validate("ode", sde, options)
    return _pf_ode(score, sde, jnp.asarray(x, jnp.float32), forward, denoise, _check_denoise(denoise, opts), opts)


def encode(score: ScoreFn, sde: LinearSDE, x: Array, **options: Any) -> tuple[Array, dict[str, Array]]:
    """Data -> latent: the probability-flow ODE from t = eps forwards to T (``ts``: along ``ts`` reversed).

    ``options`` as for ``sample(method="ode")`` (adaptive ``tsit5`` by default). ``x`` has shape (B, *data_shape).
    Returns ``(z, info)`` with ``info["nfe"]``; ``decode(encode(x))`` returns x up to the solver tolerance.
    """
    return _run_pf_ode(score, sde, x, True, False, options)


def decode(
    score: ScoreFn, sde: LinearSDE, z: Array, *, denoise: bool = False, **options: Any
) -> tuple[Array, dict[str, Array]]:
    """Latent -> data: the probability-flow ODE from T backwards to eps, the inverse of :func:`encode`.

    Same options as :func:`encode`. ``denoise=False`` by default so that decode inverts encode; with ``denoise=True``
    it ends with the Tweedie step, which makes it ``sample(..., method="ode")`` for a given prior draw z.
    """
    return _run_pf_ode(score, sde, z, False, denoise, options)
