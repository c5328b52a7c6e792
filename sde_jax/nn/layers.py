"""Building blocks of the DDPM, DDPM++ and NCSN++ U-Nets (NHWC).

Sources: Ho et al., "Denoising Diffusion Probabilistic Models" (NeurIPS 2020), ``diffusion_tf/models/unet.py``;
Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations" (ICLR 2021), score_sde's
``models/layers.py`` (DDPM blocks) and ``models/layerspp.py`` (the "++" blocks). Written afresh for Flax linen;
shapes, initialisers and parameter counts follow the reference.

Conventions shared by every block:
* activation SiLU ("swish"), the only one the reference CIFAR-10 configs use;
* GroupNorm with ``min(C // 4, 32)`` groups and epsilon 1e-6 (``group_norm``);
* DDPM initialisation: variance scaling, fan_avg, uniform (``default_init``); biases start at zero;
* ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``), ``param_dtype`` the storage dtype of parameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.embeddings import GaussianFourierProjection, sinusoidal_embedding
from sde_jax.nn.resample import (
    DEFAULT_FIR_KERNEL,
    conv_downsample_2d,
    downsample_2d,
    naive_downsample_2d,
    naive_upsample_2d,
    upsample_2d,
    upsample_conv_2d,
)

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

SQRT2 = math.sqrt(2.0)


def default_init(scale: float = 1.0) -> Initializer:
    """DDPM's initialiser: U(-a, a) with Var = scale * 2 / (fan_in + fan_out) (``variance_scaling``, fan_avg).

    ``scale = 0`` is replaced by 1e-10 as in the reference: the layer starts (numerically) at zero, so a residual
    branch ending in it starts as the identity, yet its weights still receive gradients.
    """
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def num_groups(channels: int) -> int:
    """GroupNorm groups for C channels: min(C // 4, 32) as in score_sde (at least 1), reduced to a divisor of C."""
    return math.gcd(channels, max(1, min(channels // 4, 32)))


def group_norm(channels: int, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.GroupNorm:
    """GroupNorm(min(C // 4, 32) groups, eps 1e-6) for C channels."""
    return nn.GroupNorm(num_groups=num_groups(channels), epsilon=1e-6, dtype=dtype, param_dtype=param_dtype)


def conv3x3(
    features: int, *, stride: int = 1, init_scale: float = 1.0, dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
) -> nn.Conv:
    """3x3 'SAME' convolution with bias and DDPM initialisation (stride 2 pads (0, 1), as the reference)."""
    return nn.Conv(
        features, (3, 3), strides=(stride, stride), padding="SAME", kernel_init=default_init(init_scale),
        dtype=dtype, param_dtype=param_dtype,
    )


def nin(
    features: int, *, init_scale: float = 0.1, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
) -> nn.Dense:
    """DDPM's "network in network" layer: a 1x1 convolution, i.e. a Dense layer on the channel axis."""
    return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype, param_dtype=param_dtype)


class FIRConv(nn.Module):
    """3x3 convolution fused with 2x FIR up- or downsampling (StyleGAN2's ``Conv2d``; score_sde up_or_down_sampling.py).

    Parameters ``kernel`` (3, 3, C_in, C_out) and ``bias`` (C_out,), the same count as a plain 3x3 convolution.
    """

    features: int
    up: bool = False
    down: bool = False
    fir_kernel: Sequence[int] = DEFAULT_FIR_KERNEL
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.up == self.down:
            raise ValueError("FIRConv resamples: set exactly one of up=True or down=True.")
        w = self.param("kernel", default_init(), (3, 3, x.shape[-1], self.features), self.param_dtype)
        b = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x = x.astype(self.dtype)
        w = w.astype(self.dtype)
        h = upsample_conv_2d(x, w, self.fir_kernel) if self.up else conv_downsample_2d(x, w, self.fir_kernel)
        return h + b.astype(self.dtype)


class Upsample(nn.Module):
    """2x upsampling: nearest (+ 3x3 conv) as in DDPM, or FIR (fused with the conv when ``with_conv``) for NCSN++."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = DEFAULT_FIR_KERNEL
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if self.with_conv and self.fir:
            return FIRConv(out_ch, up=True, fir_kernel=self.fir_kernel, dtype=self.dtype,
                           param_dtype=self.param_dtype)(x)
        h = upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.with_conv:
            h = conv3x3(out_ch, dtype=self.dtype, param_dtype=self.param_dtype)(h)
        elif out_ch != x.shape[-1]:
            raise ValueError(f"Upsample without a conv keeps the channels; got out_ch={out_ch} for {x.shape[-1]}.")
        return h


class Downsample(nn.Module):
    """2x downsampling: stride-2 3x3 conv or 2x2 average pool as in DDPM, or FIR (fused with the conv) for NCSN++."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = DEFAULT_FIR_KERNEL
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch or x.shape[-1]
        if not self.with_conv and out_ch != x.shape[-1]:
            raise ValueError(f"Downsample without a conv keeps the channels; got out_ch={out_ch} for {x.shape[-1]}.")
        if self.fir:
            if self.with_conv:
                return FIRConv(out_ch, down=True, fir_kernel=self.fir_kernel, dtype=self.dtype,
                               param_dtype=self.param_dtype)(x)
            return downsample_2d(x, self.fir_kernel)
        if self.with_conv:
            return conv3x3(out_ch, stride=2, dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return naive_downsample_2d(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with a residual connection.

        h = GN(x);  q, k, v = NIN(h);  a = softmax(q k^T / sqrt(C));  out = x + NIN_0(a v)   [/ sqrt(2)]

    DDPM's ``AttnBlock`` (skip_rescale=False) and NCSN++'s ``AttnBlockpp`` (skip_rescale=True). The output projection
    starts at ``init_scale`` (0: the block starts as the identity). Softmax is computed in float32.
    """

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = group_norm(c, **kw)(x).reshape(b, hgt * wid, c)
        q, k, v = nin(c, **kw)(h), nin(c, **kw)(h), nin(c, **kw)(h)
        logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * c**-0.5
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = nin(c, init_scale=self.init_scale, **kw)(jnp.einsum("bij,bjc->bic", attn, v))
        out = x + h.reshape(b, hgt, wid, c)
        return out / SQRT2 if self.skip_rescale else out


class ResnetBlockDDPMpp(nn.Module):
    """DDPM's residual block (score_sde ``ResnetBlockDDPMpp``; ``ResnetBlockDDPM`` is skip_rescale=False, init_scale=0).

        h = Conv(SiLU(GN(x))) + Dense(SiLU(temb));  h = Conv_init_scale(Dropout(SiLU(GN(h))))
        out = skip(x) + h   [/ sqrt(2) if skip_rescale],   skip = NIN (or 3x3 conv) when the channels change.
    """

    out_ch: Optional[int] = None
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    conv_shortcut: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out_ch = self.out_ch or x.shape[-1]
        h = conv3x3(out_ch, **kw)(nn.silu(group_norm(x.shape[-1], **kw)(x)))
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), **kw)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(out_ch, **kw)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, init_scale=self.init_scale, **kw)(h)
        if x.shape[-1] != out_ch:
            x = conv3x3(out_ch, **kw)(x) if self.conv_shortcut else nin(out_ch, **kw)(x)
        out = x + h
        return out / SQRT2 if self.skip_rescale else out


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block that can resample (Brock et al. 2019; score_sde ``ResnetBlockBigGANpp``).

        h = SiLU(GN(x)); resample h and x (FIR or naive, when up/down);  h = Conv(h) + Dense(SiLU(temb))
        h = Conv_init_scale(Dropout(SiLU(GN(h))));  out = skip(x) + h   [/ sqrt(2) if skip_rescale]
    skip is a 1x1 conv when the channels change or the block resamples.
    """

    out_ch: Optional[int] = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = DEFAULT_FIR_KERNEL
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _resample(self, x: Array) -> Array:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = False) -> Array:
        if self.up and self.down:
            raise ValueError("ResnetBlockBigGANpp: up and down cannot both be set.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        in_ch = x.shape[-1]
        out_ch = self.out_ch or in_ch
        h = nn.silu(group_norm(in_ch, **kw)(x))
        h, x = self._resample(h), self._resample(x)
        h = conv3x3(out_ch, **kw)(h)
        if temb is not None:
            h = h + nn.Dense(out_ch, kernel_init=default_init(), **kw)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(out_ch, **kw)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(out_ch, init_scale=self.init_scale, **kw)(h)
        if in_ch != out_ch or self.up or self.down:
            x = nn.Conv(out_ch, (1, 1), kernel_init=default_init(), **kw)(x)
        out = x + h
        return out / SQRT2 if self.skip_rescale else out


class Combine(nn.Module):
    """NCSN++'s progressive-input combiner: a 1x1 conv of the input pyramid, concatenated ('cat') or added ('sum')."""

    method: str = "cat"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        if self.method not in ("cat", "sum"):
            raise ValueError(f"unknown combine method {self.method!r}; choose 'cat' or 'sum'.")
        h = nn.Conv(y.shape[-1], (1, 1), kernel_init=default_init(), dtype=self.dtype, param_dtype=self.param_dtype)(x)
        return jnp.concatenate([h, y], axis=-1) if self.method == "cat" else h + y


class ConditioningEmbedding(nn.Module):
    """Time (and optional class label) embedding shared by all blocks: (B,), (B,) -> (B, 4 nf).

        s = time_shift + time_scale * t
        e = [sin(2 pi W s), cos(2 pi W s)], W ~ N(0, fourier_scale^2) fixed, 2 nf features   ("fourier", NCSN++)
          | DDPM/Transformer sinusoids of s, nf features                                        ("positional")
        temb = Dense_4nf(SiLU(Dense_4nf(e)))  [+ Embed(y)]

    The reference feeds log sigma(t) to the Fourier features (VE) and the integer-like step 999 t to the sinusoids
    (VP); both are affine in t, hence ``time_shift`` / ``time_scale`` (see ``sde_jax.nn.presets``).

    With ``num_classes`` set, ``Embed(num_classes + 1, 4 nf)(y)`` is added; label ``num_classes`` is the "null"
    label of classifier-free guidance and ``y=None`` means null for every example.
    """

    nf: int
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    time_scale: float = 999.0
    time_shift: float = 0.0
    num_classes: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: Array, y: Optional[Array] = None) -> Array:
        s = self.time_shift + self.time_scale * jnp.asarray(t, jnp.float32)
        if self.embedding_type == "fourier":
            emb = GaussianFourierProjection(2 * self.nf, self.fourier_scale)(s)
        elif self.embedding_type == "positional":
            emb = sinusoidal_embedding(s, self.nf, scale=1.0)
        else:
            raise ValueError(f"unknown embedding_type {self.embedding_type!r}; choose 'fourier' or 'positional'.")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        temb = nn.Dense(4 * self.nf, kernel_init=default_init(), **kw)(emb)
        temb = nn.Dense(4 * self.nf, kernel_init=default_init(), **kw)(nn.silu(temb))
        if self.num_classes is None:
            if y is not None:
                raise ValueError("got class labels y, but the network is unconditional; set num_classes to use them.")
            return temb
        if y is None:
            y = jnp.full(t.shape, self.num_classes, jnp.int32)
        y = jnp.asarray(y)
        if y.shape != t.shape or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                f"y must hold integer labels of shape {t.shape} (0 .. {self.num_classes - 1}, or "
                f"{self.num_classes} for the null label); got {y.dtype} of shape {y.shape}."
            )
        return temb + nn.Embed(self.num_classes + 1, 4 * self.nf, **kw)(y)
