"""Sequential Monte Carlo for exact conditional sampling: the twisted diffusion sampler (Wu et al. 2023, TDS).

Target: p(x_0 | y) proportional to p(x_0) p(y | x_0) for a diffusion model p. On the reverse chain t_0 = T > t_1 >
... > t_N = eps, K particles per batch element carry the twisted targets

    pi_k(x_k) proportional to p(x_k) p~_k(y | x_k),

with a twist ``log_twist(x, t, x0) = log p~_t(y | x_t)`` that may read Tweedie's denoiser x0 = E[x_0 | x_t].
One step k -> k + 1 (Wu et al., Alg. 1):

    reverse kernel     p(x_{k+1} | x_k) = N(mu_k, tau_k^2 I): DDPM's posterior q(x_{k+1} | x_k, x0) at x0(x_k),
    proposal           x_{k+1} = mu_k + tau_k^2 grad_x log p~_k(y | x_k) + tau_k z,
    incremental weight w = p(x_{k+1} | x_k) p~_{k+1}(y | x_{k+1}) / [q(x_{k+1} | x_k) p~_k(y | x_k)]
                         = exp(-tau_k z . grad - tau_k^2 |grad|^2 / 2 + log p~_{k+1} - log p~_k),

systematic resampling of a batch element's particles when their effective sample size falls below
``ess_threshold`` K, log-space weights throughout, and every per-particle quantity (twist, its gradient,
the denoiser output) re-indexed with the particles. The product of the mean weights estimates the normalising
constant p(y) (of the last level's target). One score evaluation per step, on all B K particles at once, plus
its gradient through the denoiser when the twist reads x0.

A noiseless linear observation of some coordinates (inpainting: ``pin=(mask, x_known)``) has no density at the
last level; there, as in TDS' inpainting, the pinned coordinates are set to alpha(eps) x_known and the weight takes
the reverse kernel's density at them instead of a twist. As K grows the samples converge to the exact conditional
of the diffusion model at the last level (then the denoising step); replacement and RePaint do not.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from sde_jax.sampling.grids import GRIDS, time_grid
from sde_jax.sampling.steps import posterior_variance
from sde_jax.score import ScoreModel, denoise
from sde_jax.sde import LinearSDE

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
LogTwist = Callable[[Array, Array, Array], Array]


# ----------------------------------------------------------------------------------------- twists
def per_particle(v: Array, n: int) -> Array:
    """``v`` with one row per batch element (B, ...) repeated for the n = B K particle rows (element b's particles
    are rows b K .. b K + K - 1); a ``v`` that already has n rows is returned as it is."""
    return v if v.shape[0] == n else jnp.repeat(v, n // v.shape[0], axis=0)


class InpaintTwist(eqx.Module):
    """log p~_t(y | x_t) = sum over known coordinates of log N(y; x0(x_t), r_t^2), r_t^2 = sigma_t^2 / alpha_t^2
    + noise^2 (TDS' twist for a linear observation: the denoiser's prediction of the known part, with the spread of
    x_0 given x_t for unit-variance data, plus the observation noise)."""

    x_known: Array
    mask: Array
    sde: Any
    noise: Array

    def __call__(self, x: Array, t: Array, x0: Array) -> Array:
        a, s = self.sde.alpha_sigma(t)
        r2 = (s / a) ** 2 + self.noise**2
        r2 = r2.reshape((-1,) + (1,) * (x.ndim - 1))
        n = x.shape[0]
        ll = -0.5 * ((x0 - per_particle(self.x_known, n)) ** 2 / r2 + jnp.log(2 * math.pi * r2))
        mask = jnp.broadcast_to(self.mask, self.x_known.shape)
        return jnp.sum((per_particle(mask, n) * ll).reshape(n, -1), axis=1)


class ClassTwist(eqx.Module):
    """log p~_t(y | x_t) = log p_t(y | x_t) from a noise-conditional classifier ``log_prob(x, t) -> (B, C)``
    (:func:`sde_jax.classifier.log_prob_fn`, or the exact posterior of a mixture); with ``on_denoised`` the
    classifier reads x0(x_t) at time ``t0`` instead (TDS' choice for a classifier of clean data). ``y`` has one
    label, or one per batch element or per particle (:func:`per_particle`)."""

    log_prob: Any
    y: Array
    on_denoised: bool = eqx.field(static=True, default=False)
    t0: float = eqx.field(static=True, default=0.0)

    def __call__(self, x: Array, t: Array, x0: Array) -> Array:
        lp = self.log_prob(x0, jnp.full_like(t, self.t0)) if self.on_denoised else self.log_prob(x, t)
        y = per_particle(jnp.broadcast_to(self.y, (jnp.size(self.y),)), x.shape[0])
        return jnp.take_along_axis(lp, y[:, None], axis=1)[:, 0]


# ------------------------------------------------------------------------------------- the sampler
def _twist_and_grad(score, sde, log_twist, x, t):
    """(x0, log twist, its gradient in x), one score evaluation (and its VJP)."""
    def g(x):
        x0 = denoise(score, sde, x, t)
        lt = log_twist(x, t, x0)
        return jnp.sum(lt), (lt, x0)

    grad, (lt, x0) = jax.grad(g, has_aux=True)(x)
    return x0, lt, grad


def _kernel(sde, x, x0, t, t_next):
    """Mean and std of DDPM's posterior q(x_next | x_t, x0) at the denoiser's x0 (Ho et al. 2020, eqs. 6-7):
    mu = alpha_n x0 + sqrt(sigma_n^2 - tau^2) (x - alpha_t x0) / sigma_t, tau^2 = sigma_n^2 (sigma_t^2 -
    a^2 sigma_n^2) / sigma_t^2, a = alpha_t / alpha_n."""
    a_t, s_t = sde.alpha_sigma(t)
    a_n, s_n = sde.alpha_sigma(t_next)
    tau2 = posterior_variance(sde, t, t_next)
    mu = a_n * x0 + jnp.sqrt(jnp.maximum(s_n**2 - tau2, 0.0)) * (x - a_t * x0) / s_t
    return mu, jnp.sqrt(tau2)


def _resample(key, logw, ess_threshold):
    """Systematic resampling of each row of ``logw`` (B, K) whose ESS < ess_threshold K: (indices, resampled)."""
    b, k = logw.shape
    w = jax.nn.softmax(logw, axis=1)
    ess = 1.0 / jnp.sum(w**2, axis=1)
    u = (jax.random.uniform(key, (b, 1)) + jnp.arange(k)[None]) / k
    idx = jax.vmap(jnp.searchsorted)(jnp.cumsum(w, axis=1), u)
    idx = jnp.minimum(idx, k - 1)
    do = ess < ess_threshold * k
    return jnp.where(do[:, None], idx, jnp.arange(k)[None]), do, ess


def _take(v, idx):
    """v (B, K, ...) re-indexed along K by idx (B, K)."""
    return jnp.take_along_axis(v, idx.reshape(idx.shape + (1,) * (v.ndim - 2)), axis=1)


@eqx.filter_jit
def _smc(score, sde, log_twist, key, shape, k, steps, grid, eps, ess_threshold, pin, denoise_last, return_particles):
    b, data = shape[0], shape[1:]
    ts = time_grid(sde, steps, sde.T, eps, grid)
    k_prior, k_loop, k_pick = jax.random.split(key, 3)
    n = b * k
    rs = lambda v: v.reshape((b, k) + v.shape[1:])       # (B K, ...) -> (B, K, ...)
    fl = lambda v: v.reshape((n,) + v.shape[2:])          # (B, K, ...) -> (B K, ...)
    mask = known = None
    if pin is not None:
        mask = jnp.broadcast_to(pin[0], shape)[:, None]
        known = pin[1][:, None]

    x = sde.prior_sample(k_prior, (n, *data)).astype(jnp.float32)
    x0, lt, grad = _twist_and_grad(score, sde, log_twist, x, jnp.full((n,), ts[0]))
    logw, log_z = rs(lt), jnp.zeros((b,))

    def body(carry, inp):
        x, x0, lt, grad, logw, log_z = carry
        t, t_next, kk, last = inp
        k_res, k_z = jax.random.split(kk)
        idx, did, ess = _resample(k_res, logw, ess_threshold)
        log_z = log_z + jnp.where(did, logsumexp(logw, axis=1) - math.log(k), 0.0)
        logw = jnp.where(did[:, None], 0.0, logw)
        x, x0, lt, grad = (_take(v, idx) for v in (x, x0, lt, grad))

        mu, tau = _kernel(sde, x, x0, t, t_next)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        x_new = mu + tau**2 * grad + tau * z
        log_ratio = -tau * z * grad - 0.5 * tau**2 * grad**2  # log p(x_new | x) - log q(x_new | x), per coordinate
        if pin is not None:  # the last step: pinned coordinates set, weighted by the kernel's density there
            a_n = sde.alpha_sigma(t_next)[0]
            target = a_n * known
            pinned = -0.5 * ((target - mu) / tau) ** 2 - jnp.log(tau) - 0.5 * math.log(2 * math.pi)
            x_new = jnp.where(last & (mask > 0), target, x_new)
            log_ratio = jnp.where(last & (mask > 0), pinned, log_ratio)
        x0_new, lt_new, grad_new = _twist_and_grad(score, sde, log_twist, fl(x_new), jnp.full((n,), t_next))
        lt_new = rs(lt_new)
        if pin is not None:  # the pinned coordinates are now exact: no twist at the last level
            lt_new = jnp.where(last, 0.0, lt_new)
        inc = jnp.sum(log_ratio.reshape(b, k, -1), axis=-1) + lt_new - lt
        return (x_new, rs(x0_new), lt_new, rs(grad_new), logw + inc, log_z), ess

    keys = jax.random.split(k_loop, steps)
    last = jnp.arange(steps) == steps - 1
    carry = (rs(x), rs(x0), rs(lt), rs(grad), logw, log_z)
    (x, x0, lt, grad, logw, log_z), ess = jax.lax.scan(body, carry, (ts[:-1], ts[1:], keys, last))
    log_z = log_z + logsumexp(logw, axis=1) - math.log(k)
    nfe = steps + 1
    if denoise_last:
        x = rs(denoise(score, sde, fl(x), jnp.full((n,), ts[-1])))
        nfe += 1
    if pin is not None:
        x = jnp.where(mask > 0, known, x)
    info = {"nfe": jnp.asarray(nfe, jnp.int32), "nfe_per_sample": jnp.asarray(nfe * k, jnp.int32),
            "ess": ess.T, "log_z": log_z, "log_weights": logw}
    if return_particles:
        return x, info
    pick = jax.random.categorical(k_pick, logw, axis=1)
    return _take(x, pick[:, None])[:, 0], info


def _per_particle(score, b: int, k: int):
    """The score with the labels of every :class:`~sde_jax.ScoreModel` in it (guidance transforms included)
    repeated for the K particles of each batch element (particle rows b K .. b K + K - 1 belong to element b)."""
    def expand(m):
        if isinstance(m, ScoreModel) and m.y is not None and jnp.ndim(m.y) == 1 and m.y.shape[0] == b:
            return m.with_labels(jnp.repeat(m.y, k))
        return m
    return jax.tree.map(expand, score, is_leaf=lambda m: isinstance(m, ScoreModel))


def smc_sample(
    score: ScoreFn, sde: LinearSDE, key: Array, shape: tuple[int, ...], log_twist: LogTwist, *,
    n_particles: int = 16, steps: int = 200, grid: str = "logsnr", ess_threshold: float = 0.5, eps: float | None = None,
    pin: tuple[Array, Array] | None = None, denoise: bool = True, return_particles: bool = False,
) -> tuple[Array, dict[str, Array]]:
    """Conditional samples by the twisted diffusion sampler (module docstring): ``shape[0]`` independent SMC runs
    of ``n_particles`` particles each, over ``steps`` steps from T to ``eps`` (default ``sde.eps``) on the time grid
    ``grid`` (:mod:`sde_jax.sampling.grids`). The default, uniform in log-SNR, puts more steps at low noise, where
    the DDPM kernel is least accurate: on a sharp 2-D mixture at 200 steps, the log-normaliser estimate is 0.01 nats
    from the exact value on it and 0.2 nats off on the uniform grid.

    Args:
      score: the score; it is called on all B K particles at once (rows b K .. b K + K - 1 are element b's), and
        the labels of any :class:`~sde_jax.ScoreModel` in it are repeated per particle.
      log_twist: ``log_twist(x, t, x0) -> (B K,)``, log p~_t(y | x_t) given the particles, their time and
        Tweedie's x0 (e.g. :class:`InpaintTwist`, :class:`ClassTwist`, whose data may have one row per batch
        element: :func:`per_particle` lays it out). It is differentiated in x, through the denoiser.
      pin: ``(mask, x_known)`` for a noiseless observation of the coordinates where mask = 1 (see the module
        docstring); the output then holds x_known there.
      denoise: end with Tweedie's step at eps (one more evaluation).
      return_particles: return all particles (B, K, *data) and their final log-weights (``info["log_weights"]``)
        instead of one particle per batch element drawn by weight.

    Returns:
      ``(x, info)``: info holds ``nfe`` (batched score calls, each on B K particles, the twist's gradient not
      counted), ``nfe_per_sample`` (nfe K), ``ess`` (B, steps) before each step's resampling decision, ``log_z``
      (B,) the estimate of log p~(y) = log of the normaliser of the last level's target, and ``log_weights``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, *data_shape); got {shape}.")
    for name, v in (("n_particles", n_particles), ("steps", steps)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}.")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1] (a fraction of n_particles; 0 never resamples, 1 always); "
                         f"got {ess_threshold!r}.")
    eps = sde.eps if eps is None else eps
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}); got {eps!r}.")
    if pin is not None:
        mask, known = jnp.asarray(pin[0], jnp.float32), jnp.asarray(pin[1], jnp.float32)
        if known.shape != shape:
            raise ValueError(f"pin's x_known has shape {known.shape}; expected the sample shape {shape}.")
        try:
            jnp.broadcast_to(mask, shape)
        except ValueError:
            raise ValueError(f"pin's mask of shape {mask.shape} does not broadcast to {shape}.") from None
        pin = (mask, known)
    if grid not in GRIDS:
        raise ValueError(f"unknown time grid grid={grid!r}; choose one of {sorted(GRIDS)}.")
    score = _per_particle(score, shape[0], int(n_particles))
    return _smc(score, sde, log_twist, key, shape, int(n_particles), int(steps), grid, float(eps), float(ess_threshold),
                pin, denoise, return_particles)
