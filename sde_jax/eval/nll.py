"""Negative log-likelihood and bits/dim of a whole data set, in fixed-shape padded batches.

Both functions take the per-batch function ``batch_fn(x, key) -> (logp, info)`` as an argument, e.g.
``functools.partial(sj.log_likelihood, score, sde)``, :func:`sde_jax.elbo` the same way, or a data-parallel one
(``functools.partial(sde_jax.train.parallel.map_batches, fn)``): this module never needs to know. Reduce after the
solve: each device's adaptive solve takes its own number of steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.eval.batching import padded_batches
from sde_jax.likelihood import bits_per_dim, check_positive_int, dequantize

Array = jax.Array
BatchFn = Callable[[Array, Array], "tuple[Array, dict]"]

__all__ = ["EvalResult", "evaluate_nll", "evaluate_bpd"]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Summary of a data-set evaluation. ``values`` holds one number per example, in input order."""

    mean: float
    stderr: float
    values: np.ndarray
    n_examples: int
    nfe_mean: float
    seconds: float


def _summarise(values: list, nfes: list, start: float) -> EvalResult:
    """Mean and standard error sd / sqrt(N) (ddof 1) of the per-example values."""
    vals = np.concatenate(values) if values else np.zeros((0,))
    n = vals.shape[0]
    if n == 0:
        raise ValueError("the data set is empty: nothing to evaluate.")
    stderr = float(np.std(vals, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return EvalResult(float(np.mean(vals)), stderr, vals, n, float(np.mean(nfes)), time.perf_counter() - start)


def _progress(iterable, total: int | None, desc: str, progress: bool):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


def _num_batches(data: Any, batch_size: int) -> int | None:
    return -(-data.shape[0] // batch_size) if hasattr(data, "shape") else None


def _mean_nfe(info: dict) -> float:
    return float(np.mean(np.asarray(info.get("nfe", np.nan))))


def evaluate_nll(batch_fn: BatchFn, data: Any, key: Array, *, batch_size: int = 64, progress: bool = True,
                 desc: str = "NLL") -> EvalResult:
    """Mean negative log-likelihood (nats per example) of a continuous data set, with its standard error.

    ``batch_fn(x, key) -> (logp, info)`` evaluates one batch of shape (batch_size, *S), e.g.
    ``functools.partial(sj.log_likelihood, score, sde, divergence="exact")`` (it must be pure in x and key;
    ``info["nfe"]`` is averaged if present). Every batch has the same shape, so a compiled ``batch_fn`` compiles
    once: the last partial batch is padded and its padding masked out, never dropped. ``data`` is an array
    (N, *S) or an iterable of arrays (n_i, *S). Batch i uses ``fold_in(key, i)``.

    Returns :class:`EvalResult` with ``values`` = -log p(x) per example (N,), its mean and standard error.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    start, values, nfes = time.perf_counter(), [], []
    batches = _progress(padded_batches(data, batch_size), _num_batches(data, batch_size), desc, progress)
    for i, (x, n) in enumerate(batches):
        logp, info = batch_fn(jnp.asarray(x, jnp.float32), jax.random.fold_in(key, i))
        values.append(-np.asarray(logp)[:n])  # host sync every batch
        nfes.append(_mean_nfe(info))
    return _summarise(values, nfes, start)


def evaluate_bpd(batch_fn: BatchFn, data: Any, key: Array, *, num_bins: int = 256,
                 data_range: Sequence[float] = (-1.0, 1.0), n_dequant: int = 1, batch_size: int = 64,
                 progress: bool = True, desc: str = "bpd") -> EvalResult:
    """Mean bits/dim of an integer data set in {0, ..., K-1}, with its standard error over examples.

    Each example is dequantized ``n_dequant`` times (:func:`sde_jax.dequantize`), each draw is evaluated by
    ``batch_fn(x, key) -> (logp, info)`` on the model's scale ``data_range``, converted with
    :func:`sde_jax.bits_per_dim`, and the draws are averaged per example: an estimate of the dequantized bound
    E_u[-log2 p(k + u)] / D >= -log2 P(k) / D. Padding and keys as in :func:`evaluate_nll`.

    Returns :class:`EvalResult` with ``values`` = bpd per example (N,).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    n_dequant = check_positive_int(n_dequant, "n_dequant")
    start, values, nfes = time.perf_counter(), [], []
    batches = _progress(padded_batches(data, batch_size), _num_batches(data, batch_size), desc, progress)
    for i, (k, n) in enumerate(batches):
        k_deq, k_fn = jax.random.split(jax.random.fold_in(key, i))
        xs = dequantize(k_deq, k, num_bins=num_bins, data_range=data_range, n_dequant=n_dequant)
        bpd = []
        for j in range(n_dequant):
            logp, info = batch_fn(xs[j], jax.random.fold_in(k_fn, j))
            bpd.append(np.asarray(bits_per_dim(logp, k.shape[1:], num_bins=num_bins, data_range=data_range))[:n])
            nfes.append(_mean_nfe(info))
        values.append(np.mean(bpd, axis=0))
    return _summarise(values, nfes, start)
