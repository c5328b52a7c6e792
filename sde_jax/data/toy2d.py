"""The standard 2-D toy sets of FFJORD / score-matching papers, generated in JAX from a key (no files).

Each sampler is ``fn(key, n) -> (n, 2) float32`` and is jit-compatible for static ``n``.
``ENTROPY`` holds the differential entropy (nats) where it is known in closed form or to good accuracy,
so a model's NLL on held-out samples can be compared with the best achievable.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def eight_gaussians(key: Array, n: int) -> Array:
    """Eight N(c_k, 0.5^2 I) at radius 4 on the unit circle's 8 directions, all divided by sqrt(2)."""
    kc, kz = jax.random.split(key)
    angles = jnp.arange(8) * (2 * math.pi / 8)
    centers = 4.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    idx = jax.random.randint(kc, (n,), 0, 8)
    return (centers[idx] + 0.5 * jax.random.normal(kz, (n, 2))) / math.sqrt(2)


def checkerboard(key: Array, n: int) -> Array:
    """Uniform on the 8 black squares of a 4x4 board on [-4, 4]^2 (density 1/32)."""
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,)) * 4 - 2
    x2 = jax.random.uniform(k2, (n,)) - 2.0 * jax.random.randint(k3, (n,), 0, 2)
    x2 = x2 + jnp.floor(x1) % 2
    return 2.0 * jnp.stack([x1, x2], axis=-1)


def two_spirals(key: Array, n: int) -> Array:
    """Two interleaved Archimedean spirals with N(0, 0.1^2) jitter (FFJORD's "2spirals")."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    h = n // 2
    r = jnp.sqrt(jax.random.uniform(k1, (h,))) * 540 * (2 * math.pi) / 360
    d1x = -jnp.cos(r) * r + jax.random.uniform(k2, (h,)) * 0.5
    d1y = jnp.sin(r) * r + jax.random.uniform(k3, (h,)) * 0.5
    arm = jnp.stack([d1x, d1y], axis=-1)
    x = jnp.concatenate([arm, -arm], axis=0) / 3
    x = jnp.concatenate([x, x[: n - 2 * h]], axis=0)
    return x + 0.1 * jax.random.normal(k4, (n, 2))


def moons(key: Array, n: int) -> Array:
    """Two interleaving half circles with N(0, 0.1^2) noise, scaled by 2 and shifted by (-1, -0.2)."""
    k1, k2, k3 = jax.random.split(key, 3)
    theta = jax.random.uniform(k1, (n,)) * math.pi
    upper = jax.random.bernoulli(k2, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(theta), 1 - jnp.cos(theta))
    y = jnp.where(upper, jnp.sin(theta), 0.5 - jnp.sin(theta))
    pts = jnp.stack([x, y], axis=-1) + 0.1 * jax.random.normal(k3, (n, 2))
    return 2.0 * pts + jnp.array([-1.0, -0.2])


def pinwheel(key: Array, n: int) -> Array:
    """Five curved arms (radial std 0.3, tangential std 0.1, rate 0.25), scaled by 2 (FFJORD's "pinwheel")."""
    kl, kf = jax.random.split(key)
    n_arms, rate = 5, 0.25
    rads = jnp.arange(n_arms) * (2 * math.pi / n_arms)
    labels = jax.random.randint(kl, (n,), 0, n_arms)
    feats = jax.random.normal(kf, (n, 2)) * jnp.array([0.3, 0.1]) + jnp.array([1.0, 0.0])
    angles = rads[labels] + rate * jnp.exp(feats[:, 0])
    rot = jnp.stack([jnp.cos(angles), -jnp.sin(angles), jnp.sin(angles), jnp.cos(angles)], -1).reshape(n, 2, 2)
    return 2.0 * jnp.einsum("ti,tij->tj", feats, rot)


def rings(key: Array, n: int) -> Array:
    """Four concentric circles of radius 0.75, 1.5, 2.25, 3 with N(0, 0.08^2) noise."""
    ka, kr, kz = jax.random.split(key, 3)
    theta = jax.random.uniform(ka, (n,)) * 2 * math.pi
    radius = 0.75 * (1 + jax.random.randint(kr, (n,), 0, 4))
    pts = radius[:, None] * jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=-1)
    return pts + 0.08 * jax.random.normal(kz, (n, 2))


def swiss_roll(key: Array, n: int) -> Array:
    """The (x, z) plane of scikit-learn's swiss roll (noise 1.0), divided by 5."""
    kt, kz = jax.random.split(key)
    t = 1.5 * math.pi * (1 + 2 * jax.random.uniform(kt, (n,)))
    pts = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=-1) + jax.random.normal(kz, (n, 2))
    return pts / 5.0


TOY_SETS: dict[str, Callable[[Array, int], Array]] = {
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "2spirals": two_spirals,
    "moons": moons,
    "pinwheel": pinwheel,
    "rings": rings,
    "swissroll": swiss_roll,
}

# Differential entropy in nats. checkerboard: uniform on area 32 -> ln 32. 8gaussians: eight well-separated
# N(., 0.125 I) -> ln 8 + ln(2 pi e 0.125) = 2.838 (overlap lowers it slightly; 2.833 by Monte Carlo).
ENTROPY: dict[str, float] = {"checkerboard": math.log(32.0), "8gaussians": 2.833}


def sample_toy(name: str, key: Array, n: int) -> Array:
    """n samples of the named 2-D set: one of ``TOY_SETS``."""
    if name not in TOY_SETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {sorted(TOY_SETS)}.")
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}.")
    return TOY_SETS[name](key, n).astype(jnp.float32)
