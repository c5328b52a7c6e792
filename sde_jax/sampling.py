"""Samplers for score-based models: reverse SDE, probability-flow ODE, predictor-corrector, ancestral, DDIM.

One entry point,

    samples, info = sample(score_fn, sde, key, shape, method="ode", **options)

draws ``x_T ~ p_T`` (``sde.prior_sample``), runs the sampler of ``method`` from T down to ``eps`` and, if
``denoise`` (default ``True``), ends with one Tweedie step (:func:`sde_jax.score.denoise`)

    x_0 = (x_eps + sigma(eps)^2 s(x_eps, eps)) / alpha(eps).

``info["nfe"]`` is the number of score evaluations (an int32 array; the denoising step included).

Behind it is one function per sampler with one signature (k-diffusion style),

    sample_<method>(score_fn, sde, key, x, *, eps, ...) -> (x_eps, nfe)

taking the prior sample ``x`` (B, *data_shape) at time T and returning the state at time eps and the
number of score evaluations. Continuous-time solvers run on diffrax; update rules that are discrete by
definition (PC, ancestral, DDIM) are ``lax.scan`` loops.

================ ============================================================== =======================
method           what it integrates                                              options (defaults)
================ ============================================================== =======================
``"sde"``        reverse-time SDE, diffrax (Euler–Maruyama / SRA1 / ShARK)       steps=1000, solver="euler",
                                                                                 brownian="unsafe"
``"ode"``        probability-flow ODE, diffrax; adaptive if ``steps`` is None     solver="tsit5", steps=None,
                 else fixed steps on a uniform or EDM (rho) time grid            rtol=atol=1e-5, grid="uniform",
                                                                                 rho=7, max_steps=4096
``"pc"``         predictor-corrector (Song et al. 2021, Alg. 1-3)                steps=1000,
                                                                                 predictor="reverse_diffusion",
                                                                                 n_corrector=1, snr=0.16 VE /
                                                                                 0.01 VP and sub-VP
``"ancestral"``  DDPM ancestral sampling (VP) / its SMLD analogue (VE) on the    steps=sde.N - 1
                 SDE's N discrete levels (sub-VP: ValueError)
``"ddim"``       DDIM, eta = 0 deterministic, eta > 0 stochastic (VP, sub-VP;    steps=50, eta=0.0,
                 VE: ValueError)                                                 grid="uniform", rho=7
================ ============================================================== =======================

Every method also takes ``eps`` (default ``sde.eps``: 1e-3 for VP / sub-VP, 1e-5 for VE) and ``denoise``.
Step-count defaults follow score_sde (1000 steps for the SDE, PC and ancestral samplers; the ancestral
default of N - 1 transitions plus the Tweedie step matches score_sde's 1000 updates, see
:func:`sample_ancestral`) and the DDIM paper (50 steps is its usual quality/speed point).

Options are checked in Python before anything is traced (wrong names or values raise ``ValueError``
saying what to change). ``sample`` compiles each (score_fn, sde, shape, method, options) combination
once with ``jax.jit`` and caches it (the last 16 combinations), so calling it again with a new key does
not recompile: keep the same ``score_fn`` object between calls. Called under a transformation
(the key is a tracer, e.g. ``jax.jit(lambda params, key: sample(score_fn(apply, params, sde), sde, key,
shape))``) it runs inline; that is the form to use when the network parameters change between calls,
because the cached path bakes whatever ``score_fn`` closes over into the compiled program as constants.

:func:`encode` / :func:`decode` map data to latents at T and back with the probability-flow ODE;
:func:`pf_ode_solve` is the shared helper behind them (and behind ``method="ode"``), and
:func:`ode_solver` / :func:`time_grid` are the solver and time-grid choices it uses, for code (e.g. the
likelihood) that integrates its own augmented ODE.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from sde_jax.score import denoise as tweedie_denoise
from sde_jax.sde import SDE, probability_flow_drift, reverse_drift

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "METHODS",
    "sample",
    "encode",
    "decode",
    "pf_ode_solve",
    "pf_ode_term",
    "ode_solver",
    "time_grid",
    "sample_sde",
    "sample_ode",
    "sample_pc",
    "sample_ancestral",
    "sample_ddim",
    "reverse_diffusion_step",
    "euler_maruyama_step",
    "langevin_step",
    "ancestral_step",
    "ddim_step",
]


# ------------------------------------------------------------------------------------- small helpers
def _bt(t, x: Array) -> Array:
    """Scalar time -> shape (B,) for the batch x."""
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def _noise_level(sde: SDE, t) -> np.ndarray:
    """lambda(t) = sigma(t) / alpha(t), the noise-to-signal ratio that EDM's sigma is (increasing in t)."""
    with jax.ensure_compile_time_eval():
        alpha, sigma = sde.alpha_sigma(jnp.asarray(t, jnp.float32))
        return np.asarray(sigma / alpha, np.float64)


def time_grid(
    sde: SDE, steps: int, t_start: float, t_end: float, kind: str = "uniform", rho: float = 7.0
) -> np.ndarray:
    """``steps + 1`` times from ``t_start`` to ``t_end`` (either direction), as a concrete float32 array.

    ``"uniform"``: equally spaced in t (score_sde, DDIM).
    ``"edm"``: equally spaced in lambda^(1/rho), lambda = sigma(t) / alpha(t) (Karras et al. 2022, eq. 5),

        lambda_i = (lambda_hi^(1/rho) + i / steps (lambda_lo^(1/rho) - lambda_hi^(1/rho)))^rho,

    mapped back to t by bisection on the increasing lambda(t); dense near the data end. The end points are
    exactly ``t_start`` and ``t_end`` (diffrax's ``StepTo`` needs that).
    """
    hi, lo = max(t_start, t_end), min(t_start, t_end)
    if kind == "uniform":
        ts = np.linspace(hi, lo, steps + 1)
    elif kind == "edm":
        l_hi, l_lo = _noise_level(sde, hi), _noise_level(sde, lo)
        u = np.linspace(0.0, 1.0, steps + 1)
        target = (l_hi ** (1 / rho) + u * (l_lo ** (1 / rho) - l_hi ** (1 / rho))) ** rho
        a, b = np.full_like(target, lo), np.full_like(target, hi)
        for _ in range(60):  # bisection: lambda is increasing in t
            mid = 0.5 * (a + b)
            below = _noise_level(sde, mid) < target
            a, b = np.where(below, mid, a), np.where(below, b, mid)
        ts = 0.5 * (a + b)
        ts[0], ts[-1] = hi, lo
    else:
        raise ValueError(f"unknown time grid {kind!r}; choose 'uniform' or 'edm'.")
    ts = ts.astype(np.float32)
    ts[0], ts[-1] = np.float32(hi), np.float32(lo)
    return ts if t_start >= t_end else ts[::-1].copy()


# ------------------------------------------------------------------------------------------- diffrax
_ODE_SOLVERS: dict[str, tuple[type, int, int]] = {
    # name: (diffrax class, score evaluations per step, extra evaluations once (FSAL first stage))
    "euler": (dfx.Euler, 1, 0),
    "heun": (dfx.Heun, 2, 0),
    "midpoint": (dfx.Midpoint, 2, 0),
    "bosh3": (dfx.Bosh3, 3, 1),
    "tsit5": (dfx.Tsit5, 6, 1),
    "dopri5": (dfx.Dopri5, 6, 1),
}
_ADAPTIVE_ODE_SOLVERS = ("heun", "bosh3", "tsit5", "dopri5")  # have an embedded error estimate

_SDE_SOLVERS: dict[str, tuple[type, int, type]] = {
    # name: (diffrax class, score evaluations per step, Brownian information it needs)
    "euler": (dfx.Euler, 1, dfx.BrownianIncrement),
    "sra1": (dfx.SRA1, 2, dfx.SpaceTimeLevyArea),
    "shark": (dfx.ShARK, 2, dfx.SpaceTimeLevyArea),
}


def ode_solver(name: str) -> dfx.AbstractSolver:
    """The diffrax solver for a name in ``euler, heun, midpoint, bosh3, tsit5, dopri5``."""
    if name not in _ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {name!r}; choose one of {sorted(_ODE_SOLVERS)}.")
    return _ODE_SOLVERS[name][0]()


def pf_ode_term(score_fn: ScoreFn, sde: SDE) -> dfx.ODETerm:
    """diffrax term of the probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021, eq. 13)."""
    return dfx.ODETerm(lambda t, y, args: probability_flow_drift(sde, score_fn, y, _bt(t, y)))


def pf_ode_solve(
    score_fn: ScoreFn,
    sde: SDE,
    x: Array,
    t0: float,
    t1: float,
    *,
    solver: str = "tsit5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    grid: str = "uniform",
    rho: float = 7.0,
    max_steps: int = 4096,
) -> tuple[Array, Array]:
    """Integrate the probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) from t0 to t1 (either direction).

    Adaptive (``steps=None``): ``PIDController(rtol, atol)``, ``dt0=None``; fixed: ``StepTo`` on
    :func:`time_grid` (``grid``, ``rho``). Returns ``(x(t1), nfe)``; nfe counts the vector-field calls (one
    score evaluation each): stages per step times steps (rejected steps included) plus the FSAL first stage.
    diffrax 0.7.2's automatic first step costs no evaluation (it sees a direction-wrapped term, not an
    ``ODETerm``, and starts from |dt| = 0.01); tests/test_sampling.py counts the calls at run time.
    Batched: one solve for the whole batch with one step size (the fastest choice on CPU, see DESIGN.md).
    """
    cls, per_step, once = _ODE_SOLVERS[solver]
    if steps is None:
        controller = dfx.PIDController(rtol=rtol, atol=atol)
        ta, tb = t0, t1
    else:
        ts = time_grid(sde, steps, t0, t1, grid, rho)
        controller = dfx.StepTo(ts=ts)
        ta, tb, max_steps = float(ts[0]), float(ts[-1]), steps
    sol = dfx.diffeqsolve(
        pf_ode_term(score_fn, sde),
        cls(),
        ta,
        tb,
        dt0=None,
        y0=x,
        stepsize_controller=controller,
        saveat=dfx.SaveAt(t1=True),
        max_steps=max_steps,
    )
    n = sol.stats["num_steps"]
    nfe = per_step * n + once
    return sol.ys[0], nfe


# ------------------------------------------------------------------------------------- the samplers
def sample_sde(
    score_fn: ScoreFn,
    sde: SDE,
    key: Array,
    x: Array,
    *,
    eps: float,
    steps: int = 1000,
    solver: str = "euler",
    brownian: str = "unsafe",
) -> tuple[Array, int]:
    """Reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6), solved with diffrax:

        dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw_bar,   t from T down to eps.

    Integrated forwards in s = T - t, y(s) = x(T - s):

        dy = [g^2 s(y, T - s) - f(y, T - s)] ds + g(T - s) dw,   s in [0, T - eps],

    which is the same law (w(s) = w_bar(T) - w_bar(T - s) is a Brownian motion) and sidesteps diffrax
    0.7.2's wrong backwards-in-time SRA1/ShARK (issue #598). ``solver``: ``"euler"`` (Euler–Maruyama, strong
    order 1/2) or the additive-noise Runge–Kutta methods ``"sra1"`` (Rößler 2010) and ``"shark"``, strong order
    1.5, two score evaluations per step (valid here because g depends on t only). ``steps`` equal steps.
    ``brownian``: ``"unsafe"`` (``UnsafeBrownianPath``, a fresh normal per step, ~15x cheaper, not
    differentiable) or ``"tree"`` (``VirtualBrownianTree``, reverse-mode differentiable).
    """
    cls, per_step, levy = _SDE_SOLVERS[solver]
    T = sde.T
    ts = np.linspace(0.0, T - eps, steps + 1).astype(np.float32)
    s1 = float(ts[-1])

    def drift(s, y, args):
        return -reverse_drift(sde, score_fn, y, _bt(T - s, y))

    def diffusion(s, y, args):
        return lx.DiagonalLinearOperator(jnp.broadcast_to(sde.diffusion(T - s).astype(y.dtype), y.shape))

    shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    if brownian == "unsafe":
        bm = dfx.UnsafeBrownianPath(shape=shape, key=key, levy_area=levy)
        adjoint = dfx.ForwardMode()
    else:
        bm = dfx.VirtualBrownianTree(0.0, s1, tol=s1 / steps / 16, shape=shape, key=key, levy_area=levy)
        adjoint = dfx.RecursiveCheckpointAdjoint()
    sol = dfx.diffeqsolve(
        dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm)),
        cls(),
        0.0,
        s1,
        dt0=None,
        y0=x,
        stepsize_controller=dfx.StepTo(ts=ts),
        saveat=dfx.SaveAt(t1=True),
        adjoint=adjoint,
        max_steps=steps,
    )
    return sol.ys[0], per_step * steps


def sample_ode(
    score_fn: ScoreFn,
    sde: SDE,
    key: Array,
    x: Array,
    *,
    eps: float,
    solver: str = "tsit5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    grid: str = "uniform",
    rho: float = 7.0,
    max_steps: int = 4096,
) -> tuple[Array, Array]:
    """Probability-flow ODE (Song et al. 2021, eq. 13) from T to eps, with diffrax (see :func:`pf_ode_solve`):

        dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t).

    Deterministic given x_T; ``key`` is unused.
    """
    del key
    return pf_ode_solve(
        score_fn, sde, x, sde.T, eps, solver=solver, steps=steps, rtol=rtol, atol=atol, grid=grid, rho=rho,
        max_steps=max_steps,
    )


def reverse_diffusion_step(score_fn: ScoreFn, sde: SDE, key: Array, x: Array, t, t_next) -> Array:
    """Reverse-diffusion predictor (Song et al. 2021, eq. 47; score_sde ``ReverseDiffusionPredictor``):

        x_next = x - f_i(x) + G_i^2 s(x, t) + G_i z,

    the reverse of the forward discretisation x_t = x_next + f_i(x_next) + G_i z. Here f_i and G_i are the
    exact linear-SDE transition from t_next to t: f_i(x) = (a - 1) x, a = alpha(t) / alpha(t_next), and
    G_i^2 = sigma(t)^2 - a^2 sigma(t_next)^2. For VE this is SMLD's step (G_i^2 = sigma_t^2 - sigma_next^2) and
    for VP it is DDPM's to first order (a ~ sqrt(1 - beta_i), G_i^2 ~ beta_i), on any time grid.
    """
    a_t, s_t = sde.alpha_sigma(t)
    a_n, s_n = sde.alpha_sigma(t_next)
    a = a_t / a_n
    g2 = jnp.maximum(s_t**2 - a**2 * s_n**2, 0.0)
    mean = (2.0 - a) * x + g2 * score_fn(x, _bt(t, x))
    return mean + jnp.sqrt(g2) * jax.random.normal(key, x.shape, x.dtype)


def euler_maruyama_step(score_fn: ScoreFn, sde: SDE, key: Array, x: Array, t, t_next) -> Array:
    """Euler–Maruyama step of the reverse SDE (Song et al. 2021, App. D; score_sde ``EulerMaruyamaPredictor``):

        x_next = x - [f(x, t) - g(t)^2 s(x, t)] dt + g(t) sqrt(dt) z,   dt = t - t_next > 0.
    """
    dt = t - t_next
    mean = x - reverse_drift(sde, score_fn, x, _bt(t, x)) * dt
    return mean + sde.diffusion(t) * jnp.sqrt(dt) * jax.random.normal(key, x.shape, x.dtype)


def _langevin_alpha(sde: SDE, t) -> Array:
    """alpha_i of the Langevin step size: 1 - beta_i (DDPM's discrete alpha) for VP, 1 for VE and sub-VP.

    score_sde reads ``sde.alphas`` for both VP and sub-VP, but only its VP defines them (its sub-VP
    corrector crashes); sub-VP has no discrete chain, so it gets 1 like VE. The factor is within 2 % of 1
    anyway (beta_i <= beta_max / N).
    """
    if sde.name == "vp":
        return 1.0 - sde.discrete_betas[sde.discrete_index(t)]
    return jnp.ones((), jnp.float32)


def langevin_step(score_fn: ScoreFn, sde: SDE, key: Array, x: Array, t, snr: float) -> Array:
    """One Langevin corrector step at fixed t (Song et al. 2021, Alg. 4 and 5; score_sde ``LangevinCorrector``):

        eta = 2 alpha_i (snr ||z|| / ||s(x, t)||)^2,   x <- x + eta s(x, t) + sqrt(2 eta) z,

    with the norms averaged over the batch as in score_sde (one step size per batch) and alpha_i as in
    :func:`_langevin_alpha`.
    """
    grad = score_fn(x, _bt(t, x))
    z = jax.random.normal(key, x.shape, x.dtype)
    flat = lambda a: a.reshape(a.shape[0], -1)
    grad_norm = jnp.mean(jnp.linalg.norm(flat(grad), axis=-1))
    noise_norm = jnp.mean(jnp.linalg.norm(flat(z), axis=-1))
    step = 2.0 * _langevin_alpha(sde, t) * (snr * noise_norm / grad_norm) ** 2
    return x + step * grad + jnp.sqrt(2.0 * step) * z


_PREDICTORS = {"reverse_diffusion": reverse_diffusion_step, "euler_maruyama": euler_maruyama_step}


def sample_pc(
    score_fn: ScoreFn,
    sde: SDE,
    key: Array,
    x: Array,
    *,
    eps: float,
    steps: int = 1000,
    predictor: str = "reverse_diffusion",
    snr: float = 0.16,
    n_corrector: int = 1,
) -> tuple[Array, int]:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 1-3; score_sde ``pc_sampler``).

    On the uniform grid T = t_0 > t_1 > ... > t_steps = eps, for i = 0 .. steps - 1:
    ``n_corrector`` Langevin steps at t_i (:func:`langevin_step`), then one predictor step t_i -> t_{i+1}
    (:func:`reverse_diffusion_step` or :func:`euler_maruyama_step`). nfe = steps (1 + n_corrector).
    """
    ts = jnp.asarray(time_grid(sde, steps, sde.T, eps))
    predict = _PREDICTORS[predictor]

    def body(x, inp):
        t, t_next, k = inp
        kc, kp = jax.random.split(k)
        for kci in jax.random.split(kc, n_corrector):
            x = langevin_step(score_fn, sde, kci, x, t, snr)
        return predict(score_fn, sde, kp, x, t, t_next), None

    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], jax.random.split(key, steps)))
    return x, steps * (1 + n_corrector)


def ancestral_step(score_fn: ScoreFn, sde: SDE, key: Array, x: Array, t, i, j) -> Array:
    """One ancestral step from discrete level i down to level j < i (score_sde ``AncestralSamplingPredictor``).

    VP (DDPM, Ho et al. 2020, Alg. 2 with sigma_t^2 = beta_t), with beta = 1 - abar_i / abar_j (= beta_i when
    j = i - 1; the "respaced" beta of Nichol & Dhariwal 2021 otherwise):

        x_j = (x_i + beta s(x_i, t)) / sqrt(1 - beta) + sqrt(beta) z.

    VE (SMLD ancestral, Song et al. 2021, App. F), the Gaussian posterior of the forward chain:

        x_j = x_i + (sigma_i^2 - sigma_j^2) s(x_i, t) + sqrt(sigma_j^2 (sigma_i^2 - sigma_j^2) / sigma_i^2) z.
    """
    score = score_fn(x, _bt(t, x))
    z = jax.random.normal(key, x.shape, x.dtype)
    if sde.name == "vp":
        abar = sde.discrete_alphas_cumprod
        beta = 1.0 - abar[i] / abar[j]
        return (x + beta * score) / jnp.sqrt(1.0 - beta) + jnp.sqrt(beta) * z
    sig = sde.discrete_sigmas
    s_i2, s_j2 = sig[i] ** 2, sig[j] ** 2
    return x + (s_i2 - s_j2) * score + jnp.sqrt(s_j2 * (s_i2 - s_j2) / s_i2) * z


def sample_ancestral(
    score_fn: ScoreFn, sde: SDE, key: Array, x: Array, *, eps: float, steps: int | None = None
) -> tuple[Array, int]:
    """Ancestral sampling on the SDE's N discrete levels (DDPM for VP, SMLD's analogue for VE).

    Levels i_0 = N - 1 > i_1 > ... > i_steps = 0 (rounded ``linspace``; every level when steps = N - 1, the
    default), one :func:`ancestral_step` per transition. Level i stands for the time
    t_i = eps + i (T - eps) / (N - 1) (score_sde's ``linspace(T, eps, N)``), at which the score is read, so
    the chain ends at t = eps. With steps = N - 1 the transitions are score_sde's ancestral updates (same
    levels, times and coefficients); its N-th update, from level 0 with ``denoise``, returns
    x_mean = (x + beta_0 s) / sqrt(1 - beta_0) (VP) or x + sigma_min^2 s (VE), which is Tweedie's formula with
    level 0's (alpha, sigma); the final step of :func:`sample` uses (alpha, sigma)(eps) instead (VP:
    sigma^2 = 1.10e-4 vs beta_0 = 1.00e-4; VE: sigma(eps)^2 = sigma_min^2 to within 2e-4). nfe = steps.
    """
    n = sde.N
    steps = n - 1 if steps is None else steps
    levels = np.round(np.linspace(n - 1, 0, steps + 1)).astype(np.int32)
    times = (eps + levels * (sde.T - eps) / (n - 1)).astype(np.float32)

    def body(x, inp):
        t, i, j, k = inp
        return ancestral_step(score_fn, sde, k, x, t, i, j), None

    xs = (jnp.asarray(times[:-1]), jnp.asarray(levels[:-1]), jnp.asarray(levels[1:]), jax.random.split(key, steps))
    x, _ = jax.lax.scan(body, x, xs)
    return x, steps


def ddim_step(score_fn: ScoreFn, sde: SDE, key: Array, x: Array, t, t_next, eta: float) -> Array:
    """One DDIM step t -> t_next < t (Song, Meng & Ermon 2021, eq. 12), written with alpha(t), sigma(t):

        x0 = (x + sigma_t^2 s) / alpha_t,   e = -sigma_t s,                          (Tweedie, predicted noise)
        c^2 = eta^2 (sigma_n^2 / sigma_t^2) (sigma_t^2 - (alpha_t / alpha_n)^2 sigma_n^2),
        x_next = alpha_n x0 + sqrt(sigma_n^2 - c^2) e + c z.

    c^2 is eta^2 times the variance of the forward posterior q(x_next | x_t, x_0) of any linear SDE; with
    alpha^2 + sigma^2 = 1 (VP) it is DDIM's sigma_t(eta)^2 = eta^2 (1 - abar_n)/(1 - abar_t) (1 - abar_t/abar_n).
    The same formula holds for sub-VP (only alpha and sigma change). eta = 0: deterministic DDIM (a first-order
    exponential integrator of the PF-ODE); eta = 1: DDPM's posterior sampling.
    """
    a_t, s_t = sde.alpha_sigma(t)
    a_n, s_n = sde.alpha_sigma(t_next)
    score = score_fn(x, _bt(t, x))
    x0 = (x + s_t**2 * score) / a_t
    e = -s_t * score
    c2 = eta**2 * (s_n**2 / s_t**2) * jnp.maximum(s_t**2 - (a_t / a_n) ** 2 * s_n**2, 0.0)
    c2 = jnp.minimum(c2, s_n**2)
    out = a_n * x0 + jnp.sqrt(s_n**2 - c2) * e
    if eta > 0:
        out = out + jnp.sqrt(c2) * jax.random.normal(key, x.shape, x.dtype)
    return out


def sample_ddim(
    score_fn: ScoreFn,
    sde: SDE,
    key: Array,
    x: Array,
    *,
    eps: float,
    steps: int = 50,
    eta: float = 0.0,
    grid: str = "uniform",
    rho: float = 7.0,
) -> tuple[Array, int]:
    """DDIM (Song, Meng & Ermon 2021) over :func:`time_grid` T = t_0 > ... > t_steps = eps, one :func:`ddim_step`
    per interval. VP and sub-VP. nfe = steps.
    """
    ts = jnp.asarray(time_grid(sde, steps, sde.T, eps, grid, rho))

    def body(x, inp):
        t, t_next, k = inp
        return ddim_step(score_fn, sde, k, x, t, t_next, eta), None

    x, _ = jax.lax.scan(body, x, (ts[:-1], ts[1:], jax.random.split(key, steps)))
    return x, steps


# ------------------------------------------------------------------------------- options and checks
_COMMON = {"eps": None, "denoise": True}
_ODE_OPTIONS = {
    "solver": "tsit5", "steps": None, "rtol": 1e-5, "atol": 1e-5, "grid": "uniform", "rho": 7.0, "max_steps": 4096,
}
_OPTIONS: dict[str, dict[str, Any]] = {
    "sde": {"steps": 1000, "solver": "euler", "brownian": "unsafe"},
    "ode": dict(_ODE_OPTIONS),
    "pc": {"steps": 1000, "predictor": "reverse_diffusion", "snr": None, "n_corrector": 1},
    "ancestral": {"steps": None},
    "ddim": {"steps": 50, "eta": 0.0, "grid": "uniform", "rho": 7.0},
}
METHODS: tuple[str, ...] = tuple(_OPTIONS)
_SAMPLERS = {"sde": sample_sde, "ode": sample_ode, "pc": sample_pc, "ancestral": sample_ancestral, "ddim": sample_ddim}
_DEFAULT_SNR = {"ve": 0.16, "vp": 0.01, "subvp": 0.01}  # score_sde configs; sub-VP follows VP


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _choice(name: str, value, choices, what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {name}={value!r}; choose one of {sorted(choices)}.")


def _positive(name: str, value) -> None:
    if not (_is_real(value) and value > 0):
        raise ValueError(f"{name} must be a positive number; got {value!r}.")


def _check_steps(value, method: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (_is_int(value) and value >= 1):
        hint = " (or None for adaptive steps)" if allow_none else ""
        raise ValueError(f"steps must be an integer >= 1{hint} for method={method!r}; got {value!r}.")


def _check_sde(sde) -> None:
    if getattr(sde, "name", None) not in _DEFAULT_SNR:
        raise ValueError(f"sde must be a VPSDE, SubVPSDE or VESDE; got {type(sde).__name__}.")


def _resolve_ode_options(sde: SDE, opts: dict, method: str = "ode") -> None:
    _choice("solver", opts["solver"], _ODE_SOLVERS, "ODE solver")
    _check_steps(opts["steps"], method, allow_none=True)
    if opts["steps"] is None and opts["solver"] not in _ADAPTIVE_ODE_SOLVERS:
        raise ValueError(
            f"solver={opts['solver']!r} has no error estimate, so it cannot choose its own steps: pass "
            f"steps=N for a fixed grid, or use an adaptive solver {list(_ADAPTIVE_ODE_SOLVERS)}."
        )
    _positive("rtol", opts["rtol"])
    _positive("atol", opts["atol"])
    _choice("grid", opts["grid"], ("uniform", "edm"), "time grid")
    _positive("rho", opts["rho"])
    if not (_is_int(opts["max_steps"]) and opts["max_steps"] >= 1):
        raise ValueError(f"max_steps must be an integer >= 1; got {opts['max_steps']!r}.")


def _resolve(sde: SDE, method: str, options: dict, extra: dict | None = None) -> dict:
    """Fill defaults and validate every static option in Python; return the complete option dict."""
    _check_sde(sde)
    _choice("method", method, _OPTIONS, "sampling")
    allowed = {**_COMMON, **_OPTIONS[method], **(extra or {})}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method={method!r}; valid options: {sorted(allowed)}.")
    opts = {**allowed, **options}

    if opts["eps"] is None:
        opts["eps"] = float(sde.eps)
    if not (_is_real(opts["eps"]) and 0 < opts["eps"] < sde.T):
        raise ValueError(f"eps must lie in (0, T={sde.T}); got {opts['eps']!r}. The default is sde.eps={sde.eps}.")
    opts["eps"] = float(opts["eps"])
    if not isinstance(opts["denoise"], bool):
        raise ValueError(f"denoise must be True or False; got {opts['denoise']!r}.")

    if method == "sde":
        _check_steps(opts["steps"], method)
        _choice("solver", opts["solver"], _SDE_SOLVERS, "SDE solver")
        _choice("brownian", opts["brownian"], ("unsafe", "tree"), "Brownian motion")
    elif method == "ode":
        _resolve_ode_options(sde, opts)
    elif method == "pc":
        _check_steps(opts["steps"], method)
        _choice("predictor", opts["predictor"], _PREDICTORS, "predictor")
        if opts["snr"] is None:
            opts["snr"] = _DEFAULT_SNR[sde.name]
        if not (_is_real(opts["snr"]) and opts["snr"] > 0):
            raise ValueError(
                f"snr must be > 0 (the Langevin signal-to-noise ratio; score_sde uses 0.16 for VE, 0.01 for VP); "
                f"got {opts['snr']!r}. To switch the corrector off pass n_corrector=0."
            )
        if not (_is_int(opts["n_corrector"]) and opts["n_corrector"] >= 0):
            raise ValueError(f"n_corrector must be an integer >= 0; got {opts['n_corrector']!r}.")
    elif method == "ancestral":
        if sde.name == "subvp":
            raise ValueError(
                "ancestral sampling needs a discrete chain (DDPM for VP, SMLD for VE); the sub-VP SDE has none. "
                "Use method='ddim' (eta=1 is ancestral-like), 'pc', 'sde' or 'ode' for sub-VP."
            )
        if opts["steps"] is None:
            opts["steps"] = sde.N - 1
        _check_steps(opts["steps"], method)
        if opts["steps"] > sde.N - 1:
            raise ValueError(
                f"ancestral sampling walks the SDE's N={sde.N} discrete levels, so steps must be <= N - 1 = "
                f"{sde.N - 1}; got {opts['steps']}. Build the SDE with a larger N for more steps."
            )
    elif method == "ddim":
        if sde.name == "ve":
            raise ValueError(
                "DDIM on VE is not provided: DDIM is defined for the VP (and sub-VP) parameterisation. For a VE "
                "SDE use method='ode' (e.g. solver='euler', grid='edm'), 'pc', 'ancestral' or 'sde'."
            )
        _check_steps(opts["steps"], method)
        if not (_is_real(opts["eta"]) and 0 <= opts["eta"] <= 1):
            raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like); got {opts['eta']!r}.")
        _choice("grid", opts["grid"], ("uniform", "edm"), "time grid")
        _positive("rho", opts["rho"])
    return opts


def _check_shape(shape) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple (B, *data_shape); got {shape!r}.") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(
            f"shape must be (B, *data_shape) with a batch dimension and positive sizes; got {shape}. "
            f"For a single sample of shape {shape} pass shape=(1, *{shape})."
        )
    return shape


# ---------------------------------------------------------------------------------- entry points
def _sample_impl(score_fn: ScoreFn, sde: SDE, key: Array, shape: tuple, method: str, opts: dict):
    k_prior, k_run = jax.random.split(key)
    x = sde.prior_sample(k_prior, shape).astype(jnp.float32)
    kwargs = {k: v for k, v in opts.items() if k != "denoise"}
    x, nfe = _SAMPLERS[method](score_fn, sde, k_run, x, **kwargs)
    if opts["denoise"]:
        x = tweedie_denoise(sde, score_fn, x, opts["eps"])
        nfe = nfe + 1
    return x, {"nfe": jnp.asarray(nfe, jnp.int32)}


@functools.lru_cache(maxsize=16)
def _compiled(fn: Callable, *static) -> Callable:
    """``jax.jit(partial(fn, *static))``, cached on the static arguments (score_fn by identity)."""
    return jax.jit(functools.partial(fn, *static))


def _freeze(opts: dict) -> tuple:
    return tuple(sorted(opts.items()))


def _sample_frozen(score_fn, sde, shape, method, frozen, key):
    return _sample_impl(score_fn, sde, key, shape, method, dict(frozen))


def sample(
    score_fn: ScoreFn, sde: SDE, key: Array, shape: tuple[int, ...], method: str = "ode", **options: Any
) -> tuple[Array, dict[str, Array]]:
    """Draw ``shape[0]`` samples by solving the reverse process of ``sde`` with the score ``score_fn``.

    Args:
      score_fn: ``score_fn(x, t) -> array like x``, x of shape (B, *data_shape), t of shape (B,).
      sde: ``VPSDE``, ``SubVPSDE`` or ``VESDE``.
      key: a ``jax.random`` key (prior sample and, for stochastic methods, the noise).
      shape: ``(B, *data_shape)``; a batch dimension is required.
      method: one of ``"sde", "ode", "pc", "ancestral", "ddim"`` (see the module docstring for each one's
        options and defaults; every method takes ``eps`` and ``denoise``).

    Returns:
      ``(samples, info)``: samples of shape ``shape``; ``info["nfe"]`` the number of score evaluations
      (int32 array; for adaptive ODE solves it depends on the key).

    Raises:
      ValueError: unknown method or option, or an invalid option value (checked before any tracing).
    """
    shape = _check_shape(shape)
    opts = _resolve(sde, method, options)
    if isinstance(key, jax.core.Tracer):  # under the caller's transformation: run inline
        return _sample_impl(score_fn, sde, key, shape, method, opts)
    return _compiled(_sample_frozen, score_fn, sde, shape, method, _freeze(opts))(key)


def _ode_options(sde: SDE, options: dict) -> dict:
    return _resolve(sde, "ode", options)


def _encode_frozen(score_fn, sde, frozen, x):
    o = dict(frozen)
    del o["denoise"]
    eps = o.pop("eps")
    y, nfe = pf_ode_solve(score_fn, sde, x, eps, sde.T, **o)
    return y, {"nfe": jnp.asarray(nfe, jnp.int32)}


def _decode_frozen(score_fn, sde, frozen, z):
    o = dict(frozen)
    denoise = o.pop("denoise")
    eps = o.pop("eps")
    x, nfe = pf_ode_solve(score_fn, sde, z, sde.T, eps, **o)
    if denoise:
        x, nfe = tweedie_denoise(sde, score_fn, x, eps), nfe + 1
    return x, {"nfe": jnp.asarray(nfe, jnp.int32)}


def _run_ode(fn, score_fn, sde, x, options, denoise):
    _check_shape(jnp.shape(x))
    opts = _ode_options(sde, {**options, "denoise": denoise})
    if isinstance(x, jax.core.Tracer):
        return fn(score_fn, sde, _freeze(opts), x)
    return _compiled(fn, score_fn, sde, _freeze(opts))(jnp.asarray(x, jnp.float32))


def encode(score_fn: ScoreFn, sde: SDE, x: Array, **options: Any) -> tuple[Array, dict[str, Array]]:
    """Data -> latent: the probability-flow ODE dx/dt = f - 1/2 g^2 s from t = eps forwards to T.

    ``options`` as for ``method="ode"`` (``eps``, ``solver="tsit5"``, ``steps=None`` (adaptive),
    ``rtol=atol=1e-5``, ``grid``, ``rho``, ``max_steps``). ``x`` has shape (B, *data_shape). Returns
    ``(z, info)`` with ``info["nfe"]``. ``decode(encode(x))`` returns x up to the solver tolerance.
    """
    return _run_ode(_encode_frozen, score_fn, sde, x, options, False)


def decode(
    score_fn: ScoreFn, sde: SDE, z: Array, *, denoise: bool = False, **options: Any
) -> tuple[Array, dict[str, Array]]:
    """Latent -> data: the probability-flow ODE from T backwards to eps (the inverse of :func:`encode`).

    Same options as :func:`encode`. ``denoise=False`` by default so that decode inverts encode; with
    ``denoise=True`` it ends with the Tweedie step, which makes it ``sample(..., method="ode")`` for a given
    prior draw z.
    """
    return _run_ode(_decode_frozen, score_fn, sde, z, options, denoise)
