"""Residual MLP score network for low-dimensional data (toy 2-D sets, Gaussian mixtures)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sde_jax.nn.embeddings import TimeEmbedding

Array = jax.Array


class ScoreMLP(nn.Module):
    """x (B, d), t (B,) -> (B, d).

    h_0 = Dense(x);  h_{l+1} = h_l + Dense(SiLU(Dense(SiLU(LN(h_l))) + Dense(temb)));  out = Dense_0(SiLU(LN(h_L))).
    The output layer starts at zero, so an untrained "eps" network predicts no noise.

    ``x_levels`` = L > 0 feeds h_0 the positional encoding of x as well (NeRF's gamma, Mildenhall et al. 2020):
    sin(2^k pi x / x_scale), cos(2^k pi x / x_scale) for k < L, which lets a small MLP draw sharp edges (VDM's
    Fourier features of z serve the same purpose for images).

    ``x_damping`` multiplies each feature by exp(-w^2 sigma_t^2 / 2), sigma_t the std of p_0t from ``sde``
    (``sde.alpha_sigma``): for x_t = alpha_t x_0 + sigma_t eps, E_eps[sin(w x_t)] = exp(-w^2 sigma_t^2 / 2) sin(w alpha_t x_0),
    so a feature keeps the size of the part that still carries x_0 and fades where it is noise (the image U-Net's
    ``fourier_damping``). Build it with ``model_from_config(config.model, sde)``.
    """

    width: int = 256
    depth: int = 3
    embed: str = "fourier"
    embed_dim: int = 64
    fourier_scale: float = 16.0
    x_levels: int = 0
    x_scale: float = 4.0
    x_damping: bool = False
    sde: Any = None  # the noise process whose sigma_t damps the positional encoding (x_damping only)

    @nn.compact
    def __call__(self, x: Array, t: Array) -> Array:
        shape = x.shape
        x = x.reshape(shape[0], -1)
        temb = nn.silu(TimeEmbedding(self.embed_dim, self.embed, self.fourier_scale)(t))
        if self.x_levels:
            freqs = jnp.pi * 2.0 ** jnp.arange(self.x_levels) / self.x_scale
            ang = x[:, :, None] * freqs
            feats = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=1)  # (B, 2d, L): sin rows, then cos
            if self.x_damping:
                feats = feats * self._damping(freqs, t)
            x_in = jnp.concatenate([x, feats.reshape(shape[0], -1)], axis=-1)
        else:
            x_in = x
        h = nn.Dense(self.width)(x_in)
        for _ in range(self.depth):
            r = nn.Dense(self.width)(nn.silu(nn.LayerNorm()(h)))
            r = r + nn.Dense(self.width)(temb)
            h = h + nn.Dense(self.width)(nn.silu(r))
        out = nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(nn.silu(nn.LayerNorm()(h)))
        return out.reshape(shape)

    def _damping(self, freqs: Array, t: Array) -> Array:
        """exp(-w^2 sigma_t^2 / 2), shaped (B, 1, L) against the features (B, 2d, L)."""
        if self.sde is None:
            raise ValueError("x_damping needs the noise process: build the network with "
                             "model_from_config(config.model, sde) (or ScoreMLP(..., sde=sde)).")
        sigma = jnp.broadcast_to(self.sde.alpha_sigma(jnp.asarray(t, jnp.float32))[1], (t.shape[0],))
        return jnp.exp(-0.5 * (freqs[None, None, :] * sigma[:, None, None]) ** 2)
