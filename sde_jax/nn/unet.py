"""A small configurable U-Net (DDPM, Ho et al. 2020): residual blocks, GroupNorm, self-attention, time embedding.

The image issue grows this into the DDPM++ / NCSN++ family; its pieces are kept small and separate.
Data layout NHWC.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.embeddings import TimeEmbedding

Array = jax.Array


def _groups(ch: int) -> int:
    """Largest group count <= 32 dividing ch (DDPM uses 32)."""
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0 and ch // g >= 1:
            return min(g, ch)
    return 1


class ResBlock(nn.Module):
    """h = Conv(SiLU(GN(x))) + Dense(temb);  h = Conv(Dropout(SiLU(GN(h))));  out = skip(x) + h."""

    out_ch: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool = False) -> Array:
        h = nn.Conv(self.out_ch, (3, 3))(nn.silu(nn.GroupNorm(_groups(x.shape[-1]))(x)))
        h = h + nn.Dense(self.out_ch)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(_groups(self.out_ch))(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1))(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over spatial positions with a residual connection."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        h = nn.GroupNorm(_groups(c))(x).reshape(b, hgt * wid, c)
        h = nn.SelfAttention(num_heads=1, qkv_features=c, out_kernel_init=nn.initializers.zeros)(h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """x (B, H, W, C), t (B,) -> (B, H, W, C).

    ``ch_mult[i] * ch`` channels at level i (resolution halves between levels), ``num_res_blocks`` per level,
    attention at the resolutions listed in ``attn_resolutions``.
    """

    ch: int = 32
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: Sequence[int] = (7,)
    dropout: float = 0.0
    embed: str = "fourier"

    @nn.compact
    def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC images (B, H, W, C); got shape {x.shape}.")
        temb = TimeEmbedding(self.ch, self.embed)(t)
        h = nn.Conv(self.ch, (3, 3))(x)
        hs = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dropout)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock()(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
                hs.append(h)
        h = ResBlock(h.shape[-1], self.dropout)(h, temb, train)
        h = AttnBlock()(h)
        h = ResBlock(h.shape[-1], self.dropout)(h, temb, train)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                skip = hs.pop()
                h = ResBlock(self.ch * mult, self.dropout)(jnp.concatenate([h, skip], axis=-1), temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock()(h)
            if level != 0:
                target = hs[-1].shape[1:3]
                h = jax.image.resize(h, (h.shape[0], *target, h.shape[-1]), "nearest")
                h = nn.Conv(h.shape[-1], (3, 3))(h)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]))(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)
