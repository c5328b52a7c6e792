"""Controllable generation as score transforms, and conditional sampling by replacement.

Guidance works at the level of scores, where the intractable normaliser of p(x | y) drops out
(Song et al. 2021, Sec. 5 and App. I):

    grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x).

:func:`classifier_guidance` and :func:`classifier_free_guidance` return scores that are pytrees (``equinox.Module``,
callable as ``score(x, t)``; labels, weights and network parameters are leaves), so every sampler takes them as jit
arguments: a new guidance weight or new labels reuse the compiled sampler. :func:`inpaint` and :func:`colorize`
condition on a known linear part of the data by replacing it, after every update of the predictor-corrector loop
(``sde_jax.sampling.steps.step_loop``'s projection hook), with a draw from the forward marginal of the known values
(Song et al. 2021, App. I.2), optionally with RePaint's resampling (Lugmayr et al. 2022), or, asymptotically
exactly, with the particle sampler of :mod:`sde_jax.smc` (``method="smc"``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.sampling.grids import time_grid
from sde_jax.sampling.steps import langevin_step, reverse_diffusion_step, step_loop
from sde_jax.score import denoise as tweedie
from sde_jax.sde import LinearSDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
LogProbFn = Callable[[Array, Array], Array]


class ClassifierGuidance(eqx.Module):
    """s(x, t) + scale grad_x log p_t(y | x) (Song et al. 2021, eq. 14; Dhariwal & Nichol 2021, Alg. 1)."""

    score: Any
    log_prob: Any
    y: Array
    scale: Array

    def __call__(self, x: Array, t: Array) -> Array:
        def log_py(xx):
            lp = self.log_prob(xx, t)
            return jnp.sum(jnp.take_along_axis(lp, jnp.broadcast_to(self.y, (xx.shape[0],))[:, None], axis=1))

        return self.score(x, t) + self.scale * jax.grad(log_py)(x)


class ClassifierFreeGuidance(eqx.Module):
    """(1 + w) s(x, t | y) - w s(x, t) (Ho & Salimans 2022, eq. 6)."""

    cond: Any
    uncond: Any
    w: Array

    def __call__(self, x: Array, t: Array) -> Array:
        return (1.0 + self.w) * self.cond(x, t) - self.w * self.uncond(x, t)


def classifier_guidance(score: ScoreFn, log_prob: LogProbFn, y: Array, scale: float = 1.0) -> ClassifierGuidance:
    """s(x, t) + scale grad_x log p_t(y | x) (Song et al. 2021, eq. 14; Dhariwal & Nichol 2021, Alg. 1).

    ``log_prob(x, t) -> (B, C)`` are the log-probabilities of a noise-conditional classifier (e.g.
    ``sde_jax.classifier.log_prob_fn``); ``y`` (B,) the requested classes. scale = 1 samples p_t(x | y); scale > 1
    sharpens towards p(y | x)^scale.
    """
    return ClassifierGuidance(score, log_prob, jnp.asarray(y), jnp.asarray(scale, jnp.float32))


def classifier_free_guidance(cond: ScoreFn, uncond: ScoreFn, w: float) -> ClassifierFreeGuidance:
    """(1 + w) s(x, t | y) - w s(x, t) (Ho & Salimans 2022, eq. 6).

    w = 0 is the conditional model; w > 0 samples towards p(x | y) p(y | x)^w. With one class-conditional network
    trained with label dropout (:func:`sde_jax.drop_labels`), pass ``score.with_labels(y)`` and
    ``score.with_labels(null)``.
    """
    return ClassifierFreeGuidance(cond, uncond, jnp.asarray(w, jnp.float32))


# ----------------------------------------------------------------------------- replacement sampling
@eqx.filter_jit
def _inpaint(score, sde, key, x_known, mask, steps, n_corrector, snr, n_resample, eps, denoise):
    ts = time_grid(sde, steps, sde.T, eps)
    k_prior, k_loop = jax.random.split(key)
    x = sde.prior_sample(k_prior, x_known.shape).astype(x_known.dtype)

    def project(k, x, t):  # the known part <- a draw from p_0t(. | x_known)
        noisy = sde.marginal_sample(k, x_known, jnp.broadcast_to(t, x.shape[:1]))
        return mask * noisy + (1.0 - mask) * x

    corrector = functools.partial(langevin_step, snr=snr)
    x, nfe = step_loop(score, sde, k_loop, x, ts, reverse_diffusion_step, corrector=corrector,
                       n_corrector=n_corrector, n_resample=n_resample, project=project)
    if denoise:
        x, nfe = tweedie(score, sde, x, eps), nfe + 1
    return mask * x_known + (1.0 - mask) * x, {"nfe": jnp.asarray(nfe, jnp.int32)}


INPAINT_METHODS = ("replacement", "repaint", "smc")


def inpaint(
    score: ScoreFn, sde: LinearSDE, key: Array, x_known: Array, mask: Array, *, method: str = "replacement",
    steps: int = 1000, n_corrector: int | None = None, snr: float | None = None, n_resample: int | None = None,
    n_particles: int = 16, eps: float | None = None, denoise: bool = True,
) -> tuple[Array, dict]:
    """Sample the unknown part of ``x_known`` (``mask`` = 1 where known, broadcastable to x) given the rest.

    ``method``:

    * ``"replacement"`` (score_sde): predictor-corrector sampling (reverse-diffusion predictor, ``n_corrector``
      Langevin steps, default 1, with ``snr``, default ``sde.corrector_snr``; ``steps`` uniform steps from T to
      ``eps``) in which the known part is replaced, after every update, by alpha(t) x_known + sigma(t) z. **Biased**:
      the unknown part never sees the known values except through the score, and no amount of compute removes
      the error (a minority mode the observation selects is under-sampled).
    * ``"repaint"`` (Lugmayr et al. 2022): replacement with each step repeated ``n_resample`` = U times (default 10;
      ``n_corrector`` default 0), re-noising from t_next back to t in between, so the unknown part can agree with
      the known one. Less biased, still not exact.
    * ``"smc"``: the twisted diffusion sampler (:func:`sde_jax.smc.smc_sample`) with ``n_particles`` particles per
      image, the linear-observation twist :class:`sde_jax.smc.InpaintTwist` and the known coordinates pinned at the
      last level: asymptotically exact in the number of particles. ``steps`` default 1000 as the others.

    Returns (samples, info): the known values exactly; ``info["nfe"]`` (int32) the batched score calls:
    steps U (1 + n_corrector) + denoise for replacement / RePaint, steps + 1 + denoise for SMC (each call on all
    B K particles; ``info["nfe_per_sample"]`` = K nfe), with SMC's ``ess`` and ``log_z`` (the log density of the
    known part under the model at eps, at alpha(eps) x_known).
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method={method!r}; choose one of {list(INPAINT_METHODS)}.")
    x_known = jnp.asarray(x_known)
    if x_known.ndim < 2:
        raise ValueError(f"x_known must be batched (B, *data_shape); got shape {x_known.shape}.")
    try:
        mask = jnp.broadcast_to(jnp.asarray(mask, x_known.dtype), x_known.shape)
    except ValueError:
        raise ValueError(f"mask of shape {jnp.shape(mask)} does not broadcast to x_known's {x_known.shape}.") from None
    if not isinstance(mask, jax.core.Tracer) and not np.all((np.asarray(mask) == 0) | (np.asarray(mask) == 1)):
        raise ValueError("mask must hold only 0 (unknown) and 1 (known).")
    if not isinstance(x_known, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x_known))):
        raise ValueError("x_known holds NaN or inf values; put finite values (e.g. 0) where mask = 0.")
    if method == "smc":
        off = [n for n, v in (("n_corrector", n_corrector), ("snr", snr), ("n_resample", n_resample)) if v is not None]
        if off:
            raise ValueError(f"{off} belong to replacement / RePaint; method='smc' takes n_particles and steps.")
        from sde_jax.smc import InpaintTwist, smc_sample
        twist = InpaintTwist(x_known, mask, sde, jnp.zeros((), x_known.dtype))
        return smc_sample(score, sde, key, x_known.shape, twist, n_particles=n_particles, steps=steps, eps=eps,
                          pin=(mask, x_known), denoise=denoise)
    n_corrector = (1 if method == "replacement" else 0) if n_corrector is None else n_corrector
    n_resample = (1 if method == "replacement" else 10) if n_resample is None else n_resample
    if method == "replacement" and n_resample != 1:
        raise ValueError(f"n_resample={n_resample} is RePaint's: pass method='repaint' (or drop n_resample).")
    for name, v, low in (("steps", steps, 1), ("n_resample", n_resample, 1), ("n_corrector", n_corrector, 0)):
        if isinstance(v, bool) or int(v) != v or v < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {v}.")
    snr = sde.corrector_snr if snr is None else snr
    if not snr > 0:
        raise ValueError(f"snr must be > 0; got {snr}. Pass n_corrector=0 to drop the corrector.")
    eps = sde.eps if eps is None else eps
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}); got {eps}.")
    if not isinstance(denoise, bool):
        raise ValueError(f"denoise must be True or False; got {denoise!r}.")
    return _inpaint(score, sde, key, x_known, mask, int(steps), int(n_corrector), float(snr), int(n_resample),
                    float(eps), denoise)


def decoupling_matrix(channels: int = 3) -> np.ndarray:
    """An orthogonal C x C matrix whose first row is (1, ..., 1) / sqrt(C): row 0 gives the grey level
    (times sqrt C), the other rows the colour directions (score_sde's ``get_pc_colorizer``)."""
    q, _ = np.linalg.qr(np.concatenate([np.ones((channels, 1)), np.eye(channels)[:, 1:]], axis=1))
    q = q.T
    return (q if q[0, 0] > 0 else -q).astype(np.float32)


class _Decoupled(eqx.Module):
    """The score in the decoupled colour basis y = M x (M orthogonal, acting on the last axis): M s(M^T y, t)."""

    score: Any
    m: Array

    def __call__(self, y: Array, t: Array) -> Array:
        x = jnp.einsum("ji,...j->...i", self.m, y)
        return jnp.einsum("ij,...j->...i", self.m, self.score(x, t))


def colorize(score: ScoreFn, sde: LinearSDE, key: Array, gray: Array, **options) -> tuple[Array, dict]:
    """Colour images whose channel mean is ``gray`` (B, H, W, 1), as (B, H, W, C) with C = 3.

    In the decoupled basis y = M x (:func:`decoupling_matrix`) the first channel is known, y_0 = sqrt(C) gray,
    so colourisation is inpainting of y with the score M s(M^T y, t). Options as in :func:`inpaint`.
    """
    gray = jnp.asarray(gray)
    if gray.ndim != 4 or gray.shape[-1] != 1:
        raise ValueError(f"gray must be (B, H, W, 1); got shape {gray.shape}.")
    m = jnp.asarray(decoupling_matrix(3))
    y_known = jnp.concatenate([jnp.sqrt(3.0) * gray, jnp.zeros(gray.shape[:-1] + (2,), gray.dtype)], axis=-1)
    mask = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
    y, info = inpaint(_Decoupled(score, m), sde, key, y_known, mask, **options)
    return jnp.einsum("ji,...j->...i", m, y), info
