"""A small CNN image classifier, optionally noise-conditional: ``apply(params, x, t=None) -> logits (B, C)``.

The noise-conditional form classifies noisy x_t given t and gives grad_x log p_t(y | x_t) for classifier guidance
(Song et al. 2021, Sec. 5 and App. I: there a Wide-ResNet whose features get a time embedding added; this is the
same idea at MNIST scale). Its penultimate activations (``method="features"``) are the feature space of the
classifier Fréchet distance / KID in ``sde_jax.eval``.

    h = SiLU(GN(Conv4x4/2(x) + Dense(temb)))          H/2, ch       (temb = ConditioningEmbedding(t); only if
    h = SiLU(GN(Conv3x3(h)   + Dense(temb)))          H/2, ch        noise_conditional, else no temb terms)
    h = SiLU(GN(Conv3x3/2(h) + Dense(temb)))          H/4, 2 ch
    h = SiLU(GN(Conv3x3(h)   + Dense(temb)))          H/4, 2 ch
    f = SiLU(Dense_F(mean_{H,W} h))                   features (B, F), F = feature_dim (default 4 ch)
    logits = Dense_C(f)

GroupNorm, not BatchNorm: ``apply`` is pure (no batch statistics to update) and an example's output does not
depend on the rest of its batch. Global average pooling makes it work for any H x W. Without ``noise_conditional``
the time argument is accepted and ignored (so the training loop's ``init(key, x, t)`` works for both forms).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.layers import ConditioningEmbedding, num_groups

Array = jax.Array


class _Body(nn.Module):
    """Images (and t) -> penultimate features (B, feature_dim); see the module docstring."""

    ch: int
    feature_dim: int
    noise_conditional: bool

    @nn.compact
    def __call__(self, x: Array, t: Optional[Array]) -> Array:
        temb = None
        if self.noise_conditional:
            temb = ConditioningEmbedding(self.ch, "fourier", time_scale=1.0)(t)
        h = x
        for out, kernel, stride in ((self.ch, 4, 2), (self.ch, 3, 1), (2 * self.ch, 3, 2), (2 * self.ch, 3, 1)):
            h = nn.Conv(out, (kernel, kernel), strides=(stride, stride))(h)
            if temb is not None:
                h = h + nn.Dense(out)(nn.silu(temb))[:, None, None, :]
            h = nn.silu(nn.GroupNorm(num_groups(out))(h))
        return nn.silu(nn.Dense(self.feature_dim)(jnp.mean(h, axis=(1, 2))))


class Classifier(nn.Module):
    """x (B, H, W, C) [, t (B,)] -> logits (B, num_classes); ``method="features"`` -> (B, feature_dim).

    ``noise_conditional=True`` embeds t (Gaussian Fourier features of t, as the U-Net) and adds it to every
    conv block; t is then required. ``feature_dim`` defaults to 4 ch.
    """

    num_classes: int = 10
    ch: int = 32
    noise_conditional: bool = False
    feature_dim: Optional[int] = None

    def setup(self):
        if self.num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2; got {self.num_classes}.")
        self.body = _Body(self.ch, self.feature_dim or 4 * self.ch, self.noise_conditional)
        self.head = nn.Dense(self.num_classes)

    def _check(self, x: Array, t: Optional[Array]) -> Optional[Array]:
        if x.ndim != 4:
            raise ValueError(f"Classifier expects NHWC images (B, H, W, C); got shape {x.shape}.")
        if not self.noise_conditional:
            return None
        if t is None:
            raise ValueError("this classifier is noise-conditional: pass the times t (B,) of the noisy images "
                             "(t = sde.eps, or 0, for clean images).")
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        return t

    def features(self, x: Array, t: Optional[Array] = None) -> Array:
        """Penultimate activations (B, feature_dim): the classifier feature space of FD / KID."""
        return self.body(x, self._check(x, t))

    def __call__(self, x: Array, t: Optional[Array] = None) -> Array:
        return self.head(self.features(x, t))
