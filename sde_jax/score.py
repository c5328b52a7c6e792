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
(times in [0, T]; networks embed t themselves). :func:`score_fn` wraps it as a :class:`ScoreModel`, the pytree every
sampler, likelihood and guidance transform takes; anywhere a score is taken, a plain function ``score(x, t)`` works
too (exact scores in tests), but only the pytree form is a jit argument rather than a compile-time constant.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_jax.sde import LinearSDE, batch_broadcast, check_batch

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


class ScoreModel(eqx.Module):
    """The score s(x, t) of a network, as a pytree: the parameters (and labels) are leaves; the apply function and
    the parameterisation are static, and the SDE is a pytree of its own (leaves only for a learned schedule).

    Passed to a jitted sampler or likelihood as an argument, new weights of the same shapes reuse the compiled
    program and never become XLA constants. ``y`` (B,) are labels for a class-conditional network
    ``apply(params, x, t, y)`` (the network's null label gives the unconditional score).
    """

    params: Any
    sde: LinearSDE
    y: Array | None = None
    apply: ModelApply = eqx.field(static=True, kw_only=True)
    parameterization: str = eqx.field(static=True, kw_only=True)

    def __check_init__(self):
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"unknown parameterization {self.parameterization!r}; choose one of {PARAMETERIZATIONS}.")

    def output(self, x: Array, t: Array) -> Array:
        """The raw network output at (x, t) (t broadcast to (B,))."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.result_type(float)), (x.shape[0],))
        out = self.apply(self.params, x, t) if self.y is None else self.apply(self.params, x, t, self.y)
        if out.shape != x.shape:
            raise ValueError(f"the network returned shape {out.shape} for input {x.shape}; they must match.")
        return out.astype(x.dtype)

    def __call__(self, x: Array, t: Array) -> Array:
        """s(x, t): x of shape (B, *data_shape), t scalar or (B,) -> array shaped like x."""
        t = jnp.asarray(t, jnp.result_type(float))
        check_batch(x, t)
        t = jnp.broadcast_to(t, (x.shape[0],))
        alpha, sigma = self.sde.alpha_sigma(t)
        return output_to_score(self.output(x, t), x, batch_broadcast(alpha, x), batch_broadcast(sigma, x),
                               self.parameterization)

    def with_labels(self, y: Array | None) -> "ScoreModel":
        """The same model conditioned on labels ``y`` (None: an unconditional network)."""
        return ScoreModel(self.params, self.sde, None if y is None else jnp.asarray(y), apply=self.apply,
                          parameterization=self.parameterization)


def score_fn(model_apply: ModelApply, params: Any, sde: LinearSDE, parameterization: str = "eps",
             y: Array | None = None) -> ScoreModel:
    """The :class:`ScoreModel` of a network ``model_apply(params, x, t[, y]) -> array shaped like x``.

    Call it as ``score(x, t)``: x of shape (B, *data_shape), t scalar or (B,). ``y`` (B,) are labels for a
    class-conditional network.
    """
    return ScoreModel(params, sde, None if y is None else jnp.asarray(y), apply=model_apply,
                      parameterization=parameterization)


def denoise(score: ScoreFn, sde: LinearSDE, x: Array, t: Array) -> Array:
    """Tweedie's formula: E[x_0 | x_t] = (x_t + sigma(t)^2 s(x_t, t)) / alpha(t)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.result_type(float)), (x.shape[0],))
    alpha, sigma = sde.alpha_sigma(t)
    return (x + batch_broadcast(sigma**2, x) * score(x, t)) / batch_broadcast(alpha, x)
