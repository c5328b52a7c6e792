"""A trained classifier as an evaluation tool: its labels (accuracy of samples, guidance benchmarks) and its
penultimate features (the inputs of the feature-space Fréchet distance and KID, :mod:`sde_jax.eval.distances`).

The network is a Flax ``Module.apply`` of a classifier with a ``features`` method (``sde_jax.nn.Classifier``):
``apply(params, x, t) -> logits (B, C)``, ``apply(params, x, t, method="features") -> (B, F)``. Images are on the
model scale; a noise-conditional classifier reads time t (clean images at :func:`clean_time`), a clean one ignores
it. Everything runs in padded fixed-shape batches (:func:`sde_jax.eval.batching.map_padded`): one compilation per
network and batch size, with the parameters as an argument, never constants.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.eval.batching import map_padded
from sde_jax.eval.distances import frechet_distance, kid
from sde_jax.sde import LinearSDE

Array = jax.Array
ClassifierApply = Callable[..., Array]

__all__ = ["features", "load_classifier", "clean_time", "embed", "predict", "accuracy", "feature_distances"]


def features(model_apply: ClassifierApply, params: Any, x: Array, t: Optional[Array] = None) -> Array:
    """Penultimate-layer features (B, F) of the classifier: ``model_apply(params, x, t, method="features")``.

    ``model_apply`` must be a Flax ``Module.apply`` of a module with a ``features`` method (as
    ``sde_jax.nn.Classifier``). For a noise-conditional classifier pass t (e.g. :func:`clean_time`; default 0);
    a clean one ignores it.
    """
    if t is None:
        t = jnp.zeros(jnp.shape(x)[:1])
    try:
        return model_apply(params, x, t, method="features")
    except TypeError as e:
        if "method" not in str(e):
            raise
        raise TypeError("features() needs a Flax Module.apply that accepts method='features' (e.g. "
                        "sde_jax.nn.Classifier(...).apply); got a function without it.") from None


def load_classifier(workdir: str, ema: bool = True) -> tuple[ClassifierApply, Any, Any]:
    """``(apply_fn, params, config)`` of the classifier trained in ``workdir`` (EMA parameters by default).

    ``apply_fn(params, x, t) -> logits (B, C)`` on images in the model scale (``config.data.scale``);
    ``config.model.noise_conditional`` says whether t matters. FileNotFoundError if nothing was trained there,
    ValueError if ``workdir`` holds another kind of model.
    """
    from sde_jax.train.checkpoint import restore  # here: orbax is only needed when a checkpoint is read

    r = restore(workdir, ema)
    if r.config.model.name != "classifier":
        raise ValueError(f"{workdir} holds a {r.config.model.name!r} model, not a classifier.")
    return r.model.apply, r.params, r.config


def clean_time(config: Any) -> float:
    """The time at which a classifier reads clean images: its smallest training time ``loss.eps`` when it is
    noise-conditional, 0 (ignored) otherwise."""
    return float(config.loss.eps) if config.model.get("noise_conditional") else 0.0


@eqx.filter_jit
def _features(apply_fn: ClassifierApply, params: Any, x: Array, t: Array) -> Array:
    return features(apply_fn, params, x, t)


@eqx.filter_jit
def _labels(apply_fn: ClassifierApply, sde: Optional[LinearSDE], params: Any, x: Array, z: Array, t: Array) -> Array:
    if sde is not None:
        x = sde.marginal_sample(None, x, t, noise=z)
    return jnp.argmax(apply_fn(params, x, t), axis=-1)


def embed(apply_fn: ClassifierApply, params: Any, x: np.ndarray, t: float = 0.0, batch_size: int = 500) -> np.ndarray:
    """Penultimate classifier features (N, F) of images ``x`` (N, *S) on the model scale, as a numpy array, in
    padded batches of ``batch_size``. ``t`` for a noise-conditional classifier (a clean one ignores it)."""
    ts = np.full(len(x), t, np.float32)
    return map_padded(functools.partial(_features, apply_fn, params), (x, ts), batch_size)


def predict(apply_fn: ClassifierApply, params: Any, x: np.ndarray, t: float = 0.0, batch_size: int = 500,
            sde: Optional[LinearSDE] = None, seed: int = 0) -> np.ndarray:
    """argmax_y p(y | x) (N,) of images ``x`` (model scale) at time ``t``; with an ``sde``, of the noisy
    x_t = alpha(t) x + sigma(t) z instead (``sde.marginal_sample``), with a fixed z per image drawn from ``seed``."""
    z = np.random.default_rng(seed).standard_normal(np.shape(x)).astype(np.float32)
    ts = np.full(len(x), t, np.float32)
    return map_padded(functools.partial(_labels, apply_fn, sde, params), (x, z, ts), batch_size)


def accuracy(apply_fn: ClassifierApply, params: Any, x: np.ndarray, y: np.ndarray, t: float = 0.0,
             batch_size: int = 500, sde: Optional[LinearSDE] = None, seed: int = 0) -> float:
    """Fraction of :func:`predict` labels equal to ``y`` (N,)."""
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise ValueError(f"y must hold one label per image, shape ({len(x)},); got {y.shape}.")
    return float(np.mean(predict(apply_fn, params, x, t, batch_size, sde, seed) == y))


def feature_distances(feats_a: np.ndarray, feats_b: np.ndarray, kid_subset_size: int = 1000,
                      kid_subsets: int = 100) -> dict:
    """Classifier-feature Fréchet distance and KID, under names that say so (``fd_classifier``,
    ``kid_classifier``: not FID / KID, see :mod:`sde_jax.eval.distances`).

    Both depend on the numbers of images (FD is biased upwards at small N): compare with the real-vs-real floor of
    the same sizes. With N = kid_subset_size every subset is the whole set, so ``kid_classifier_std`` is 0 (one
    estimate), not a sign of certainty.
    """
    m = min(kid_subset_size, len(feats_a), len(feats_b))
    k_mean, k_std = kid(feats_a, feats_b, subset_size=m, n_subsets=kid_subsets)
    return {"fd_classifier": frechet_distance(feats_a, feats_b), "kid_classifier": k_mean,
            "kid_classifier_std": k_std, "n": [len(feats_a), len(feats_b)], "kid_subset_size": m}
