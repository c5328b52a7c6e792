"""The baseline of ``benchmarks.nll_compare``: the PF-ODE likelihood as score_sde's ``likelihood.py`` computes it.

``scipy.integrate.solve_ivp`` (RK45) on a flat float64 state, calling a jitted drift and a jitted divergence from
Python at every evaluation: two network passes per evaluation (the divergence is score_sde's ``get_div_fn``,
grad_x <drift(x), v> . v, a VJP) and a host round-trip per stage.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj


@functools.partial(jax.jit, static_argnums=1)
def pf_drift(score: Any, sde: Any, y: jax.Array, t: jax.Array) -> jax.Array:
    """The probability-flow drift f(x, t) - 1/2 g^2 s(x, t); ``score`` a pytree of arrays (a ScoreModel)."""
    return sj.probability_flow_drift(sde, score, y, t)


@functools.partial(jax.jit, static_argnums=1)
def vjp_divergence(score: Any, sde: Any, y: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """score_sde's Hutchinson divergence: (grad_y <drift(y), v>) . v per example, a forward pass and a VJP."""
    grad = jax.grad(lambda z: jnp.sum(sj.probability_flow_drift(sde, score, z, t) * v))(y)
    return jnp.sum(grad * v, axis=tuple(range(1, y.ndim)))


def host_loop_log_likelihood(score: Any, sde: Any, x: jax.Array, probe: jax.Array, *, eps: float, rtol: float,
                             atol: float) -> tuple[np.ndarray, int]:
    """log p_eps(x) per example by score_sde's loop (minus pmap), and solve_ivp's number of evaluations.

    The two jitted functions are module-level with the score as an argument, so they compile once per model
    structure, not on every call (a timed call measures the loop, not compilation).
    """
    from scipy import integrate

    shape, batch = x.shape, x.shape[0]

    def ode_func(t, state):
        sample = jnp.asarray(state[:-batch].reshape(shape), jnp.float32)
        vec_t = jnp.full((batch,), t, jnp.float32)
        drift = np.asarray(pf_drift(score, sde, sample, vec_t)).reshape(-1)
        logp_grad = np.asarray(vjp_divergence(score, sde, sample, vec_t, probe)).reshape(-1)
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros((batch,))], axis=0)
    sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zp = sol.y[:, -1]
    z = zp[:-batch].reshape(shape).astype(np.float32)
    logp = np.asarray(sde.prior_logp(jnp.asarray(z))) + zp[-batch:]
    return logp, int(sol.nfev)
