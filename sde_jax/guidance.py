"""Controllable generation as score transforms, and conditional sampling by replacement.

Guidance works at the level of scores, where the intractable normaliser of p(x | y) drops out
(Song et al. 2021, Sec. 5 and App. I):

    grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x).

``classifier_guidance`` and ``classifier_free_guidance`` return ordinary ``score_fn(x, t)`` functions, so every
sampler of :func:`sde_jax.sample` works with them. ``inpaint`` and ``colorize`` condition on a known linear
part of the data by replacing it, at every step, with a draw from the forward marginal of the known values
(Song et al. 2021, App. I.2), optionally with RePaint-style resampling (Lugmayr et al. 2022).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.sampling import langevin_step, reverse_diffusion_step, time_grid
from sde_jax.score import denoise as tweedie_denoise
from sde_jax.sde import SDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
LogProbFn = Callable[[Array, Array], Array]


def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn, y: Array, scale: float = 1.0) -> ScoreFn:
    """s(x, t) + scale grad_x log p_t(y | x) (Song et al. 2021, eq. 14; Dhariwal & Nichol 2021, Alg. 1).

    ``log_prob_fn(x, t) -> (B, C)`` are the log-probabilities of a noise-conditional classifier; ``y`` (B,)
    the requested classes. scale = 1 samples p_t(x | y); scale > 1 sharpens towards p(y | x)^scale.
    """
    y = jnp.asarray(y)

    def guided(x: Array, t: Array) -> Array:
        def log_py(xx):
            lp = log_prob_fn(xx, t)
            return jnp.sum(jnp.take_along_axis(lp, jnp.broadcast_to(y, (xx.shape[0],))[:, None], axis=1))

        return score_fn(x, t) + scale * jax.grad(log_py)(x)

    return guided


def classifier_free_guidance(cond_score_fn: ScoreFn, uncond_score_fn: ScoreFn, w: float) -> ScoreFn:
    """(1 + w) s(x, t | y) - w s(x, t) (Ho & Salimans 2022, eq. 6).

    w = 0 is the conditional model; w > 0 samples towards p(x | y) p(y | x)^w. With one network serving both
    (labels dropped to a null label with probability ``p_uncond`` in training, see :func:`drop_labels`),
    pass ``partial(model, y=y)`` and ``partial(model, y=null)`` score functions.
    """

    def guided(x: Array, t: Array) -> Array:
        return (1.0 + w) * cond_score_fn(x, t) - w * uncond_score_fn(x, t)

    return guided


# ----------------------------------------------------------------------------- replacement sampling
def _forward_transition(sde: SDE, key: Array, x: Array, t_from, t_to) -> Array:
    """Sample p(x_{t_to} | x_{t_from}) for t_to > t_from: a x + sqrt(sigma_to^2 - a^2 sigma_from^2) z, a = alpha_to / alpha_from."""
    a_f, s_f = sde.alpha_sigma(t_from)
    a_t, s_t = sde.alpha_sigma(t_to)
    a = a_t / a_f
    std = jnp.sqrt(jnp.maximum(s_t**2 - a**2 * s_f**2, 0.0))
    return a * x + std * jax.random.normal(key, x.shape, x.dtype)


def _replacement_sample(
    score_fn: ScoreFn, sde: SDE, key: Array, x_known: Array, mask: Array, *, steps: int, n_corrector: int,
    snr: float, n_resample: int, eps: float, denoise: bool,
) -> Array:
    """Reverse-diffusion predictor + Langevin corrector where, after every update, the known part
    (mask = 1) is replaced by alpha(t) x_known + sigma(t) z, a draw from the forward marginal p_0t(. | x_known).
    With ``n_resample`` = U > 1, each step is repeated U times, re-noising x from t_next back to t in between
    (RePaint's resampling, which lets the unknown part harmonise with the known one).
    """
    ts = jnp.asarray(time_grid(sde, steps, sde.T, eps))
    kp, kloop = jax.random.split(key)
    x = sde.prior_sample(kp, x_known.shape)

    def replace(k, x, t):
        a, s = sde.alpha_sigma(t)
        noisy = a * x_known + s * jax.random.normal(k, x.shape, x.dtype)
        return mask * noisy + (1.0 - mask) * x

    def one_step(x, k, t, t_next):
        k1, k2, k3 = jax.random.split(k, 3)
        x = replace(k1, x, t)
        for j in range(n_corrector):
            x = langevin_step(score_fn, sde, jax.random.fold_in(k2, j), x, t, snr)
            x = replace(jax.random.fold_in(k1, j + 1), x, t)
        x = reverse_diffusion_step(score_fn, sde, k3, x, t, t_next)
        return x

    def body(x, inp):
        k, t, t_next = inp
        for u in range(n_resample):
            ku = jax.random.fold_in(k, u)
            x = one_step(x, ku, t, t_next)
            if u < n_resample - 1:
                x = _forward_transition(sde, jax.random.fold_in(ku, 99), x, t_next, t)
        return x, None

    keys = jax.random.split(kloop, steps)
    x, _ = jax.lax.scan(body, x, (keys, ts[:-1], ts[1:]))
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, jnp.full((x.shape[0],), eps))
    return mask * x_known + (1.0 - mask) * x


def inpaint(
    score_fn: ScoreFn, sde: SDE, key: Array, x_known: Array, mask: Array, *, steps: int = 1000,
    n_corrector: int = 1, snr: float | None = None, n_resample: int = 1, eps: float | None = None,
    denoise: bool = True,
) -> tuple[Array, dict]:
    """Sample the unknown part of ``x_known`` (``mask`` = 1 where known, broadcastable to x) given the rest.

    Returns (samples, info): known values are returned exactly; ``info["nfe"]`` counts score evaluations.
    ``n_resample = 1`` is score_sde's replacement inpainting; U > 1 adds RePaint's resampling, and more
    ``n_corrector`` steps give the corrector more time to mix, both making the conditional more exact.
    """
    x_known = jnp.asarray(x_known)
    if x_known.ndim < 2:
        raise ValueError(f"x_known must be batched (B, *data_shape); got shape {x_known.shape}.")
    mask = jnp.broadcast_to(jnp.asarray(mask, x_known.dtype), x_known.shape)
    if not bool(jnp.all((mask == 0) | (mask == 1))):
        raise ValueError("mask must hold only 0 (unknown) and 1 (known).")
    for name, v in (("steps", steps), ("n_resample", n_resample)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v}.")
    if n_corrector < 0:
        raise ValueError(f"n_corrector must be >= 0; got {n_corrector}.")
    snr = (0.16 if sde.name == "ve" else 0.01) if snr is None else snr
    eps = sde.eps if eps is None else eps
    run = jax.jit(lambda k, xk, m: _replacement_sample(
        score_fn, sde, k, xk, m, steps=steps, n_corrector=n_corrector, snr=snr, n_resample=n_resample, eps=eps,
        denoise=denoise))
    x = run(key, x_known, mask)
    nfe = steps * n_resample * (1 + n_corrector) + int(denoise)
    return x, {"nfe": nfe}


def decoupling_matrix(channels: int = 3) -> np.ndarray:
    """An orthogonal C x C matrix whose first row is (1, ..., 1) / sqrt(C): row 0 gives the grey level
    (times sqrt C), the other rows the colour directions (score_sde's ``get_pc_colorizer``)."""
    q, _ = np.linalg.qr(np.concatenate([np.ones((channels, 1)), np.eye(channels)[:, 1:]], axis=1))
    q = q.T
    return (q if q[0, 0] > 0 else -q).astype(np.float32)


def colorize(
    score_fn: ScoreFn, sde: SDE, key: Array, gray: Array, **options
) -> tuple[Array, dict]:
    """Colour images whose channel mean is ``gray`` (B, H, W, 1), as (B, H, W, C) with C = 3.

    In the decoupled basis y = M x (M orthogonal, :func:`decoupling_matrix`) the first channel is known,
    y_0 = sqrt(C) gray, so colourisation is inpainting of y with the score M s(M^T y, t). Options as in
    :func:`inpaint`.
    """
    gray = jnp.asarray(gray)
    if gray.ndim != 4 or gray.shape[-1] != 1:
        raise ValueError(f"gray must be (B, H, W, 1); got shape {gray.shape}.")
    m = jnp.asarray(decoupling_matrix(3))
    to_y = lambda x: jnp.einsum("ij,...j->...i", m, x)
    to_x = lambda y: jnp.einsum("ji,...j->...i", m, y)
    score_y = lambda y, t: to_y(score_fn(to_x(y), t))
    y_known = jnp.concatenate([jnp.sqrt(3.0) * gray, jnp.zeros(gray.shape[:-1] + (2,), gray.dtype)], axis=-1)
    mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
    y, info = inpaint(score_y, sde, key, y_known, mask, **options)
    return to_x(y), info
