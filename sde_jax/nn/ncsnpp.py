"""NCSN++ / DDPM++: the U-Net family of Song et al., "Score-Based Generative Modeling through Stochastic
Differential Equations" (ICLR 2021), after score_sde's ``models/ncsnpp.py``.

One module covers both names of the paper: DDPM++ is ``resblock_type="biggan"`` without FIR and with positional
time embedding (the VP presets); NCSN++ adds FIR resampling, a residual input pyramid and Fourier features of
log sigma (the VE presets). See ``sde_jax.nn.presets`` for the CIFAR-10 configurations.

Differences from the reference, all deliberate:
* the network never rescales its input (score_sde maps [0, 1] data to [-1, 1] when ``data.centered`` is False):
  data scaling belongs to ``sde_jax.data``;
* the network never divides by sigma(t) (score_sde's ``scale_by_sigma``): use ``parameterization="scaled_score"``
  in ``sde_jax.score_fn``, so the network does not need the SDE;
* it takes continuous t and maps it affinely to what the reference embeds (``time_scale``, ``time_shift``);
* optional class conditioning (``num_classes``) and mixed precision (``dtype``).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.layers import (
    SQRT2,
    AttnBlock,
    Combine,
    ConditioningEmbedding,
    Downsample,
    Dtype,
    ResnetBlockBigGANpp,
    ResnetBlockDDPMpp,
    Upsample,
    conv3x3,
    group_norm,
)
from sde_jax.nn.resample import DEFAULT_FIR_KERNEL

Array = jax.Array

PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


def check_image_input(x: Array, t: Array, num_levels: int, name: str) -> Array:
    """Validate x (B, H, W, C) for a U-Net with ``num_levels`` resolutions; return t broadcast to (B,)."""
    if x.ndim != 4:
        raise ValueError(f"{name} expects NHWC images (B, H, W, C); got shape {x.shape}.")
    factor = 2 ** (num_levels - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"{name} halves the resolution {num_levels - 1} times, so H and W must be multiples of {factor}; "
            f"got {x.shape[1]}x{x.shape[2]}. Shorten ch_mult or pad the images."
        )
    t = jnp.asarray(t, jnp.float32)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},); got shape {t.shape}.")
    return jnp.broadcast_to(t, (x.shape[0],))


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network: ``apply(params, x, t, y=None, train=False)`` -> array shaped like x.

    x (B, H, W, C) NHWC; t (B,) continuous time in [0, 1], embedded as ``time_shift + time_scale * t`` (see
    ``ConditioningEmbedding``); y (B,) integer class labels when ``num_classes`` is set (None = the null label).
    ``train=True`` enables dropout (pass ``rngs={"dropout": key}``). The output has the dtype of x.

    Levels i = 0 .. len(ch_mult) - 1 run at resolution H / 2^i with ``nf * ch_mult[i]`` channels and
    ``num_res_blocks`` residual blocks (attention after each when the resolution is in ``attn_resolutions``);
    the decoder has ``num_res_blocks + 1`` blocks per level fed by the skip connections, and one attention block
    per level. Options, with the reference's names:

    * ``resblock_type``: "biggan" (resampling inside residual blocks, ``ResnetBlockBigGANpp``) or "ddpm"
      (``ResnetBlockDDPMpp`` with separate ``Upsample``/``Downsample``, conv-based when ``resamp_with_conv``);
    * ``fir``/``fir_kernel``: FIR (StyleGAN2) resampling instead of nearest / box;
    * ``skip_rescale``: divide every residual sum by sqrt(2);
    * ``progressive_input``: "none" | "input_skip" (downsampled image combined by ``progressive_combine``) |
      "residual" (a conv-downsampled image pyramid added to each level);
    * ``progressive``: "none" | "output_skip" (sum of upsampled per-level RGB outputs) | "residual";
    * ``init_scale``: scale of the last layer of every residual branch and of the output conv (0: start at zero);
    * ``embedding_type``: "fourier" (``fourier_scale``) or "positional".
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    fir: bool = False
    fir_kernel: Sequence[int] = DEFAULT_FIR_KERNEL
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    init_scale: float = 0.0
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    time_scale: float = 999.0
    time_shift: float = 0.0
    num_classes: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _check_options(self) -> None:
        if self.resblock_type not in ("biggan", "ddpm"):
            raise ValueError(f"unknown resblock_type {self.resblock_type!r}; choose 'biggan' or 'ddpm'.")
        if self.progressive not in PROGRESSIVE:
            raise ValueError(f"unknown progressive {self.progressive!r}; choose one of {PROGRESSIVE}.")
        if self.progressive_input not in PROGRESSIVE_INPUT:
            raise ValueError(
                f"unknown progressive_input {self.progressive_input!r}; choose one of {PROGRESSIVE_INPUT}."
            )
        if self.progressive_combine not in ("sum", "cat"):
            raise ValueError(f"unknown progressive_combine {self.progressive_combine!r}; choose 'sum' or 'cat'.")

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Optional[Array] = None, train: bool = False) -> Array:
        self._check_options()
        t = check_image_input(x, t, len(self.ch_mult), "NCSNpp")
        out_dtype, channels = x.dtype, x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        fir = dict(fir=self.fir, fir_kernel=tuple(self.fir_kernel))
        rescale = (lambda a, b: (a + b) / SQRT2) if self.skip_rescale else (lambda a, b: a + b)

        temb = ConditioningEmbedding(
            nf=self.nf, embedding_type=self.embedding_type, fourier_scale=self.fourier_scale,
            time_scale=self.time_scale, time_shift=self.time_shift, num_classes=self.num_classes, **kw,
        )(t, y)
        attn = functools.partial(AttnBlock, skip_rescale=self.skip_rescale, init_scale=self.init_scale, **kw)
        if self.resblock_type == "biggan":
            block = functools.partial(ResnetBlockBigGANpp, dropout=self.dropout, skip_rescale=self.skip_rescale,
                                      init_scale=self.init_scale, **fir, **kw)
        else:
            block = functools.partial(ResnetBlockDDPMpp, dropout=self.dropout, skip_rescale=self.skip_rescale,
                                      init_scale=self.init_scale, **kw)

        def down(h: Array) -> Array:
            if self.resblock_type == "biggan":
                return block(down=True)(h, temb, train)
            return Downsample(with_conv=self.resamp_with_conv, **fir, **kw)(h)

        def up(h: Array) -> Array:
            if self.resblock_type == "biggan":
                return block(up=True)(h, temb, train)
            return Upsample(with_conv=self.resamp_with_conv, **fir, **kw)(h)

        def to_image(h: Array, features: int, init_scale: float = 1.0) -> Array:
            return conv3x3(features, init_scale=init_scale, **kw)(nn.silu(group_norm(h.shape[-1], **kw)(h)))

        # Encoder.
        x = x.astype(self.dtype)
        input_pyramid = x
        hs = [conv3x3(self.nf, **kw)(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = block(out_ch=self.nf * mult)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if level == len(self.ch_mult) - 1:
                continue
            h = down(hs[-1])
            if self.progressive_input == "input_skip":
                input_pyramid = Downsample(with_conv=False, **fir, **kw)(input_pyramid)
                h = Combine(self.progressive_combine, **kw)(input_pyramid, h)
            elif self.progressive_input == "residual":
                input_pyramid = Downsample(out_ch=h.shape[-1], with_conv=True, **fir, **kw)(input_pyramid)
                h = input_pyramid = rescale(input_pyramid, h)
            hs.append(h)

        # Bottleneck.
        h = block()(hs[-1], temb, train)
        h = attn()(h)
        h = block()(h, temb, train)

        # Decoder.
        pyramid = None
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(out_ch=self.nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attn()(h)
            top = level == len(self.ch_mult) - 1
            if self.progressive == "output_skip":
                out = to_image(h, channels, self.init_scale)
                pyramid = out if top else Upsample(with_conv=False, **fir, **kw)(pyramid) + out
            elif self.progressive == "residual":
                if top:
                    pyramid = to_image(h, h.shape[-1])
                else:
                    pyramid = Upsample(out_ch=h.shape[-1], with_conv=True, **fir, **kw)(pyramid)
                    h = pyramid = rescale(pyramid, h)
            if level != 0:
                h = up(h)
        assert not hs

        h = pyramid if self.progressive == "output_skip" else to_image(h, channels, self.init_scale)
        return h.astype(out_dtype)
