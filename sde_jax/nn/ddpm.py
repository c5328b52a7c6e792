"""The DDPM U-Net of Ho et al., "Denoising Diffusion Probabilistic Models" (NeurIPS 2020), as score_sde's
``models/ddpm.py`` (Song et al., ICLR 2021) builds it.

Like score_sde (and unlike ``diffusion_tf``), the decoder has one attention block per level, after its residual
blocks; this gives the 35.2M parameters of the CIFAR-10 model in score_sde. As for ``NCSNpp``, the network neither
rescales its input nor divides by sigma; t in [0, 1] is embedded as ``time_scale * t`` (999 t: DDPM's step index).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.layers import (
    AttnBlock,
    ConditioningEmbedding,
    Downsample,
    Dtype,
    ResnetBlockDDPMpp,
    Upsample,
    conv3x3,
    group_norm,
)
from sde_jax.nn.ncsnpp import check_image_input

Array = jax.Array


class DDPM(nn.Module):
    """DDPM score network: ``apply(params, x, t, y=None, train=False)`` -> array shaped like x (dtype of x).

    x (B, H, W, C); t (B,) in [0, 1]; y (B,) integer labels when ``num_classes`` is set (None = null label).
    Level i: ``nf * ch_mult[i]`` channels, ``num_res_blocks`` DDPM residual blocks (no skip rescaling, last conv of
    each branch zero-initialised), self-attention at the resolutions in ``attn_resolutions``, stride-2 conv
    (``resamp_with_conv``) or average-pool downsampling and nearest (+ conv) upsampling. Positional time embedding.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    time_scale: float = 999.0
    num_classes: Optional[int] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Optional[Array] = None, train: bool = False) -> Array:
        t = check_image_input(x, t, len(self.ch_mult), "DDPM")
        out_dtype, channels = x.dtype, x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        temb = ConditioningEmbedding(
            nf=self.nf, embedding_type="positional", time_scale=self.time_scale, num_classes=self.num_classes, **kw
        )(t, y)
        block = functools.partial(ResnetBlockDDPMpp, dropout=self.dropout, skip_rescale=False, init_scale=0.0, **kw)
        attn = functools.partial(AttnBlock, skip_rescale=False, init_scale=0.0, **kw)

        hs = [conv3x3(self.nf, **kw)(x.astype(self.dtype))]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = block(out_ch=self.nf * mult)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                hs.append(Downsample(with_conv=self.resamp_with_conv, **kw)(hs[-1]))

        h = block()(hs[-1], temb, train)
        h = attn()(h)
        h = block()(h, temb, train)

        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(out_ch=self.nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attn()(h)
            if level != 0:
                h = Upsample(with_conv=self.resamp_with_conv, **kw)(h)
        assert not hs

        h = nn.silu(group_norm(h.shape[-1], **kw)(h))
        return conv3x3(channels, init_scale=0.0, **kw)(h).astype(out_dtype)
