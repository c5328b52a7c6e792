"""A score wrapper that counts its evaluations at run time (for checking ``info["nfe"]``)."""

import jax


class Counted:
    """The wrapped score, counting evaluations at run time (one ``jax.debug.callback`` per batched call)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def _bump(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._bump)
        return self.fn(x, t)
