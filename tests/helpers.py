"""Test helpers: a score wrapper that counts its evaluations at run time (for checking ``info["nfe"]``), and a
reference sample set with its noise floor (for sampler accuracy against exact mixture samples)."""

import jax
import numpy as np


class Counted:
    """The wrapped score, counting evaluations at run time (one ``jax.debug.callback`` per batched call)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def _bump(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._bump)
        return self.fn(x, t)


def reference_and_floor(mix, n: int, w1) -> tuple[jax.Array, float]:
    """A reference set of ``n`` exact samples of ``mix`` and the noise floor: the mean distance ``w1`` of 8
    independent exact sets to it (what a perfect sampler scores)."""
    draw = jax.jit(lambda key: mix.sample(key, n))
    ref = draw(jax.random.key(1))
    return ref, float(np.mean([float(w1(draw(jax.random.key(100 + i)), ref)) for i in range(8)]))
