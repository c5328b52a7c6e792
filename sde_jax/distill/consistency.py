"""Consistency models (Song et al. 2023; Song & Dhariwal 2023) over any SDE of the noise-process interface.

In EDM's variables, x~ = x / alpha(t) and the noise level s = sigma(t) / alpha(t), a consistency function maps any
point of a probability-flow ODE trajectory to its origin. It is parameterised so that the boundary condition holds
by construction at the smallest level s_min = s(t_min):

    f(x, t) = c_skip(s) x~ + c_out(s) F(x, t),
    c_skip(s) = sigma_d^2 / ((s - s_min)^2 + sigma_d^2),   c_out(s) = sigma_d (s - s_min) / sqrt(sigma_d^2 + s^2),

so f(x, t_min) = x / alpha(t_min) for any network F (Song et al. 2023, eq. 7 and App. C.1). A network trained as a
score model (``parameterization`` "eps", "v", "x0", ...) serves as F through EDM's preconditioning (Karras et al.
2022, Table 1): with its data prediction D(x, t) (Tweedie, :func:`sde_jax.score.denoise`),

    F = (D - c_skip'(s) x~) / c_out'(s),
    c_skip'(s) = sigma_d^2 / (s^2 + sigma_d^2),   c_out'(s) = s sigma_d / sqrt(s^2 + sigma_d^2),

so f -> D for s >> s_min: a consistency model initialised from a trained score network's weights starts at its
one-step denoiser (the standard initialisation of consistency distillation). Training compares f at
adjacent levels t_{n+1} > t_n of a discretisation:

* consistency distillation (CD): x_{n+1} = alpha x_0 + sigma z, x^_n one ODE step of a teacher from t_{n+1} to t_n
  (DDIM or EDM's Heun step of :mod:`sde_jax.sampling.steps`), loss d(f_theta(x_{n+1}), f_theta-(x^_n)) with
  theta- an EMA of theta (the target network) and no gradient through the target;
* consistency training (CT, the improved recipe): x^_n = alpha_n x_0 + sigma_n z with the same z (no teacher),
  theta- = stop_gradient(theta) (no EMA), the pseudo-Huber metric, levels drawn from a discretised log-normal,
  weight 1 / (s_{n+1} - s_n), and a number of levels that doubles during training.

Sampling is ``sj.sample(model, sde, key, shape, method="consistency", steps=1 | 2 | ...)``
(:func:`sde_jax.sampling.sample_consistency`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from sde_jax.score import output_to_score
from sde_jax.sde import LinearSDE, batch_broadcast

Array = jax.Array


class ConsistencyModel(eqx.Module):
    """f(x, t) of a network ``apply(params, x, t[, y])`` (module docstring), a pytree like :class:`sde_jax.ScoreModel`:
    params and labels are leaves. ``t_min`` is the boundary time (f(x, t_min) = x / alpha(t_min)), ``sigma_data``
    the data's standard deviation in EDM's c_skip, c_out. ``parameterization`` None: the network is F itself; a
    score parameterisation ("eps", "v", "x0", ...): the network is a score network read through EDM's
    preconditioning (module docstring). Returns an estimate of x_0."""

    params: Any
    sde: LinearSDE
    y: Array | None = None
    apply: Callable = eqx.field(static=True, kw_only=True)
    t_min: float = eqx.field(static=True, kw_only=True)
    sigma_data: float = eqx.field(static=True, kw_only=True, default=0.5)
    parameterization: str | None = eqx.field(static=True, kw_only=True, default=None)

    def __call__(self, x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        a, s = self.sde.alpha_sigma(t)
        a_min, s_min = self.sde.alpha_sigma(jnp.asarray(self.t_min, x.dtype))
        lvl, lvl_min, sd = s / a, s_min / a_min, self.sigma_data
        c_skip = sd**2 / ((lvl - lvl_min) ** 2 + sd**2)
        c_out = sd * (lvl - lvl_min) / jnp.sqrt(sd**2 + lvl**2)
        out = self.apply(self.params, x, t) if self.y is None else self.apply(self.params, x, t, self.y)
        if self.parameterization is not None:  # a score network: F from its data prediction D
            b = lambda c: batch_broadcast(c, x)
            score = output_to_score(out.astype(x.dtype), x, b(a), b(s), self.parameterization)
            d = (x + b(s**2) * score) / b(a)
            out = (d - b(sd**2 / (lvl**2 + sd**2)) * x / b(a)) / b(lvl * sd / jnp.sqrt(lvl**2 + sd**2))
        return batch_broadcast(c_skip, x) * x / batch_broadcast(a, x) + batch_broadcast(c_out, x) * out

    def _replace(self, params: Any, y: Array | None) -> "ConsistencyModel":
        return ConsistencyModel(params, self.sde, y, apply=self.apply, t_min=self.t_min, sigma_data=self.sigma_data,
                                parameterization=self.parameterization)

    def with_params(self, params: Any) -> "ConsistencyModel":
        return self._replace(params, self.y)

    def with_labels(self, y: Array | None) -> "ConsistencyModel":
        return self._replace(self.params, None if y is None else jnp.asarray(y))


def consistency_model(apply: Callable, params: Any, sde: LinearSDE, *, t_min: float | None = None,
                      sigma_data: float = 0.5, y: Array | None = None,
                      parameterization: str | None = None) -> ConsistencyModel:
    """The :class:`ConsistencyModel` of a network; ``t_min`` defaults to ``sde.eps``; ``parameterization`` names the
    output of a score network (its weights then start f at that network's denoiser), None a plain F."""
    return ConsistencyModel(params, sde, y, apply=apply, t_min=float(sde.eps if t_min is None else t_min),
                            sigma_data=sigma_data, parameterization=parameterization)


# ------------------------------------------------------------------------------------- discretisation
def karras_levels(sde: LinearSDE, n_levels: Array | int, t_min: float, rho: float = 7.0, size: int | None = None):
    """The times t_0 = t_min < ... < t_{N-1} = T of N levels spaced on EDM's rho-grid in s = sigma / alpha:

        s_i = (s_min^(1/rho) + i / (N - 1) (s_max^(1/rho) - s_min^(1/rho)))^rho,   t_i = t(s_i),

    through the SDE's inverse log-SNR. ``n_levels`` may be traced (the CT curriculum): the result has ``size``
    entries (default N), those past N - 1 repeating T."""
    size = int(n_levels) if size is None else size
    a0, s0 = sde.alpha_sigma(jnp.asarray(t_min, jnp.float32))
    a1, s1 = sde.alpha_sigma(jnp.asarray(sde.T, jnp.float32))
    i = jnp.minimum(jnp.arange(size, dtype=jnp.float32), n_levels - 1)
    lo, hi = (s0 / a0) ** (1 / rho), (s1 / a1) ** (1 / rho)
    lvl = (lo + i / (n_levels - 1) * (hi - lo)) ** rho
    t = sde.t_from_log_snr(-2.0 * jnp.log(lvl))
    t = jnp.clip(t, t_min, sde.T)
    return t.at[0].set(t_min), lvl


def ct_levels(step: Array, total_steps: int, s0: int = 10, s1: int = 1280) -> Array:
    """N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2(s1 / s0) + 1)): the improved CT curriculum
    (Song & Dhariwal 2023, eq. 5), doubling the number of levels from s0 + 1 to s1 + 1 over training."""
    k_prime = max(math.floor(total_steps / (math.log2(s1 / s0) + 1)), 1)
    return jnp.minimum(s0 * 2 ** (step // k_prime), s1).astype(jnp.int32) + 1


def lognormal_index(key: Array, lvl: Array, n_levels: Array, batch: int, p_mean: float = -1.1,
                    p_std: float = 2.0) -> Array:
    """Indices n of the intervals (s_n, s_{n+1}), n < N - 1, with probability proportional to
    erf((log s_{n+1} - P_mean) / (sqrt 2 P_std)) - erf((log s_n - P_mean) / (sqrt 2 P_std)) (Song & Dhariwal 2023,
    Sec. 3.5: the log-normal of EDM over the discrete levels)."""
    c = erf((jnp.log(lvl) - p_mean) / (math.sqrt(2.0) * p_std))
    p = c[1:] - c[:-1]
    p = jnp.where(jnp.arange(p.shape[0]) < n_levels - 1, jnp.maximum(p, 0.0), 0.0)
    return jax.random.categorical(key, jnp.log(p + 1e-30)[None].repeat(batch, 0), axis=1)


def pseudo_huber(a: Array, b: Array, c: float | None = None) -> Array:
    """sqrt(||a - b||^2 + c^2) - c per example, c = 0.00054 sqrt(d) by default (Song & Dhariwal 2023, Sec. 3.3)."""
    d = a[0].size
    c = 0.00054 * math.sqrt(d) if c is None else c
    return jnp.sqrt(jnp.sum((a - b).reshape(a.shape[0], -1) ** 2, axis=1) + c**2) - c


def squared_l2(a: Array, b: Array) -> Array:
    return jnp.sum((a - b).reshape(a.shape[0], -1) ** 2, axis=1)


# ------------------------------------------------------------------------------------------- losses
def cd_loss(params: Any, target_params: Any, model: ConsistencyModel, teacher_step: Callable, key: Array,
            x0: Array, n_levels: int, metric: Callable = squared_l2, rho: float = 7.0) -> Array:
    """Consistency distillation (Song et al. 2023, Alg. 2), the mean over the batch of

        d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x^_n, t_n)),   x^_n = teacher_step(x_{n+1}, t_{n+1}, t_n),

    n uniform over the N - 1 intervals of :func:`karras_levels`, x_{n+1} = alpha x_0 + sigma z; the target f_theta-
    with the EMA ``target_params`` under ``stop_gradient``. ``teacher_step(key, x, t, t_next) -> x_next`` is one
    step of the teacher's probability-flow ODE (e.g. ``functools.partial(sde_jax.sampling.heun_step, score, sde)``
    with its key argument first)."""
    sde = model.sde
    k_n, k_z, k_step = jax.random.split(key, 3)
    b = x0.shape[0]
    ts, _ = karras_levels(sde, n_levels, model.t_min, rho)
    n = jax.random.randint(k_n, (b,), 0, n_levels - 1)
    t_hi, t_lo = ts[n + 1], ts[n]
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    x_hi = sde.marginal_sample(k_z, x0, t_hi, noise=z)
    x_lo = jax.vmap(lambda k, x, a, c: teacher_step(k, x[None], a, c)[0])(jax.random.split(k_step, b), x_hi, t_hi,
                                                                           t_lo)
    target = jax.lax.stop_gradient(model.with_params(target_params)(jax.lax.stop_gradient(x_lo), t_lo))
    return jnp.mean(metric(model.with_params(params)(x_hi, t_hi), target))


def ct_loss(params: Any, model: ConsistencyModel, key: Array, x0: Array, n_levels: Array, max_levels: int,
            metric: Callable = pseudo_huber, rho: float = 7.0) -> Array:
    """Improved consistency training (Song & Dhariwal 2023), the mean over the batch of

        lambda_n d(f_theta(alpha_{n+1} x_0 + sigma_{n+1} z), sg f_theta(alpha_n x_0 + sigma_n z)),
        lambda_n = 1 / (s_{n+1} - s_n),

    n from :func:`lognormal_index` over ``n_levels`` (traced: :func:`ct_levels`) levels padded to ``max_levels``;
    no teacher, no EMA target."""
    sde = model.sde
    k_n, k_z = jax.random.split(key)
    b = x0.shape[0]
    ts, lvl = karras_levels(sde, n_levels, model.t_min, rho, size=max_levels)
    n = lognormal_index(k_n, lvl, n_levels, b)
    z = jax.random.normal(k_z, x0.shape, x0.dtype)
    x_hi = sde.marginal_sample(k_z, x0, ts[n + 1], noise=z)
    x_lo = sde.marginal_sample(k_z, x0, ts[n], noise=z)
    f = model.with_params(params)
    target = jax.lax.stop_gradient(f(x_lo, ts[n]))
    weight = 1.0 / (lvl[n + 1] - lvl[n])
    return jnp.mean(weight * metric(f(x_hi, ts[n + 1]), target))
