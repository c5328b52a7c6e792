"""Data parallelism: every multi-device detail of sde_jax lives in this file.

``jax.pmap`` over the local devices with axis name ``"batch"``; gradients and metrics are ``pmean``-ed inside
the step (see ``sde_jax.train.step.make_train_step``). A global batch of size B is split into (n_devices, B / n_devices)
and each example keeps its global index for its noise key, so N devices reproduce one device.

Multi-host: :func:`initialize_distributed` (before any other JAX call), then each process feeds only its own
rows :func:`process_slice` of the global batch to its local devices. Under multi-process ``pmap``,
``lax.axis_index("batch")`` is the *global* device index, process-major (process p's local device i has index
p * local_device_count + i, checked by ``tests/test_parallel.py`` with two processes), which is exactly the
order of :func:`process_slice`, so example offsets are global and P processes reproduce one.

Evaluation of large batches (sampling, likelihoods) uses :func:`map_batches`: pad, split over the local
devices, ``pmap`` a pure per-batch function without collectives, unpad.

To move to ``jit`` + ``NamedSharding`` (pods), replace this file; nothing else names ``pmap``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sde_jax.eval.batching import pad_rows

Array = jax.Array
AXIS = "batch"

ENV_COORDINATOR = "SDE_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SDE_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SDE_JAX_PROCESS_ID"


# ---------------------------------------------------------------------------------------------- multi-host
def _env_int(name: str) -> int | None:
    """An integer environment variable, None if unset or empty; ValueError naming it if not an integer."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer.") from None


def distributed_settings(coordinator: str | None = None, num_processes: int | None = None,
                         process_id: int | None = None) -> tuple[str | None, int, int]:
    """(coordinator, num_processes, process_id) from the arguments, else the environment
    (SDE_JAX_COORDINATOR, SDE_JAX_NUM_PROCESSES, SDE_JAX_PROCESS_ID), validated; defaults: one process."""
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    num_processes = 1 if num_processes is None else num_processes
    process_id = 0 if process_id is None else process_id
    if num_processes < 1:
        raise ValueError(f"the number of processes must be >= 1; got {num_processes}.")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is outside [0, {num_processes}); "
                         f"give each of the {num_processes} processes a distinct id 0..{num_processes - 1}.")
    if num_processes > 1:
        host, _, port = (coordinator or "").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"multi-host training needs the coordinator address as host:port "
                             f"(--coordinator or {ENV_COORDINATOR}); got {coordinator!r}.")
    return coordinator, num_processes, process_id


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """``jax.distributed.initialize`` from arguments or the environment (see :func:`distributed_settings`).

    Must run before any other JAX computation. A no-op (returns False) for a single process. CPU collectives
    across processes go through gloo (it only affects the CPU backend, so it is set unconditionally).
    """
    coordinator, num_processes, process_id = distributed_settings(coordinator, num_processes, process_id)
    if num_processes == 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True


def is_lead_process() -> bool:
    """True on the process that writes metrics, configs and figures (process 0)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True if ``flag`` is True on any process. Under multi-host this is a collective: every process must call it
    at the same point of the program (e.g. to agree on stopping when only some processes got SIGTERM)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def check_batch_size(global_batch: int) -> int:
    """Per-device batch B / n_devices (all devices of all processes); ValueError unless it divides evenly."""
    n = jax.device_count()
    if global_batch < 1:
        raise ValueError(f"batch size must be >= 1; got {global_batch}.")
    if global_batch % n:
        lower, upper = max(n, global_batch - global_batch % n), global_batch + n - global_batch % n
        raise ValueError(f"batch size {global_batch} is not divisible by the {n} devices; "
                         f"use a multiple of {n} (e.g. {lower} or {upper}).")
    return global_batch // n


def process_slice(global_batch: int) -> slice:
    """The rows of the global batch this process feeds to its local devices (process-major, like the device
    order of ``pmap``)."""
    per_process = global_batch // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


# ----------------------------------------------------------------------------------------- device layout
def _local_sharding() -> NamedSharding:
    """Leading axis split over this process's devices: the layout ``pmap`` produces, so feeding its own
    outputs back (or our replicas) never recompiles."""
    return _sharding_over(tuple(jax.local_devices()))


@functools.lru_cache(maxsize=8)
def _sharding_over(devices: tuple) -> NamedSharding:
    return NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
    """Copy a pytree onto every local device (new leading axis of size ``jax.local_device_count()``)."""
    n, sharding = jax.local_device_count(), _local_sharding()
    return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
                        tree)


def unreplicate(tree: Any) -> Any:
    """The first local device's copy of a replicated pytree, as host (numpy) arrays; a copy on another process's
    devices is never touched, so this works under multi-host."""

    def first(x):
        if isinstance(x, jax.Array):
            x = x.addressable_data(0)  # this process's first shard, shape (1, ...)
        return np.asarray(x)[0]

    return jax.tree.map(first, tree)


def shard(batch: Any) -> Any:
    """(B_local, ...) -> (n_local_devices, B_local / n, ...) for every leaf, placed on the local devices."""
    n, sharding = jax.local_device_count(), _local_sharding()

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"a batch of {x.shape[0]} rows does not split over {n} local devices.")
        return jax.device_put(x.reshape((n, x.shape[0] // n) + x.shape[1:]), sharding)

    return jax.tree.map(split, batch)


def pmap_step(step_fn: Callable, n_replicated: int = 0) -> Callable:
    """pmap a ``step(state, batch, key)`` written with ``axis_name="batch"``; the key is shared by all devices.

    Returns ``fn(replicated_state, sharded_batch, key)``; the state buffers are donated. With ``n_replicated`` = k
    the step takes k more arguments, each a pytree already :func:`replicate`-d (placed once, not per call, and not
    donated): ``fn(replicated_state, sharded_batch, key, *replicated)``.
    """
    return jax.pmap(step_fn, axis_name=AXIS, in_axes=(0, 0, None) + (0,) * n_replicated, donate_argnums=(0,))


# ------------------------------------------------------------------------------------------- evaluation
def _is_prng_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


@functools.lru_cache(maxsize=16)
def _pmapped(fn: Callable, n_args: int, fold_keys: bool) -> Callable:
    """``pmap(fn)`` over (sharded x, broadcast args...); typed PRNG keys in args get the device index folded in."""

    def per_device(x, *args):
        if fold_keys:
            d = jax.lax.axis_index(AXIS)
            args = tuple(jax.random.fold_in(a, d) if _is_prng_key(a) else a for a in args)
        return fn(x, *args)

    return jax.pmap(per_device, axis_name=AXIS, in_axes=(0,) + (None,) * n_args)


def map_batches(fn: Callable[..., Any], x: Any, *args: Any, fold_keys: bool = True) -> Any:
    """``fn(x, *args)`` evaluated data-parallel over the local devices.

    ``x`` (an array or pytree of arrays sharing the leading batch axis B) is padded to a multiple of the local
    device count n by repeating its last row, split into n chunks of B' / n rows, and ``fn`` (pure, no
    collectives) runs on each chunk with the same ``args``. Outputs: a leaf whose leading axis has the chunk
    size is a per-example result, concatenated back to (B, ...) with the padding removed; any other leaf
    (e.g. a scalar ``info["nfe"]``) is per device, stacked to (n, ...).

    With ``fold_keys`` a typed PRNG key in ``args`` becomes fold_in(key, device_index) on each device, so
    devices draw independent noise. A deterministic ``fn`` (exact divergence, ODE sampling from given noise)
    therefore returns the same values on any number of devices -- up to the solver tolerance for an adaptive
    solve, whose step sizes are controlled over the examples each device sees; a random one returns values
    that depend on the device count unless it derives its noise per example. It fits the likelihood seam ``batch_fn(x, key)``:
    ``functools.partial(map_batches, fn)``. Under multi-host every process must call it together (SPMD).
    """
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("map_batches needs at least one array in x.")
    b = leaves[0].shape[0]
    if b == 0 or any(leaf.shape[:1] != (b,) for leaf in leaves):
        raise ValueError(f"x must be arrays with one common, non-empty leading axis; got "
                         f"{[leaf.shape for leaf in leaves]}.")
    n = jax.local_device_count()
    chunk = -(-b // n)

    def split(a):
        a = pad_rows(jnp.asarray(a), chunk * n)
        return a.reshape((n, chunk) + a.shape[1:])

    out = _pmapped(fn, len(args), fold_keys)(jax.tree.map(split, x), *args)

    def merge(y):
        if y.ndim >= 2 and y.shape[1] == chunk:
            return y.reshape((n * chunk,) + y.shape[2:])[:b]
        return y

    return jax.tree.map(merge, out)
