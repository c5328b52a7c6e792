"""Fixed-shape batches for evaluation: pad the last partial batch, run, drop the padding.

A jitted function compiles once per input shape; a data set whose size is not a multiple of the batch size would
compile a second program for its last batch. Padding that batch to the full size by repeating its last real row
(finite, realistic input: an adaptive solve cannot fail or slow down on it) and dropping the padded outputs keeps
one shape and one compilation for the whole set.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np

from sde_jax.likelihood import check_positive_int

__all__ = ["pad_rows", "padded_batches", "map_padded"]


def pad_rows(a: Any, size: int) -> Any:
    """``a`` (n, ...) with its last row repeated to ``size`` rows: [a_0, ..., a_{n-1}, a_{n-1}, ..., a_{n-1}].

    numpy in, numpy out; a jax array gives a jax array. ValueError if ``a`` is empty or has more than ``size`` rows.
    """
    n = a.shape[0]
    if n == 0 or n > size:
        raise ValueError(f"cannot pad {n} rows to {size}: need 1 <= rows <= size.")
    if n == size:
        return a
    xp = np if isinstance(a, np.ndarray) else jax.numpy
    return xp.concatenate([a, xp.repeat(a[-1:], size - n, axis=0)], axis=0)


def padded_batches(data: Any, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Batches (batch_size, *S) of ``data`` and the number of real rows in each; the last one padded (:func:`pad_rows`).

    ``data`` is an array (N, *S) or an iterable of arrays (n_i, *S) (each split into batches of its own; empty
    pieces are skipped).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    if hasattr(data, "shape"):
        chunks: Iterable = (data[i:i + batch_size] for i in range(0, data.shape[0], batch_size))
    else:
        chunks = itertools.chain.from_iterable(
            (b[i:i + batch_size] for i in range(0, len(b), batch_size)) for b in map(np.asarray, data))
    for chunk in map(np.asarray, chunks):
        if chunk.shape[0]:
            yield pad_rows(chunk, batch_size), chunk.shape[0]


def map_padded(fn: Callable[..., Any], arrays: Sequence[Any], batch_size: int) -> np.ndarray:
    """``fn(*batches)`` over equal-length ``arrays`` (N, ...) in padded batches of ``batch_size``, its per-example
    outputs (batch_size, ...) concatenated on the host to (N, ...) with the padding removed."""
    batch_size = check_positive_int(batch_size, "batch_size")
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"arrays must share one non-zero length; got {[len(a) for a in arrays]}.")
    out = []
    for i in range(0, n, batch_size):
        chunk = [np.asarray(a[i:i + batch_size]) for a in arrays]
        rows = chunk[0].shape[0]
        out.append(np.asarray(fn(*(pad_rows(c, batch_size) for c in chunk)))[:rows])
    return np.concatenate(out)
