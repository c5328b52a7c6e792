"""A small configurable U-Net (DDPM, Ho et al. 2020): residual blocks, GroupNorm, self-attention, time embedding.

The network for small images on small machines (MNIST in ``experiments/mnist.py``); the CIFAR-scale DDPM++ /
NCSN++ family is ``sde_jax.nn.ncsnpp``. Data layout NHWC. ``patch_size`` p > 1 folds p x p pixel blocks into
channels first (space-to-depth, as the patch embedding of U-ViT / DiT) and unfolds them at the end: the same
FLOPs at 1/p^2 of the positions with p^2 times the channels, which runs several times faster on CPUs, whose
convolution weight-gradients are slow for few channels at high resolution.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.embeddings import TimeEmbedding
from sde_jax.nn.layers import ConditioningEmbedding

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


def fourier_features(x: Array, exponents: Sequence[int]) -> Array:
    """sin and cos of 2^n 2 pi x for each n in ``exponents``, per channel: (B, H, W, C) -> (B, H, W, 2 C len(n)).

    VDM's Fourier features of the input (Kingma et al. 2021, App. C; ``Base2FourierFeatures``, n = 6, 7 there):
    with data at 8-bit bin centres on [-1, 1] (bin width 2^-7), 2^6 2 pi x reads a bin's parity and 2^7 2 pi x the
    offset of x from its bin centre, fine detail a smooth network resolves badly at low noise levels."""
    w = 2.0 * jnp.pi * 2.0 ** jnp.asarray(exponents, x.dtype)
    h = (x[..., None] * w).reshape(*x.shape[:-1], x.shape[-1] * len(exponents))
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


def fourier_damping(t: Array, gamma_range: Sequence[float], exponents: Sequence[int]) -> Array:
    """Per-example factors exp(-w_n^2 sigma_t^2 / 2), w_n = 2^n 2 pi, shape (B, len(n)).

    For z = alpha x + sigma eps, E_eps[sin(w z)] = exp(-w^2 sigma^2 / 2) sin(w alpha x) (and cos alike): the factor
    is the part of a Fourier feature that still carries x. Damped features keep VDM's bin detail where it is
    readable (sigma below a bin) and are switched off above, where undamped they only feed the network noise of
    frequency w: its Jacobian then carries terms of size w (~800 for n = 7), which make the probability-flow ODE
    stiff and its Hutchinson divergence noisy at high noise (measured in ``benchmarks/README.md``, MNIST NLL). The
    time input is read as VDM's normalised gamma, gamma = gamma_min + t (gamma_max - gamma_min) with the *initial*
    schedule's end points ``gamma_range`` (what ``sde_jax.vdm.LogSNRTime`` feeds a learned schedule's network),
    and sigma^2 = sigmoid(gamma)."""
    g0, g1 = (float(g) for g in gamma_range)
    sigma2 = jax.nn.sigmoid(g0 + jnp.asarray(t, jnp.float32) * (g1 - g0))
    w = 2.0 * jnp.pi * 2.0 ** jnp.asarray(exponents, jnp.float32)
    return jnp.exp(-0.5 * w**2 * sigma2[:, None])


def space_to_depth(x: Array, p: int) -> Array:
    """(B, H, W, C) -> (B, H/p, W/p, p*p*C): each p x p block of pixels becomes one position."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h // p, w // p, p * p * c)


def depth_to_space(x: Array, p: int) -> Array:
    """Inverse of :func:`space_to_depth`."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * p, w * p, c // (p * p))


class UNet(nn.Module):
    """x (B, H, W, C), t (B,), y (B,) or None -> (B, H, W, C).

    ``ch_mult[i] * ch`` channels at level i (resolution halves between levels), ``num_res_blocks`` per level,
    attention at the resolutions (after patching) listed in ``attn_resolutions``. With ``num_classes`` the label
    embedding is added to the time embedding; label ``num_classes`` (or ``y=None``) is the null label of
    classifier-free guidance. ``fourier_features`` (exponents n, e.g. (6, 7)) appends sin and cos of
    2^n 2 pi x to the input channels before patching (:func:`fourier_features`); with ``fourier_damping =
    (gamma_min, gamma_max)`` they are damped by the noise level read from t (:func:`fourier_damping`).
    """

    ch: int = 32
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: Sequence[int] = (7,)
    dropout: float = 0.0
    embed: str = "fourier"
    patch_size: int = 1
    num_classes: int | None = None
    fourier_features: Sequence[int] = ()
    fourier_damping: Sequence[float] = ()

    @nn.compact
    def __call__(self, x: Array, t: Array, y: Array | None = None, train: bool = False) -> Array:
        p = self.patch_size
        if x.ndim != 4:
            raise ValueError(f"UNet expects NHWC images (B, H, W, C); got shape {x.shape}.")
        if p < 1 or x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"patch_size={p} must be >= 1 and divide the image size {x.shape[1]}x{x.shape[2]}.")
        if self.num_classes is None:
            if y is not None:
                raise ValueError("got class labels y, but the network is unconditional; set num_classes to use them.")
            temb = TimeEmbedding(self.ch, self.embed)(t)
        else:
            temb = ConditioningEmbedding(self.ch, "fourier", time_scale=1.0, num_classes=self.num_classes)(t, y)
        out_ch = x.shape[-1] * p * p
        if self.fourier_features:
            feats = fourier_features(x, self.fourier_features)
            if self.fourier_damping:
                if len(self.fourier_damping) != 2:
                    raise ValueError("fourier_damping is the (gamma_min, gamma_max) of the initial schedule; got "
                                     f"{tuple(self.fourier_damping)}.")
                d = fourier_damping(jnp.broadcast_to(t, x.shape[:1]), self.fourier_damping, self.fourier_features)
                d = jnp.tile(d, (1, 2 * x.shape[-1]))  # fourier_features' order: sin then cos, n fastest
                feats = feats * d[:, None, None, :]
            x = jnp.concatenate([x, feats], axis=-1)
        x = space_to_depth(x, p) if p > 1 else x
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
        h = nn.Conv(out_ch, (3, 3), kernel_init=nn.initializers.zeros)(h)
        return depth_to_space(h, p) if p > 1 else h
