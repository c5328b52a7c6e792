"""Time embeddings for score networks."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def sinusoidal_embedding(t: Array, dim: int, max_positions: float = 10_000.0, scale: float = 1000.0) -> Array:
    """Transformer / DDPM positional embedding of ``scale * t`` (Vaswani et al. 2017; Ho et al. 2020).

        emb_k = sin(scale t / max_positions^(k / (dim/2 - 1))),  then the cosines, k = 0 .. dim/2 - 1.

    ``scale = 1000`` maps t in [0, 1] onto DDPM's integer steps (score_sde passes 999 t).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_embedding needs an even dim; got {dim}.")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) * jnp.arange(half) / max(half - 1, 1))
    args = scale * jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of t (Tancik et al. 2020; NCSN++): [sin(2 pi W t), cos(2 pi W t)], W ~ N(0, scale^2).

    W is a fixed (non-trained) parameter, as in score_sde.
    """

    dim: int = 256
    scale: float = 16.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        w = self.param("W", lambda k, s: self.scale * jax.random.normal(k, s), (self.dim // 2,))
        w = jax.lax.stop_gradient(w)
        proj = 2 * math.pi * jnp.asarray(t, jnp.float32)[:, None] * w[None]
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class TimeEmbedding(nn.Module):
    """Embed t ("fourier" or "sinusoidal") then an MLP Dense(4c) - SiLU - Dense(4c), as in DDPM/NCSN++."""

    dim: int
    kind: str = "fourier"
    fourier_scale: float = 16.0

    @nn.compact
    def __call__(self, t: Array) -> Array:
        if self.kind == "fourier":
            emb = GaussianFourierProjection(self.dim, self.fourier_scale)(t)
        elif self.kind == "sinusoidal":
            emb = sinusoidal_embedding(t, self.dim)
        else:
            raise ValueError(f"unknown time embedding {self.kind!r}; choose 'fourier' or 'sinusoidal'.")
        emb = nn.Dense(4 * self.dim)(emb)
        return nn.Dense(4 * self.dim)(nn.silu(emb))
