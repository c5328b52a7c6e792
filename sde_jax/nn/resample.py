"""2x up/down-sampling of NHWC images: FIR (StyleGAN2) and naive (nearest / box).

Source: Karras et al., "Analyzing and Improving the Image Quality of StyleGAN" (CVPR 2020), ported in
score_sde's ``models/up_or_down_sampling.py`` (Song et al., ICLR 2021). Everything is written as one primitive,
``upfirdn2d`` (pad, insert zeros, FIR filter, decimate), on top of ``lax.conv_general_dilated``.

Boundary convention (as in the reference): pixels outside the image are zero. A FIR resampling of a constant image
is therefore constant except in a one-pixel border, where the filter taps that fall outside the image are lost
(kernel [1, 3, 3, 1], constant c: the 2x-downsampled border is 7c/8 with corners 49c/64; the 2x-upsampled border is
3c/4 with corners 9c/16).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

DEFAULT_FIR_KERNEL: tuple[int, ...] = (1, 3, 3, 1)


def fir_kernel_2d(kernel: Sequence[float]) -> np.ndarray:
    """The normalised 2-D FIR kernel: outer(k, k) / sum for a 1-D ``k`` (separable), k / sum for a square 2-D ``k``."""
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"the FIR kernel must be 1-D or square 2-D; got shape {k.shape}.")
    return k / k.sum()


def upfirdn2d(x: Array, kernel: np.ndarray, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Array:
    """Upsample by zero insertion, zero-pad, convolve with a 2-D FIR kernel, decimate (StyleGAN2's ``upfirdn_2d``).

    For each image and channel of x (N, H, W, C), on both spatial axes:
      1. insert ``up - 1`` zeros after every pixel (length H -> H up);
      2. pad ``pad[0]`` zeros before and ``pad[1]`` after (negative values crop);
      3. convolve (true convolution, kernel flipped) with ``kernel``, keeping only "valid" outputs;
      4. keep every ``down``-th pixel, starting at the first.
    Output length: (H up + pad[0] + pad[1] - K) // down + 1.
    """
    c = x.shape[-1]
    p0, p1 = pad
    # lax.pad's interior padding inserts zeros *between* pixels; the trailing up - 1 zeros go into the high pad.
    cfg = [(0, 0, 0), (p0, p1 + up - 1, up - 1), (p0, p1 + up - 1, up - 1), (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    k = jnp.asarray(np.ascontiguousarray(kernel[::-1, ::-1]), x.dtype)
    w = jnp.tile(k[:, :, None, None], (1, 1, 1, c))  # depthwise HWIO: (K, K, 1, C)
    return lax.conv_general_dilated(
        x, w, window_strides=(down, down), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
    )


def upsample_2d(x: Array, kernel: Sequence[float] = DEFAULT_FIR_KERNEL, factor: int = 2) -> Array:
    """FIR upsampling (N, H, W, C) -> (N, fH, fW, C); the kernel is scaled by f^2 so constants stay constant."""
    k = fir_kernel_2d(kernel) * factor**2
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Array, kernel: Sequence[float] = DEFAULT_FIR_KERNEL, factor: int = 2) -> Array:
    """FIR (anti-aliased) downsampling (N, H, W, C) -> (N, H/f, W/f, C)."""
    k = fir_kernel_2d(kernel)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling: every pixel repeated in a factor x factor block."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Box downsampling: the mean of every factor x factor block."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample_conv_2d(x: Array, w: Array, kernel: Sequence[float] = DEFAULT_FIR_KERNEL, factor: int = 2) -> Array:
    """Fused FIR upsampling and convolution with w (kh, kw, C_in, C_out) (StyleGAN2's ``upsample_conv_2d``).

    A stride-``factor`` transposed convolution (zero insertion, full padding, then correlation with w), followed by
    the FIR filter; the padding is chosen so the output is (N, fH, fW, C_out).
    """
    kw = w.shape[0]
    k = fir_kernel_2d(kernel) * factor**2
    p = (k.shape[0] - factor) - (kw - 1)
    x = lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(1, 1), padding=[(kw - 1, kw - 1)] * 2,
        lhs_dilation=(factor, factor), dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return upfirdn2d(x, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: Array, w: Array, kernel: Sequence[float] = DEFAULT_FIR_KERNEL, factor: int = 2) -> Array:
    """Fused FIR filtering and stride-``factor`` convolution with w (kh, kw, C_in, C_out) -> (N, H/f, W/f, C_out)."""
    kw = w.shape[0]
    k = fir_kernel_2d(kernel)
    p = (k.shape[0] - factor) + (kw - 1)
    x = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
    return lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=(factor, factor), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
