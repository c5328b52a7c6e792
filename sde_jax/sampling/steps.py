"""Fixed-grid update rules with one signature, and the one loop that runs them.

Every step maps the state at time t to time t_next (k-diffusion's shape):

    step(score, sde, key, x, t, t_next, **options) -> x_next

t and t_next are scalars, x has shape (B, *data_shape). A corrector is a step at fixed time (it is called with
t_next = t). :func:`step_loop` runs a predictor (and optionally a corrector, RePaint resampling and a projection
hook) over a time grid as one ``lax.scan``; the PC, ancestral and DDIM samplers and inpainting / colourisation
all run on it. Each step costs one score evaluation, except EDM's Heun steps (two).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from sde_jax.sde import LinearSDE, reverse_drift

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Step = Callable[..., Array]
Project = Callable[[Array, Array, Array], Array]


def _bt(t, x: Array) -> Array:
    """Scalar time -> shape (B,) for the batch x."""
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def _normal(key: Array, x: Array) -> Array:
    return jax.random.normal(key, x.shape, x.dtype)


def reverse_diffusion_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next) -> Array:
    """Reverse-diffusion predictor (Song et al. 2021, eq. 47; score_sde ``ReverseDiffusionPredictor``):

        x_next = x - f_i(x) + G_i^2 s(x, t) + G_i z,

    the reverse of the forward step x_t = x_next + f_i(x_next) + G_i z, with the exact linear-SDE transition from
    t_next to t (``sde.transition``): f_i(x) = (a - 1) x, a = alpha(t) / alpha(t_next), G_i^2 = sigma(t)^2 -
    a^2 sigma(t_next)^2. SMLD's step for VE, DDPM's to first order for VP, on any time grid.
    """
    a, g = sde.transition(t_next, t)
    mean = (2.0 - a) * x + g**2 * score(x, _bt(t, x))
    return mean + g * _normal(key, x)


def euler_maruyama_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next) -> Array:
    """Euler–Maruyama step of the reverse SDE (Song et al. 2021, App. D; score_sde ``EulerMaruyamaPredictor``):

        x_next = x - [f(x, t) - g(t)^2 s(x, t)] dt + g(t) sqrt(dt) z,   dt = t - t_next > 0.
    """
    dt = t - t_next
    mean = x - reverse_drift(sde, score, x, _bt(t, x)) * dt
    return mean + sde.diffusion(t) * jnp.sqrt(dt) * _normal(key, x)


def ancestral_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next) -> Array:
    """Ancestral step between the levels i = discrete_index(t) > j = discrete_index(t_next) of the SDE's discrete
    chain (``sde.discrete_alpha_sigma``: DDPM for VP, SMLD for VE, the schedule at t_i otherwise).

    The posterior q(x_j | x_i, x0) of the chain (Ho et al. 2020, eqs. 6-7), with x0 from Tweedie's formula
    x0 = (x + sigma_i^2 s) / alpha_i and s = s(x, t) read at the grid time t (score_sde's convention):

        a = alpha_i / alpha_j,   G^2 = sigma_i^2 - a^2 sigma_j^2,
        x_j = (x + G^2 s) / a + sqrt(sigma_j^2 G^2 / sigma_i^2) z.

    Variance: the posterior variance (DDPM's beta-tilde) for every SDE. For VE this is SMLD's ancestral step
    (Song et al. 2021, App. F); for VP score_sde used sqrt(beta) noise instead (the same mean; DDPM's other
    choice, Ho et al. 2020, Sec. 3.2). j < i - 1 is the respaced chain (Nichol & Dhariwal 2021); j = i is no move.
    """
    i, j = sde.discrete_index(t), sde.discrete_index(t_next)
    a_i, s_i = sde.discrete_alpha_sigma(i)
    a_j, s_j = sde.discrete_alpha_sigma(j)
    a = a_i / a_j
    g2 = jnp.maximum(s_i**2 - a**2 * s_j**2, 0.0)
    var = s_j**2 * g2 / jnp.maximum(s_i**2, jnp.finfo(jnp.float32).tiny)
    return (x + g2 * score(x, _bt(t, x))) / a + jnp.sqrt(var) * _normal(key, x)


def posterior_variance(sde: LinearSDE, t, t_next) -> Array:
    """Variance of the forward posterior q(x_{t_next} | x_t, x_0) of any linear SDE (DDPM's beta-tilde on the grid,
    Ho et al. 2020, eq. 7):

        sigma_n^2 (sigma_t^2 - a^2 sigma_n^2) / sigma_t^2,   a = alpha_t / alpha_n,

    the noise of DDIM's eta = 1 step, the reverse kernel of the SMC sampler and the tolerance scale of Picard."""
    a_t, s_t = sde.alpha_sigma(t)
    a_n, s_n = sde.alpha_sigma(t_next)
    g2 = jnp.maximum(s_t**2 - (a_t / a_n) ** 2 * s_n**2, 0.0)
    return s_n**2 * g2 / jnp.maximum(s_t**2, jnp.finfo(jnp.float32).tiny)


def ddim_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next, *, eta: float = 0.0) -> Array:
    """One DDIM step t -> t_next < t (Song, Meng & Ermon 2021, eq. 12), written with alpha(t), sigma(t):

        x0 = (x + sigma_t^2 s) / alpha_t,   e = -sigma_t s,                          (Tweedie, predicted noise)
        c^2 = eta^2 (sigma_n^2 / sigma_t^2) (sigma_t^2 - (alpha_t / alpha_n)^2 sigma_n^2),
        x_next = alpha_n x0 + sqrt(sigma_n^2 - c^2) e + c z.

    c^2 is eta^2 times the variance of the forward posterior q(x_next | x_t, x0) of any linear SDE (VP: DDIM's
    sigma_t(eta)^2; VE: alpha = 1). eta = 0: deterministic DDIM, a first-order exponential integrator of the
    PF-ODE; eta = 1: posterior sampling on the continuous schedule.
    """
    a_t, s_t = sde.alpha_sigma(t)
    a_n, s_n = sde.alpha_sigma(t_next)
    s = score(x, _bt(t, x))
    c2 = jnp.minimum(eta**2 * posterior_variance(sde, t, t_next), s_n**2)
    out = a_n * (x + s_t**2 * s) / a_t - jnp.sqrt(s_n**2 - c2) * s_t * s
    return out + jnp.sqrt(c2) * _normal(key, x) if eta > 0 else out


def heun_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next) -> Array:
    """EDM's deterministic second-order step (Karras et al. 2022, Alg. 1, lines 3-8) for any linear SDE.

    In EDM's variables, the scaled state x~ = x / alpha and its noise level s~ = sigma / alpha (x~ = x_0 + s~ z), the
    probability-flow ODE is dx~/ds~ = (x~ - D(x~; s~)) / s~ = e(x, t), the predicted noise e = -sigma s(x, t)
    (D = x0 by Tweedie). One Euler step, then the trapezoidal correction:

        x~' = x~ + (s~_next - s~) e(x, t),
        x~_next = x~ + (s~_next - s~) (e(x, t) + e(alpha_next x~', t_next)) / 2,   x_next = alpha_next x~_next.

    Two score evaluations. EDM skips the correction on its last step, to s~ = 0, which is Tweedie's formula: here
    that is the denoising step (``denoise=True``), since the grid ends at eps > 0.
    """
    a, s = sde.alpha_sigma(t)
    a_n, s_n = sde.alpha_sigma(t_next)
    ds = s_n / a_n - s / a
    e = -s * score(x, _bt(t, x))
    x_euler = a_n * (x / a + ds * e)
    e_next = -s_n * score(x_euler, _bt(t_next, x))
    return a_n * (x / a + ds * 0.5 * (e + e_next))


def edm_churn(sde: LinearSDE, key: Array, x: Array, t, *, gamma: float, s_tmin: float, s_tmax: float,
              s_noise: float) -> tuple[Array, Array]:
    """EDM's stochastic churn (Karras et al. 2022, Alg. 2, lines 4-6): raise the noise level s~ = sigma / alpha to
    s^ = (1 + g) s~, g = gamma if s_tmin <= s~ <= s_tmax else 0, by adding fresh noise to x~ = x / alpha:

        x~^ = x~ + sqrt(s^^2 - s~^2) s_noise z.

    s^ is capped at s~(T) (the schedule ends there); returns (alpha(t^) x~^, t^), t^ the time of s^."""
    a, s = sde.alpha_sigma(t)
    s_t = s / a
    a_max, s_max = sde.alpha_sigma(jnp.asarray(sde.T, s_t.dtype))
    g = jnp.where((s_t >= s_tmin) & (s_t <= s_tmax), gamma, 0.0)
    s_hat = jnp.minimum(s_t * (1.0 + g), s_max / a_max)
    t_hat = jnp.where(s_hat > s_t, jnp.minimum(sde.t_from_log_snr(-2.0 * jnp.log(s_hat)), sde.T), t)
    x_hat = x / a + jnp.sqrt(jnp.maximum(s_hat**2 - s_t**2, 0.0)) * s_noise * _normal(key, x)
    return sde.alpha_sigma(t_hat)[0] * x_hat, t_hat


def stochastic_heun_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next, *, gamma: float,
                         s_tmin: float, s_tmax: float, s_noise: float) -> Array:
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2): :func:`edm_churn` from t to t^ >= t, then
    :func:`heun_step` from t^ to t_next. Two score evaluations."""
    x_hat, t_hat = edm_churn(sde, key, x, t, gamma=gamma, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
    return heun_step(score, sde, key, x_hat, t_hat, t_next)


def langevin_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next=None, *, snr: float) -> Array:
    """One Langevin corrector step at fixed t (``t_next`` is ignored; Song et al. 2021, Alg. 4-5; score_sde
    ``LangevinCorrector``):

        eta = 2 r_i (snr ||z|| / ||s(x, t)||)^2,   x <- x + eta s(x, t) + sqrt(2 eta) z,

    norms averaged over the batch (one step size per batch, as score_sde), and r_i = (alpha_i / alpha_{i-1})^2 at
    level i = discrete_index(t) of the discrete chain: 1 - beta_i for DDPM, 1 for SMLD.
    """
    i = sde.discrete_index(t)
    r = (sde.discrete_alpha_sigma(i)[0] / sde.discrete_alpha_sigma(i - 1)[0]) ** 2
    grad = score(x, _bt(t, x))
    z = _normal(key, x)
    norm = lambda v: jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))
    step = 2.0 * r * (snr * norm(z) / norm(grad)) ** 2
    return x + step * grad + jnp.sqrt(2.0 * step) * z


def forward_step(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next) -> Array:
    """The forward transition t -> t_next > t, x_next ~ N(a x, std^2 I) (``sde.transition``); no score
    evaluation. RePaint's re-noising between resampling rounds."""
    a, std = sde.transition(t, t_next)
    return a * x + std * _normal(key, x)


PREDICTORS: dict[str, Step] = {"reverse_diffusion": reverse_diffusion_step, "euler_maruyama": euler_maruyama_step}


def interval_update(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, t, t_next, *, predictor: Step, corrector: Step | None = None,
    n_corrector: int = 0, n_resample: int = 1, project: Project | None = None,
) -> Array:
    """One grid interval t -> t_next of :func:`step_loop`: ``n_resample`` = U rounds of (Lugmayr et al. 2022,
    RePaint, Alg. 1)

        n_corrector times   x <- corrector(x, t, t)
        once                x <- predictor(x, t, t_next)
        if not the last     x <- forward_step(x, t_next, t)

    with ``project(key, x, t)`` applied after every update. All randomness comes from ``key`` (the interval's key),
    so the map x -> x_next is a fixed function once the key is drawn: the Picard sampler iterates exactly this map.
    """
    def update(step, k, x, t, t_next):
        k_step, k_proj = jax.random.split(k)
        x = step(score, sde, k_step, x, t, t_next)
        return x if project is None else project(k_proj, x, t_next)

    for u in range(n_resample):
        ku = jax.random.fold_in(key, u)
        for c in range(n_corrector):
            x = update(corrector, jax.random.fold_in(ku, c), x, t, t)
        x = update(predictor, jax.random.fold_in(ku, n_corrector), x, t, t_next)
        if u < n_resample - 1:
            x = update(forward_step, jax.random.fold_in(ku, n_corrector + 1), x, t_next, t)
    return x


def interval_keys(key: Array, steps: int) -> Array:
    """The keys of a run of ``steps`` intervals: key k drives interval k (:func:`interval_update`), the last one
    (index ``steps``) the projection of the initial state. Shared by :func:`step_loop` and the Picard sampler, so
    both draw the same noise from the same key."""
    return jax.random.split(key, steps + 1)


def interval_loop(score: ScoreFn, sde: LinearSDE, key: Array, x: Array, ts: Array, interval: Callable) -> Array:
    """x at ts[-1]: ``interval(score, sde, key_k, x, t_k, t_{k+1})`` over the grid ``ts`` (decreasing) as one
    ``lax.scan``, key_k from :func:`interval_keys`."""
    keys = interval_keys(key, ts.shape[0] - 1)

    def body(x, inp):
        t, t_next, k = inp
        return interval(score, sde, k, x, t, t_next), None

    return jax.lax.scan(body, x, (ts[:-1], ts[1:], keys[:-1]))[0]


def step_loop(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, ts: Array, predictor: Step, *,
    corrector: Step | None = None, n_corrector: int = 0, n_resample: int = 1, project: Project | None = None,
) -> tuple[Array, int]:
    """Run ``predictor`` over the grid ``ts`` (decreasing): :func:`interval_update` in :func:`interval_loop`;
    returns (x at ts[-1], nfe). ``project`` is also applied once to the initial x at ts[0], with the last key of
    :func:`interval_keys` (the hook of replacement inpainting, Song et al. 2021, App. I.2). U = 1 and no corrector
    is a plain predictor loop. nfe = steps U (1 + n_corrector), a static count.
    """
    steps = ts.shape[0] - 1
    interval = functools.partial(interval_update, predictor=predictor, corrector=corrector, n_corrector=n_corrector,
                                 n_resample=n_resample, project=project)
    if project is not None:
        x = project(interval_keys(key, steps)[-1], x, ts[0])
    return interval_loop(score, sde, key, x, ts, interval), steps * n_resample * (1 + n_corrector)
