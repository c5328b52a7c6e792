"""A KL-regularised convolutional VAE with a discretised logistic decoder: the first stage of latent diffusion
(Rombach et al., CVPR 2022, "LDM"), sized for 28x28 images.

    encoder   q(z | x) = N(z; m(x), diag(exp(v(x))))                        (B, H/f, W/f, latent_channels)
    decoder   p(x | z) = prod_d DLogistic(x_d; mu_d(z), s_d(z))                over K = num_bins pixel values
    prior     N(0, I) in the training loss only (its KL weight is small, as in LDM; the diffusion model is the prior)

The decoder is a distribution over the K values of each pixel (PixelCNN++'s discretised logistic, Salimans et al.
2017, eq. 2, one logistic per pixel), so -log p(x | z) is in bits of the *discrete* data and the latent
diffusion bound of :mod:`sde_jax.latent` is a bound on -log2 P(x) / D, comparable with the pixel models'.
This module is the network only; the log-densities of its outputs are pure functions in :mod:`sde_jax.latent`
(``discretized_logistic_logp``, ``gaussian_kl``, ``gaussian_logp``, ``gaussian_entropy``), the loss is
``sde_jax.losses.vae_loss``.

Network (NHWC, GroupNorm + SiLU residual blocks; ``ch_mult`` has L + 1 levels, L stride-2 downsamplings, and
``patch_size`` p folds p x p pixel blocks into channels first, so the latent is f = p 2^L times smaller):

    encoder:  space-to-depth(p) -> Conv3x3(ch) -> [ResBlock x num_res_blocks, Conv3x3/2] per level but the last
              -> ResBlock(s) -> SiLU(GN) -> Conv3x3(2 latent_channels) = (m, v)
    decoder:  Conv3x3(ch_mult[-1] ch) -> [ResBlock(s), nearest x2 + Conv3x3] per level from the top
              -> SiLU(GN) -> Conv3x3(2 C p^2) -> depth-to-space(p) = (mu, log s)

The default, 2x2 patches and two levels, maps 28x28 images to 7x7 latents with one stride-2 convolution: the
patches are the first halving (a strided 2x2 "convolution", as the U-Net's ``patch_size``), several times cheaper
on CPUs than a convolution at 28x28 (0.2 s against 0.7 s per batch of 64 on 2 shared cores);
``patch_size=1, ch_mult=(1, 2, 2)`` is the same latent shape with two stride-2 convolutions.

``apply(params, x)`` (x on [-1, 1], any t ignored, so the training loop's ``init(key, x, t)`` works) returns
``(m, v, mu, log s)`` of the posterior mean; ``method="encode"`` / ``method="decode"`` give each half.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.layers import num_groups
from sde_jax.nn.unet import depth_to_space, space_to_depth

Array = jax.Array

LOGVAR_RANGE = (-30.0, 20.0)  # the encoder's log-variance is clipped to this range (LDM's DiagonalGaussian)
MIN_LOG_SCALE = -7.0  # the decoder's logistic log-scale is floored here (PixelCNN++)


# ------------------------------------------------------------------------------------------ shapes
def latent_shape(image_shape: Sequence[int], ch_mult: Sequence[int], latent_channels: int,
                 patch_size: int = 1) -> tuple[int, int, int]:
    """(H / f, W / f, latent_channels), f = patch_size 2^L, for images (H, W, C) and L = len(ch_mult) - 1 stride-2
    downsamplings; ValueError unless f divides H and W (e.g. 28x28 with 2x2 patches and ch_mult of 2 levels, or no
    patches and 3 levels -> 7x7)."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C); got {tuple(image_shape)}.")
    if len(ch_mult) < 1 or latent_channels < 1 or patch_size < 1:
        raise ValueError(f"need at least one level in ch_mult, latent_channels >= 1 and patch_size >= 1; got "
                         f"ch_mult={tuple(ch_mult)}, latent_channels={latent_channels}, patch_size={patch_size}.")
    f = patch_size * 2 ** (len(ch_mult) - 1)
    h, w = int(image_shape[0]), int(image_shape[1])
    if h % f or w % f:
        raise ValueError(f"patch_size={patch_size} and {len(ch_mult) - 1} stride-2 downsamplings (ch_mult="
                         f"{tuple(ch_mult)}) need the image size to be a multiple of {f}; got {h}x{w}. Use fewer "
                         "levels or pad the images.")
    return h // f, w // f, int(latent_channels)


# ------------------------------------------------------------------------------------------ network
class _ResBlock(nn.Module):
    """h = Conv(SiLU(GN(x)));  h = Conv(SiLU(GN(h)));  out = skip(x) + h (the last conv starts at zero)."""

    out_ch: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.Conv(self.out_ch, (3, 3))(nn.silu(nn.GroupNorm(num_groups(x.shape[-1]))(x)))
        h = nn.silu(nn.GroupNorm(num_groups(self.out_ch))(h))
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1))(x)
        return x + h


class Encoder(nn.Module):
    """x (B, H, W, C) on [-1, 1] -> (m, v), each (B, H / f, W / f, latent_channels), f = patch_size 2^L."""

    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    latent_channels: int
    patch_size: int = 1

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        h = nn.Conv(self.ch, (3, 3))(space_to_depth(x, self.patch_size) if self.patch_size > 1 else x)
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = _ResBlock(self.ch * mult)(h)
            if level != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
        h = nn.silu(nn.GroupNorm(num_groups(h.shape[-1]))(h))
        moments = nn.Conv(2 * self.latent_channels, (3, 3))(h)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nn.Module):
    """z (B, h, w, latent_channels) -> (mu, log s), each (B, h f, w f, out_channels), f = patch_size 2^L."""

    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    out_channels: int
    patch_size: int = 1

    @nn.compact
    def __call__(self, z: Array) -> tuple[Array, Array]:
        h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3))(z)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks):
                h = _ResBlock(self.ch * mult)(h)
            if level != 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = nn.Conv(self.ch * self.ch_mult[level - 1], (3, 3))(h)
        h = nn.silu(nn.GroupNorm(num_groups(h.shape[-1]))(h))
        p = self.patch_size
        out = nn.Conv(2 * self.out_channels * p * p, (3, 3))(h)
        loc, log_scale = jnp.split(depth_to_space(out, p) if p > 1 else out, 2, axis=-1)
        return loc, jnp.maximum(log_scale, MIN_LOG_SCALE)


class VAE(nn.Module):
    """The KL-regularised VAE of the module docstring.

    ``apply(params, x[, t])`` -> (m, v, mu, log s) with the decoder read at z = m; ``apply(params, x,
    method="encode")`` -> (m, v); ``apply(params, z, method="decode")`` -> (mu, log s). ``out_channels`` is the
    images' C (1 for MNIST). The latent shape is :func:`latent_shape` of the image shape.
    """

    ch: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    latent_channels: int = 4
    out_channels: int = 1
    patch_size: int = 2

    def setup(self):
        if (not self.ch_mult or self.ch < 1 or self.num_res_blocks < 0 or self.latent_channels < 1
                or self.patch_size < 1):
            raise ValueError(f"invalid VAE: ch={self.ch}, ch_mult={tuple(self.ch_mult)}, num_res_blocks="
                             f"{self.num_res_blocks}, latent_channels={self.latent_channels}, patch_size="
                             f"{self.patch_size}.")
        self.encoder = Encoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.latent_channels,
                               self.patch_size)
        self.decoder = Decoder(self.ch, tuple(self.ch_mult), self.num_res_blocks, self.out_channels, self.patch_size)

    def encode(self, x: Array) -> tuple[Array, Array]:
        """q(z | x): its mean and log-variance, each (B, *latent_shape)."""
        if x.ndim != 4 or x.shape[-1] != self.out_channels:
            raise ValueError(f"the VAE expects NHWC images (B, H, W, {self.out_channels}); got shape {x.shape}.")
        latent_shape(x.shape[1:], self.ch_mult, self.latent_channels, self.patch_size)  # ValueError: size not halved
        return self.encoder(x)

    def decode(self, z: Array) -> tuple[Array, Array]:
        """p(x | z): the logistic's location (on [-1, 1]) and log-scale per pixel, each (B, H, W, out_channels)."""
        if z.ndim != 4 or z.shape[-1] != self.latent_channels:
            raise ValueError(f"the decoder expects latents (B, h, w, {self.latent_channels}); got shape {z.shape}.")
        return self.decoder(z)

    def __call__(self, x: Array, t: Optional[Array] = None) -> tuple[Array, Array, Array, Array]:
        mean, logvar = self.encode(x)
        loc, log_scale = self.decode(mean)
        return mean, logvar, loc, log_scale
