"""Network output -> score s(x, t) ~ grad_x log p_t(x).

With x_t = alpha(t) x_0 + sigma(t) z (see ``sde.alpha_sigma``), a network output ``out`` is read as:

============== ================================ =====================================================
parameterization  network predicts                  score
============== ================================ =====================================================
``"eps"``         the noise z                         s = -out / sigma            (DDPM, Ho et al. 2020)
``"score"``       the score itself                    s = out
``"scaled_score"`` sigma times the score              s = out / sigma            (NCSN++, Song et al. 2021)
``"x0"``          the clean data (Tweedie)            s = (alpha out - x) / sigma^2
``"v"``           v = alpha z - sigma x_0             s = -(sigma x + alpha out) / (sigma (alpha^2 + sigma^2))
============== ================================ =====================================================

The network is any ``model_apply(params, x, t) -> array shaped like x`` with t of shape (B,)
(times in [0, T]; networks embed t themselves).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from sde_jax.sde import SDE, batch_broadcast, check_batch

Array = jax.Array
ModelApply = Callable[[Any, Array, Array], Array]
ScoreFn = Callable[[Array, Array], Array]

PARAMETERIZATIONS = ("eps", "score", "scaled_score", "x0", "v")


def output_to_score(out: Array, x: Array, alpha: Array, sigma: Array, parameterization: str) -> Array:
    """Convert a network output to a score, given alpha(t) and sigma(t) already broadcast against x."""
    if parameterization == "eps":
        return -out / sigma
    if parameterization == "score":
        return out
    if parameterization == "scaled_score":
        return out / sigma
    if parameterization == "x0":
        return (alpha * out - x) / sigma**2
    if parameterization == "v":
        return -(sigma * x + alpha * out) / (sigma * (alpha**2 + sigma**2))
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}.")


def score_fn(model_apply: ModelApply, params: Any, sde: SDE, parameterization: str = "eps",
             y: Array | None = None) -> ScoreFn:
    """Turn a network into ``score_fn(x, t)``: x of shape (B, *data_shape), t scalar or (B,).

    Returns an array shaped like x. Pure: closes over ``params``, ``sde`` and, for a class-conditional network
    ``model_apply(params, x, t, y)``, the labels ``y`` (B,) (the network's null label gives the unconditional
    score).
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}.")

    def fn(x: Array, t: Array) -> Array:
        t = jnp.asarray(t, jnp.result_type(float))
        check_batch(x, t)
        t = jnp.broadcast_to(t, (x.shape[0],))
        alpha, sigma = sde.alpha_sigma(t)
        out = model_apply(params, x, t) if y is None else model_apply(params, x, t, y)
        if out.shape != x.shape:
            raise ValueError(f"the network returned shape {out.shape} for input {x.shape}; they must match.")
        return output_to_score(
            out.astype(x.dtype), x, batch_broadcast(alpha, x), batch_broadcast(sigma, x), parameterization
        )

    return fn


def denoise(sde: SDE, score: ScoreFn, x: Array, t: Array) -> Array:
    """Tweedie's formula: E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.result_type(float)), (x.shape[0],))
    alpha, sigma = sde.alpha_sigma(t)
    return (x + batch_broadcast(sigma**2, x) * score(x, t)) / batch_broadcast(alpha, x)
