"""Image preprocessing and image files: uint8 <-> model scale, dequantisation, padding, flips, PNG grids.

Integer data x in {0, ..., K-1} (K = 256 for 8-bit images) map to the model's scale by
``to_model_scale``: [0, 1] as (x + u) / K and [-1, 1] as 2 (x + u) / K - 1, with u = 1/2 (the bin centre;
deterministic) or u ~ U[0, 1) (uniform dequantisation, for likelihood training and evaluation; Theis et al.
2016). The matching log-Jacobian lives in ``sde_jax.likelihood.bits_per_dim``. These two functions are the
project's one pixel scaler: the input pipeline, the experiments and the benchmarks all go through them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SCALES = ("zero_one", "minus_one_one")


def to_model_scale(x: Array | np.ndarray, scale: str = "minus_one_one", num_bins: int = 256,
                   noise: Array | np.ndarray | None = None) -> Array | np.ndarray:
    """(x + u) / K on [0, 1] or 2 (x + u) / K - 1 on [-1, 1], float32; u = ``noise`` (e.g. U[0, 1)) or 1/2.

    A numpy ``x`` (with numpy or no ``noise``) stays on the host as a numpy array (the input pipeline's case);
    anything else, traced values included, gives a jax array."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}.")
    xp = np if isinstance(x, np.ndarray) else jnp
    u = np.float32(0.5) if noise is None else noise
    y = (xp.asarray(x, xp.float32) + u) / np.float32(num_bins)
    return y if scale == "zero_one" else 2.0 * y - 1.0


def from_model_scale(y: Array, scale: str = "minus_one_one", num_bins: int = 256) -> np.ndarray:
    """Inverse of ``to_model_scale`` rounded to the nearest bin, clipped to {0, ..., K-1}, as uint8 if K <= 256."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}.")
    z = np.asarray(y, np.float64)
    z = z if scale == "zero_one" else (z + 1.0) / 2.0
    out = np.clip(np.floor(z * num_bins), 0, num_bins - 1)
    return out.astype(np.uint8 if num_bins <= 256 else np.int32)


def pad_to(images: np.ndarray, size: int, value: int = 0) -> np.ndarray:
    """Pad NHWC images symmetrically to ``size`` x ``size`` (e.g. MNIST 28 -> 32)."""
    h, w = images.shape[1:3]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}.")
    ph, pw = size - h, size - w
    return np.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=value)


def save_grid(images: np.ndarray, rows: int, path: str) -> None:
    """uint8 (N, H, W, C) images -> a PNG grid of ``rows`` rows (filled row by row) with a 2-pixel white border."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"save_grid needs uint8 NHWC images; got {images.dtype} of shape {images.shape}.")
    if rows < 1:
        raise ValueError(f"rows must be >= 1; got {rows}.")
    n, h, w, c = images.shape
    cols = -(-n // rows)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = images[i]
    plt.imsave(path, grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=255)


def class_grid_labels(num_classes: int | None, per_class: int) -> np.ndarray:
    """Labels of a sample grid with one row per class: 0 (x per_class), 1 (x per_class), ...; an unconditional
    model (``num_classes`` None) gets one row of label 0."""
    return np.repeat(np.arange(num_classes or 1, dtype=np.int32), per_class)


def random_flip(key: Array, images: Array) -> Array:
    """Flip each NHWC image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)
