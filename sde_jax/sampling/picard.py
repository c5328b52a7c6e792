"""Parallel-in-time sampling: Picard iterations over a sliding window (Shih et al. 2023, ParaDiGMS).

A fixed-grid sampler is a chain x_{k+1} = Phi_k(x_k), k = 0 .. N - 1, where Phi_k is one interval of the sampler
(:class:`~sde_jax.sampling.samplers.StepPlan`) with its noise drawn in advance from the interval's key. Its
trajectory is the fixed point of the Picard map

    x_{i+j+1} <- x_i + sum_{l=0}^{j} [Phi_{i+l}(x_{i+l}) - x_{i+l}],   j = 0 .. p - 1,

on a window of p steps that starts at the last state known exactly, x_i. One sweep evaluates all p increments from
the previous sweep's states in one batched score call; after s sweeps the first s states of the window are exact.
The window then slides past every state whose change in this sweep was small,

    ||x_new - x_old||^2 / d <= tol^2 v_k   for every batch element,

with d the data dimension and v_k the variance of the forward posterior q(x_{k+1} | x_k, x_0) of the step (the
noise a stochastic sampler adds there; ParaDiGMS' noise-scaled tolerance), and the new entries start from the
window's last state. The first state of a window is always accepted (it is exact), so the run ends after at most N
sweeps and, with tol = 0, reproduces the sequential sampler to float rounding. The sweep count is the parallel
depth: the number of sequential batched score calls the user waits for.

With ``devices`` > 1 the window is sharded over that many local devices (``jax.shard_map`` over the window axis):
each device evaluates p / devices increments, and the cumulative sum is gathered. The result equals the
one-device run.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from sde_jax.sampling.steps import interval_keys, posterior_variance
from sde_jax.sde import LinearSDE

Array = jax.Array


def _window_map(score, sde, interval: Callable, devices: int) -> Callable:
    """``f(keys, xs, ts, ts_next) -> Phi(xs)`` over the window axis (vmapped; sharded over ``devices``)."""
    def local(score, sde, keys, xs, t, t_next):
        return jax.vmap(lambda k, x, a, b: interval(score, sde, k, x, a, b))(keys, xs, t, t_next)

    if devices == 1:
        return lambda *args: local(score, sde, *args)
    mesh = Mesh(jax.local_devices()[:devices], ("window",))
    arrays, static = eqx.partition((score, sde), eqx.is_array)

    def sharded(arrays, keys, xs, t, t_next):
        s, d = eqx.combine(arrays, static)
        return local(s, d, keys, xs, t, t_next)

    w = P("window")
    f = jax.shard_map(sharded, mesh=mesh, in_specs=(P(), w, w, w, w), out_specs=w)
    return lambda *args: f(arrays, *args)


def picard_loop(
    score: Callable, sde: LinearSDE, key: Array, x: Array, ts: Array, interval: Callable, evals: int, *,
    window: int, tol: float, devices: int = 1,
) -> tuple[Array, dict[str, Array]]:
    """Solve the trajectory of the sequential sampler (grid ``ts``, one interval ``interval``, ``evals`` score
    evaluations per interval, interval k driven by key k of :func:`~sde_jax.sampling.steps.interval_keys`) by
    sliding-window Picard iteration. Returns (x at ts[-1], info) with info:

      ``nfe``        score evaluations made: sweeps x window x evals (padded slots past the grid included);
      ``sweeps``     the parallel depth (sequential batched score calls of the window);
      ``accepted``   states accepted per sweep, shape (N,), zero after the last sweep;
      ``residuals``  for each step k, sqrt(max over the batch of ||x_new - x_old||^2 / (d v_k)) in the sweep that
                     accepted x_{k+1}: below ``tol`` except where a window's first state was accepted regardless.
    """
    n = ts.shape[0] - 1
    p = min(window, n)
    if p % devices:
        raise ValueError(f"the window ({p} steps) must be a multiple of devices={devices}.")
    keys = interval_keys(key, n)[:-1]
    var = posterior_variance(sde, ts[:-1], ts[1:])
    phi = _window_map(score, sde, interval, devices)
    dims = tuple(range(2, x.ndim + 1))
    size = x[0].size

    def body(state):
        i, w, sweeps, accepted, residuals = state
        idx = i + jnp.arange(p)
        active = idx < n
        k = jnp.minimum(idx, n - 1)
        t, t_next = ts[k], ts[k + 1]
        inc = phi(keys[k], w[:-1], t, t_next) - w[:-1]
        inc = jnp.where(active.reshape((p,) + (1,) * x.ndim), inc, 0.0)
        new = w[0] + jnp.cumsum(inc, axis=0)                                  # states i+1 .. i+p
        change = jnp.sum((new - w[1:]) ** 2, axis=dims) / size                # (p, B)
        ratio = jnp.max(change, axis=1) / var[k]
        bad = (ratio > tol**2) & active
        stride = jnp.where(jnp.any(bad), jnp.argmax(bad), p)                  # states before the first failure
        stride = jnp.clip(stride, 1, n - i)
        take = jnp.arange(p) < stride
        residuals = residuals.at[jnp.where(take, idx, n)].set(jnp.sqrt(ratio), mode="drop")
        full = jnp.concatenate([w[:1], new, jnp.broadcast_to(new[-1], new.shape)], axis=0)
        w = jax.lax.dynamic_slice_in_dim(full, stride, p + 1, axis=0)
        return i + stride, w, sweeps + 1, accepted.at[sweeps].set(stride), residuals

    w0 = jnp.broadcast_to(x, (p + 1, *x.shape))
    state = (jnp.int32(0), w0, jnp.int32(0), jnp.zeros((n,), jnp.int32), jnp.zeros((n,), x.dtype))
    _, w, sweeps, accepted, residuals = jax.lax.while_loop(lambda s: s[0] < n, body, state)
    info = {"nfe": sweeps * p * evals, "sweeps": sweeps, "accepted": accepted, "residuals": residuals}
    return w[0], info
