"""Multistep exponential integrators of the probability-flow ODE in log-SNR time: DPM-Solver++ (2M, 3M, 2M SDE)
and UniPC's predictor-corrector.

Notation (Lu et al. 2022, "DPM-Solver++", Sec. 3): x_t = alpha_t x_0 + sigma_t z, the *half* log-SNR

    l_t = log(alpha_t / sigma_t) = sde.log_snr(t) / 2        (this package's lambda is log(alpha^2 / sigma^2)),

and the data prediction m = x0(x, t) = (x + sigma_t^2 s(x, t)) / alpha_t (Tweedie, :func:`sde_jax.score.denoise`).
The probability-flow ODE has the exact solution (DPM-Solver++, eq. 8)

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{l_s}^{l_t} e^l x0(x_l, l) dl,

and a multistep solver of order k replaces x0 along l by the polynomial through its last k outputs. Every update
below maps the state at grid time t_i to t_{i+1} with one new model output per step, h = l_{i+1} - l_i > 0.

A step's schedule values are a :class:`Window`; the model outputs are a tuple ``ms`` newest first
(m_i, m_{i-1}, m_{i-2}). :func:`multistep_loop` runs one ``lax.scan`` over the grid with the outputs in its carry
(the one-step signature of :mod:`sde_jax.sampling.steps` cannot hold a history) and picks each step's order:
lower order while the history fills up (warm-up) and, with ``lower_order_final`` on grids of fewer than 15 steps,
in the last steps (diffusers' rule, which keeps DPM-Solver++ stable at <= 10 steps).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.score import denoise as tweedie
from sde_jax.sde import LinearSDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Outputs = tuple[Array, Array, Array]
HISTORY = 3  # model outputs kept: m_i, m_{i-1}, m_{i-2}
LOWER_ORDER_FINAL_BELOW = 15  # diffusers: lower-order final steps only on grids of fewer steps


class Window(NamedTuple):
    """The schedule of one step t_i -> t_{i+1}: sigma_i, alpha_{i+1}, sigma_{i+1}, l_{i+1} and the half log-SNRs
    (l_i, l_{i-1}, l_{i-2}) of the outputs in ``ms`` (shape (3,); before t_0 extrapolated, never used)."""

    sigma: Array
    alpha_n: Array
    sigma_n: Array
    lam_n: Array
    lams: Array


# ----------------------------------------------------------------------------------- DPM-Solver++
def dpmpp_1_update(x: Array, ms: Outputs, w: Window, key: Array | None = None) -> Array:
    """DPM-Solver++(1), first order: DDIM (Lu et al. 2022, eq. 9 with x0 held constant):

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) m_i.
    """
    h = w.lam_n - w.lams[0]
    return (w.sigma_n / w.sigma) * x - w.alpha_n * jnp.expm1(-h) * ms[0]


def dpmpp_2m_update(x: Array, ms: Outputs, w: Window, key: Array | None = None) -> Array:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), with r = h_{i-1} / h, h_{i-1} = l_i - l_{i-1}:

        D = (1 + 1 / (2 r)) m_i - 1 / (2 r) m_{i-1},
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) D.
    """
    h, h0 = w.lam_n - w.lams[0], w.lams[0] - w.lams[1]
    d = ms[0] + (ms[0] - ms[1]) * (0.5 * h / h0)
    return (w.sigma_n / w.sigma) * x - w.alpha_n * jnp.expm1(-h) * d


def dpmpp_3m_update(x: Array, ms: Outputs, w: Window, key: Array | None = None) -> Array:
    """DPM-Solver++(3M), third-order multistep (Lu et al. 2022), with h_0 = l_i - l_{i-1}, h_1 = l_{i-1} - l_{i-2},
    r_0 = h_0 / h, r_1 = h_1 / h; D1 ~ h x0' and D2 ~ h^2 x0'' (derivatives in l) from divided differences:

        D1_0 = (m_i - m_{i-1}) / r_0,   D1_1 = (m_{i-1} - m_{i-2}) / r_1,
        D1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),   D2 = 2 (D1_0 - D1_1) / (r_0 + r_1),
        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) m_i
                  + alpha_{i+1} ((e^{-h} - 1) / h + 1) D1 - alpha_{i+1} ((e^{-h} - 1 + h) / h^2 - 1/2) D2,

    the Taylor expansion of eq. 8 to second order: sigma_t int e^l (l - l_i)^2 / 2 dl = -alpha_{i+1} h^2 ((e^{-h} - 1
    + h) / h^2 - 1/2). Lu et al.'s reference code (``multistep_dpm_solver_third_update``) and diffusers'
    ``DPMSolverMultistepScheduler`` use D2 = (D1_0 - D1_1) / (r_0 + r_1), half the Taylor term: their local error is
    O(h^3), a second-order method (tests/test_fast_samplers.py measures both slopes).
    """
    h, h0, h1 = w.lam_n - w.lams[0], w.lams[0] - w.lams[1], w.lams[1] - w.lams[2]
    r0, r1 = h0 / h, h1 / h
    d1_0, d1_1 = (ms[0] - ms[1]) / r0, (ms[1] - ms[2]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)
    em1 = jnp.expm1(-h)
    return ((w.sigma_n / w.sigma) * x - w.alpha_n * em1 * ms[0] + w.alpha_n * (em1 / h + 1.0) * d1
            - w.alpha_n * ((em1 + h) / h**2 - 0.5) * d2)


def dpmpp_sde_1_update(x: Array, ms: Outputs, w: Window, key: Array) -> Array:
    """SDE-DPM-Solver++(1) (Lu et al. 2022, Sec. 5's SDE variant; diffusers ``sde-dpmsolver++``): the reverse SDE
    with x0 held constant over the step, i.e. DDIM with eta = 1 (the posterior q(x_{i+1} | x_i, x0)):

        x_{i+1} = (sigma_{i+1} / sigma_i) e^{-h} x_i + alpha_{i+1} (1 - e^{-2h}) m_i + sigma_{i+1} sqrt(1 - e^{-2h}) z.
    """
    h = w.lam_n - w.lams[0]
    em2 = -jnp.expm1(-2.0 * h)
    z = jax.random.normal(key, x.shape, x.dtype)
    return (w.sigma_n / w.sigma) * jnp.exp(-h) * x + w.alpha_n * em2 * ms[0] + w.sigma_n * jnp.sqrt(em2) * z


def dpmpp_2m_sde_update(x: Array, ms: Outputs, w: Window, key: Array) -> Array:
    """SDE-DPM-Solver++(2M), midpoint form (diffusers ``sde-dpmsolver++``, k-diffusion ``sample_dpmpp_2m_sde``),
    with D1 = (m_i - m_{i-1}) / r, r = h_{i-1} / h:

        x_{i+1} = (sigma_{i+1} / sigma_i) e^{-h} x_i + alpha_{i+1} (1 - e^{-2h}) (m_i + D1 / 2)
                  + sigma_{i+1} sqrt(1 - e^{-2h}) z.
    """
    h, h0 = w.lam_n - w.lams[0], w.lams[0] - w.lams[1]
    em2 = -jnp.expm1(-2.0 * h)
    d = ms[0] + (ms[0] - ms[1]) * (0.5 * h / h0)
    z = jax.random.normal(key, x.shape, x.dtype)
    return (w.sigma_n / w.sigma) * jnp.exp(-h) * x + w.alpha_n * em2 * d + w.sigma_n * jnp.sqrt(em2) * z


# ------------------------------------------------------------------------------------------- UniPC
UNIPC_VARIANTS = ("bh1", "bh2")


def unipc_coefficients(h: Array, order: int, variant: str) -> tuple[Array, list[Array]]:
    """B(h) and b_k = k! z phi_{k+1}(z) / B(h), k = 1..order, z = -h (Zhao et al. 2023, UniPC, Alg. 2/3 in data
    prediction; the recursion of the reference code). phi_{k+1}(z) = (e^z - sum_{j<=k} z^j / j!) / z^{k+1}.
    B(h) = z (``"bh1"``) or e^z - 1 (``"bh2"``)."""
    z = -h
    big_b = z if variant == "bh1" else jnp.expm1(z)
    h_phi, fact, b = jnp.expm1(z) / z - 1.0, 1.0, []
    for k in range(1, order + 1):
        b.append(h_phi * fact / big_b)
        fact *= k + 1
        h_phi = h_phi / z - 1.0 / fact
    return big_b, b


def solve_vandermonde(nodes: Sequence[Array], rhs: Sequence[Array]) -> list[Array]:
    """rho with sum_k rho_k nodes_k^i = rhs_i, i = 0..n-1 (UniPC's R rho = b), in closed form: rho_k = sum_i c_ki
    rhs_i with c_ki the coefficients of the Lagrange basis polynomial L_k(x) = prod_{j != k} (x - r_j) / (r_k - r_j).
    (No LAPACK call: it runs inside the sampling loop.)"""
    rho = []
    for k, r_k in enumerate(nodes):
        coef, den = [1.0], 1.0
        for j, r_j in enumerate(nodes):
            if j != k:
                coef = [(coef[i - 1] if i > 0 else 0.0) - (r_j * coef[i] if i < len(coef) else 0.0)
                        for i in range(len(coef) + 1)]
                den = den * (r_k - r_j)
        rho.append(sum(c * b for c, b in zip(coef, rhs)) / den)
    return rho


def _unipc_differences(ms: Outputs, w: Window, h: Array, order: int) -> tuple[list[Array], list[Array]]:
    """r_k = (l_{i-k} - l_i) / h and D1_k = (m_{i-k} - m_i) / r_k for k = 1..order-1."""
    rks = [(w.lams[k] - w.lams[0]) / h for k in range(1, order)]
    return rks, [(ms[k] - ms[0]) / r for k, r in zip(range(1, order), rks)]


def unipc_predict_update(x: Array, ms: Outputs, w: Window, key: Array | None = None, *, order: int,
                         variant: str) -> Array:
    """UniP-p, the predictor of order p (Zhao et al. 2023, Alg. 2 in data prediction; the reference code's
    ``multistep_uni_p_bh_update``):

        x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) m_i - alpha_{i+1} B(h) sum_k rho_k D1_k,

    rho solving sum_k rho_k r_k^{j-1} = b_j, j = 1..p-1 (:func:`unipc_coefficients`); rho = 1/2 for p = 2 (the
    reference code's choice: then bh2 is DPM-Solver++(2M)). p = 1 is DDIM.
    """
    h = w.lam_n - w.lams[0]
    x_next = (w.sigma_n / w.sigma) * x - w.alpha_n * jnp.expm1(-h) * ms[0]
    if order == 1:
        return x_next
    big_b, b = unipc_coefficients(h, order, variant)
    rks, d1s = _unipc_differences(ms, w, h, order)
    rhos = [0.5] if order == 2 else solve_vandermonde(rks, b[: order - 1])
    return x_next - w.alpha_n * big_b * sum(rho * d for rho, d in zip(rhos, d1s))


def unipc_correct_update(x: Array, ms: Outputs, m_new: Array, w: Window, *, order: int, variant: str) -> Array:
    """UniC-p, the corrector (Zhao et al. 2023, Alg. 3 / eq. 8; the reference code's ``multistep_uni_c_bh_update``):
    redo the step t_i -> t_{i+1} from x = x_i with the output m_{i+1} = x0(x~_{i+1}) at the predicted x~_{i+1}
    (evaluated anyway for the next step: no extra NFE), D1_{i+1} = m_{i+1} - m_i, r = 1:

        x^c_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (e^{-h} - 1) m_i
                    - alpha_{i+1} B(h) (sum_k rho_k D1_k + rho_p D1_{i+1}),

    rho solving sum_k rho_k r_k^{j-1} = b_j, j = 1..p, over the nodes (r_1..r_{p-1}, 1); rho = 1/2 for p = 1. It
    raises the order of a p-th order predictor to p + 1. ``ms`` = (m_i, m_{i-1}, m_{i-2}), ``w`` the step's window.
    """
    h = w.lam_n - w.lams[0]
    x_next = (w.sigma_n / w.sigma) * x - w.alpha_n * jnp.expm1(-h) * ms[0]
    big_b, b = unipc_coefficients(h, order, variant)
    rks, d1s = _unipc_differences(ms, w, h, order)
    rhos = [0.5] if order == 1 else solve_vandermonde(rks + [1.0], b[:order])
    corr = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), rhos[-1] * (m_new - ms[0]))
    return x_next - w.alpha_n * big_b * corr


# -------------------------------------------------------------------------------------------- the loop
Update = Callable[[Array, Outputs, Window, Array], Array]
Correct = Callable[[Array, Outputs, Array, Window], Array]


def step_orders(order: int, steps: int, lower_order_final: bool) -> np.ndarray:
    """The order of each step i = 0..steps-1: min(order, i + 1) (warm-up: only i + 1 outputs exist) and, with
    ``lower_order_final`` on grids of fewer than 15 steps, at most steps - i (first order at the last step, at most
    second at the one before: diffusers' ``lower_order_final``)."""
    i = np.arange(steps)
    out = np.minimum(order, i + 1)
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        out = np.minimum(out, steps - i)
    return out


def step_windows(sde: LinearSDE, ts: Array) -> Window:
    """The :class:`Window` of every step of the decreasing grid ``ts`` (leading axis: steps), in ts's dtype."""
    alpha, sigma = sde.alpha_sigma(ts)
    lam = 0.5 * sde.log_snr(ts)
    d = lam[1] - lam[0]
    lam_pad = jnp.concatenate([lam[0] - d * jnp.arange(HISTORY - 1, 0, -1, dtype=lam.dtype), lam])
    n = ts.shape[0] - 1
    past = jnp.stack([lam_pad[HISTORY - 1 - k: HISTORY - 1 - k + n] for k in range(HISTORY)], axis=-1)
    return Window(sigma[:-1], alpha[1:], sigma[1:], lam[1:], past)


def multistep_loop(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, ts: Array, predictors: Sequence[Update], *,
    lower_order_final: bool = True, correctors: Sequence[Correct] | None = None,
) -> tuple[Array, int]:
    """Run a multistep method over the decreasing grid ``ts`` as one ``lax.scan``; returns (x at ts[-1], nfe).

    ``predictors[k - 1]`` is the order-k update ``update(x, ms, window, key)``; each step's order comes from
    :func:`step_orders` with order = len(predictors). At step i the model output m_i = x0(x_i, t_i) is evaluated
    once; with ``correctors`` (UniPC), ``correctors[k - 1](x_{i-1}, ms, m_i, window_{i-1})`` first replaces x_i by
    the corrected state, k the order of step i - 1 (none at i = 0). The state and keys are in x's dtype (float64
    under ``jax.experimental.enable_x64`` for convergence tests). nfe = steps, a static count.
    """
    ts = ts.astype(x.dtype)
    steps = ts.shape[0] - 1
    orders = step_orders(len(predictors), steps, lower_order_final)
    windows = step_windows(sde, ts)
    prev = jax.tree.map(lambda a: a[np.maximum(np.arange(steps) - 1, 0)], windows)
    corrector_orders = np.concatenate([[0], orders[:-1]]) if correctors is not None else np.zeros_like(orders)
    predict = [functools.partial(_call_update, f) for f in predictors]
    correct = [_no_correction] + [functools.partial(_call_correct, f) for f in (correctors or [])]

    def body(carry, inp):
        x, x_prev, ms = carry
        t, w, w_prev, p, pc, k = inp
        m = tweedie(score, sde, x, t)
        x = jax.lax.switch(pc, correct, x, x_prev, ms, m, w_prev)
        ms = (m,) + ms[:-1]
        return (jax.lax.switch(p - 1, predict, x, ms, w, k), x, ms), None

    zeros = jnp.zeros_like(x)
    carry = (x, x, (zeros,) * HISTORY)
    inputs = (ts[:-1], windows, prev, jnp.asarray(orders), jnp.asarray(corrector_orders), jax.random.split(key, steps))
    (x, _, _), _ = jax.lax.scan(body, carry, inputs)
    return x, steps


def _call_update(f: Update, x, ms, w, key):
    return f(x, ms, w, key)


def _call_correct(f: Correct, x, x_prev, ms, m, w_prev):
    return f(x_prev, ms, m, w_prev)


def _no_correction(x, x_prev, ms, m, w_prev):
    return x
