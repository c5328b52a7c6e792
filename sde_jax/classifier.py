"""Classifiers of (noisy) data: their training losses, and log p_t(y | x) for guidance.

The network is any ``model_apply(params, x, t) -> logits (B, C)``, e.g. ``sde_jax.nn.Classifier``. The losses have
the signature of ``sde_jax.losses`` (``loss_fn(params, x0, keys, y) -> (loss, aux)``, one PRNG key per example), so
``sde_jax.train.step.make_train_step`` trains them on batches ``{"x": x0, "y": labels}``.

* :func:`noisy_classifier_loss` trains p_t(y | x_t) for every t: the classifier of classifier guidance
  (Song et al. 2021, Sec. 5 and App. I; Dhariwal & Nichol 2021).
* :func:`classifier_loss` trains p(y | x) on clean data (t = 0): for evaluation, e.g. the classifier-feature
  Fréchet distance / KID of ``sde_jax.eval`` (which also holds the classifier's labels and features).
* :func:`log_prob_fn` is what ``sde_jax.classifier_guidance`` takes.

(The network lives in ``sde_jax/nn/classifier.py``, like every network; this file holds the functions of it,
as ``score.py`` does for score networks.)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_jax.losses import example_noise
from sde_jax.sde import LinearSDE

Array = jax.Array
ClassifierApply = Callable[..., Array]
LossFn = Callable[..., tuple[Array, dict]]


def _cross_entropy(logits: Array, y: Array) -> tuple[Array, Array]:
    """Per-example -log softmax(logits)_y and whether argmax(logits) == y."""
    if y is None:
        raise ValueError("a classifier loss needs labels: train on batches {'x': images, 'y': labels}.")
    y = jnp.asarray(y)
    if y.shape != logits.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must hold integer labels of shape {logits.shape[:1]}; got {y.dtype} of shape {y.shape}.")
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=-1)[:, 0]
    return nll, jnp.argmax(logits, axis=-1) == y


def noisy_classifier_loss(model_apply: ClassifierApply, sde: LinearSDE, eps: Optional[float] = None) -> LossFn:
    """Cross-entropy of y given the noisy x_t and t (score_sde's noise-conditional classifier training):

        L = E_{t ~ U(eps, T)} E_{(x0, y)} E_z [ -log softmax(f(alpha(t) x0 + sigma(t) z, t))_y ],  z ~ N(0, I)

    with p_0t(x_t | x_0) = N(alpha x0, sigma^2 I) from ``sde.alpha_sigma``. Example i draws (t, z) from its own
    key. ``eps`` defaults to ``sde.eps``. aux: ``t``, ``per_example`` (the cross-entropies), ``accuracy``.
    """
    t_min = sde.eps if eps is None else eps
    if not 0 < t_min < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}); got {t_min}.")

    def loss_fn(params: Any, x0: Array, keys: Array, y: Array | None = None) -> tuple[Array, dict]:
        u, z = example_noise(keys, x0)
        t = t_min + u * (sde.T - t_min)
        xt = sde.marginal_sample(None, x0, t, noise=z)
        nll, correct = _cross_entropy(model_apply(params, xt, t), y)
        return jnp.mean(nll), {"t": t, "per_example": nll, "accuracy": jnp.mean(correct)}

    return loss_fn


def classifier_loss(model_apply: ClassifierApply) -> LossFn:
    """Cross-entropy of y given clean x0: L = E [ -log softmax(f(x0, t=0))_y ]. ``keys`` are unused (no noise).

    A noise-conditional network is evaluated at t = 0; a clean one ignores t.
    """

    def loss_fn(params: Any, x0: Array, keys: Array, y: Array | None = None) -> tuple[Array, dict]:
        nll, correct = _cross_entropy(model_apply(params, x0, jnp.zeros(x0.shape[:1])), y)
        return jnp.mean(nll), {"per_example": nll, "accuracy": jnp.mean(correct)}

    return loss_fn


class LogProb(eqx.Module):
    """log p_t(y | x) = log_softmax(f(x, t)) for every class y, shape (B, C); the parameters are leaves."""

    params: Any
    apply: ClassifierApply = eqx.field(static=True)

    def __call__(self, x: Array, t: Array) -> Array:
        return jax.nn.log_softmax(self.apply(self.params, x, t), axis=-1)


def log_prob_fn(model_apply: ClassifierApply, params: Any) -> LogProb:
    """``log_prob(x, t) -> (B, C)``: log p_t(y | x) = log_softmax(f(x, t)) for every class y, as a pytree.

    This is the ``log_prob`` of :func:`sde_jax.classifier_guidance`, which adds scale * grad_x of it to a score; as a
    pytree (parameters are leaves) it is a jit argument of the samplers, never a compile-time constant.
    """
    return LogProb(params, model_apply)

