"""Sample-quality distances used by tests and benchmarks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sliced_wasserstein(key: Array, x: Array, y: Array, n_projections: int = 256) -> Array:
    """Sliced Wasserstein-1 distance between two equal-size samples (Bonneel et al. 2015).

        SW_1(x, y) = E_{u ~ U(S^{d-1})} W_1(<u, x>, <u, y>),
        W_1 in 1-D = mean |sort(<u, x>) - sort(<u, y>)|

    x, y: (n, *shape) with the same n; the expectation over directions uses ``n_projections`` draws.
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs samples of equal shape; got {x.shape} and {y.shape}.")
    u = jax.random.normal(key, (x.shape[1], n_projections))
    u = u / jnp.linalg.norm(u, axis=0, keepdims=True)
    px = jnp.sort(x @ u, axis=0)
    py = jnp.sort(y @ u, axis=0)
    return jnp.mean(jnp.abs(px - py))
