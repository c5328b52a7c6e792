"""Time grids: the one place every fixed-step sampler gets its times T = t_0 > t_1 > ... > t_steps = eps from.

======================= ==========================================================================================
grid                    times (u = i / steps, i = 0 .. steps; lambda = log(alpha^2 / sigma^2), the log-SNR)
======================= ==========================================================================================
``"uniform"``           equally spaced in t (score_sde, DDIM)
``"logsnr"``            equally spaced in lambda (DPM-Solver, Lu et al. 2022, Sec. 3.4)
``"edm"``               equally spaced in s^(1/rho), s = sigma / alpha = exp(-lambda / 2) (Karras et al. 2022, eq. 5)
``"quadratic"``         t_i = t_end + (t_start - t_end) (1 - u)^2 (DDIM's quadratic selection, Song, Meng & Ermon
                        2021, App. D.2)
======================= ==========================================================================================

Grids in lambda or s map back to t with ``sde.t_from_log_snr``, so they hold for any :class:`~sde_jax.LinearSDE`.
A user grid ``ts`` is checked by :func:`check_ts`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.sde import LinearSDE

Array = jax.Array

GRIDS = ("uniform", "logsnr", "edm", "quadratic")


def _grid_times(steps: int, grid: str, rho: float, sde: LinearSDE, t_hi: float, t_lo: float) -> Array:
    """The grid from t_hi down to t_lo (steps + 1 times, float32) before the end points are pinned."""
    u = jnp.linspace(0.0, 1.0, steps + 1)
    if grid == "uniform":
        return t_hi + u * (t_lo - t_hi)
    if grid == "quadratic":
        return t_lo + (t_hi - t_lo) * (1.0 - u) ** 2
    lam_hi, lam_lo = sde.log_snr(t_hi), sde.log_snr(t_lo)  # lambda(t_hi) < lambda(t_lo)
    if grid == "logsnr":
        return sde.t_from_log_snr(lam_hi + u * (lam_lo - lam_hi))
    if grid == "edm":
        s_hi, s_lo = jnp.exp(-lam_hi / 2 / rho), jnp.exp(-lam_lo / 2 / rho)  # s^(1/rho)
        s = (s_hi + u * (s_lo - s_hi)) ** rho
        return sde.t_from_log_snr(-2.0 * jnp.log(s))
    raise ValueError(f"unknown time grid grid={grid!r}; choose one of {list(GRIDS)}.")


def time_grid(
    sde: LinearSDE, steps: int, t_start: float, t_end: float, grid: str = "uniform", rho: float = 7.0
) -> Array:
    """``steps + 1`` float32 times from ``t_start`` to ``t_end`` (either direction) on ``grid`` (module docstring).

    The end points are exactly ``t_start`` and ``t_end`` (diffrax's ``StepTo`` needs that). The grid is built from
    the larger to the smaller time and reversed for an increasing grid, so ``time_grid(a, b)`` is the reverse of
    ``time_grid(b, a)``. Concrete (computed at trace time) whenever the SDE has no traced leaves.
    """
    t_hi, t_lo = max(t_start, t_end), min(t_start, t_end)
    with jax.ensure_compile_time_eval():
        ts = _grid_times(steps, grid, rho, sde, jnp.float32(t_hi), jnp.float32(t_lo)).astype(jnp.float32)
        ts = ts.at[0].set(t_hi).at[-1].set(t_lo)
        return ts if t_start >= t_end else ts[::-1]


def check_ts(ts, T: float) -> np.ndarray:
    """A user grid as a float32 numpy array; ValueError unless it is 1-D with >= 2 finite, strictly decreasing times
    in [0, T]."""
    if isinstance(ts, jax.core.Tracer):
        raise ValueError("ts must be a concrete array (known before tracing), not a traced value.")
    arr = np.asarray(ts, np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"ts must be a 1-D array of at least 2 times (T ... eps); got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError("ts contains NaN or Inf; pass finite times in [0, T].")
    if arr.min() < 0 or arr.max() > T * (1 + 1e-6):
        raise ValueError(f"ts must lie in [0, T={T}]; got values in [{arr.min():.6g}, {arr.max():.6g}].")
    out = arr.astype(np.float32)
    if not np.all(np.diff(out) < 0):
        raise ValueError("ts must be strictly decreasing (from the noise end towards the data, in float32); "
                         "sort it in decreasing order and drop repeated times.")
    return out


def resolve(sde: LinearSDE, ts, steps: int, grid: str, rho: float, eps: float | None) -> Array:
    """The grid a fixed-step sampler runs on: ``ts`` if given, else ``time_grid(sde, steps, T, eps, grid, rho)``
    (``eps`` defaults to ``sde.eps``)."""
    if ts is not None:
        return jnp.asarray(ts, jnp.float32)
    return time_grid(sde, steps, sde.T, sde.eps if eps is None else eps, grid, rho)
