"""Orbax checkpoints: one directory per step, ``<workdir>/checkpoints/<step>/``.

A checkpoint holds the whole ``TrainState`` (step, params, optimizer state, EMA params) and a JSON record with
the step, the raw PRNG key data (``jax.random.key_data``) and the data-iterator position, so a resumed run
continues exactly. The state is saved as host (numpy) arrays and restored onto whatever device layout the
current run has (it is replicated afterwards), so a checkpoint written on N devices resumes on M.

Saves are asynchronous (``orbax`` finishes them in a background thread; a directory only gets its final name
``<step>`` once complete, so a process killed mid-save leaves the previous checkpoint as the latest). A state
with NaN/Inf in it is never written. Under multi-host every process calls ``save`` and ``restore`` (orbax
synchronises them; the primary process writes).

:func:`restore` reads a workdir back for evaluation: the config it was trained with (``config.json``) rebuilds
the network and SDE, and the latest checkpoint fills in the parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sde_jax.config import model_from_config, optimizer_from_config, sde_from_config
from sde_jax.sde import SDE
from sde_jax.train.step import init_params, init_train_state
from sde_jax.vdm import schedule_of, trained_score

Array = jax.Array

CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or written; the message says which and what to do."""


def all_finite(tree: Any) -> bool:
    """True if no floating-point leaf of ``tree`` holds NaN or Inf."""
    return all(bool(np.all(np.isfinite(x))) for x in map(np.asarray, jax.tree.leaves(tree))
               if np.issubdtype(x.dtype, np.inexact))


class Checkpointer:
    """A thin, safe wrapper over ``ocp.CheckpointManager`` (async saves, ``max_to_keep``)."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1; got {max_to_keep}.")
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                               create=True)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise CheckpointError(f"cannot use checkpoint directory {self.directory}: {e.strerror or e}; "
                                  "pass a --workdir you can write to.") from None

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Start saving ``state`` (copied to host memory) and ``meta`` at ``step``; False if that step already
        exists. Raises CheckpointError for a state that is not finite, before anything is written."""
        host_state = jax.device_get(state)
        if not all_finite(host_state):
            raise CheckpointError(f"refusing to checkpoint step {step}: the state contains NaN or Inf.")
        if step in self._manager.all_steps():
            return False
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(dict(meta, step=int(step)))))

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """(state, meta) with the structure, shapes and dtypes of ``target`` (arrays or ``jax.eval_shape``
        structs) as host arrays; None if there is no checkpoint. CheckpointError if it cannot be read into
        ``target`` (corrupt, or written for another model)."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), target)  # arrays or ShapeDtypeStructs
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            state, meta = out["state"], dict(out["meta"])
            _check_like(state, abstract)
        except Exception as e:  # orbax raises many types for corrupt / mismatched trees
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise CheckpointError(
                f"cannot restore checkpoint {self.directory}/{step} ({type(e).__name__}: {first}). It is corrupt "
                "or was written by a different model/config; use a new --workdir or delete that checkpoint."
            ) from None
        return jax.tree.map(np.asarray, state), meta

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_like(state: Any, target: Any) -> None:
    """ValueError unless ``state`` has the tree structure, shapes and dtypes of ``target``."""
    if jax.tree.structure(state) != jax.tree.structure(target):
        raise ValueError("the checkpoint's tree structure differs from the model's")
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(target), jax.tree.leaves(state),
                          jax.tree.leaves(target)):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            raise ValueError(f"{jax.tree_util.keystr(path[0])} is {np.shape(a)} {np.asarray(a).dtype} in the "
                             f"checkpoint but {np.shape(b)} {np.asarray(b).dtype} in the model")


def save_config(workdir: str, config: Any) -> None:
    """Write the run's config as JSON beside the checkpoints (``<workdir>/config.json``), atomically."""
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(config.to_dict() if hasattr(config, "to_dict") else dict(config), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def load_config(workdir: str) -> dict:
    """The config a workdir was trained with (``<workdir>/config.json``)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a training workdir (no config.json).")
    with open(path) as f:
        return json.load(f)


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<unset>"), new.get(k, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{k}.")
        elif (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


# ------------------------------------------------------------------------------------ restore for eval
@dataclasses.dataclass
class Restored:
    """A trained model from a workdir: network, parameters (EMA by default), SDE, config and step.

    ``sde`` is the SDE of these parameters: for a learned schedule the trained one (``params`` are then
    ``{"net", "schedule"}``), and ``init_sde`` the configured initial one."""

    model: Any
    params: Any
    sde: SDE
    config: ml_collections.ConfigDict
    step: int
    init_sde: SDE | None = None

    def __post_init__(self):
        if self.init_sde is None:
            self.init_sde = self.sde

    def score_fn(self, y: Array | None = None):
        """The model's score (with its trained schedule, if it learned one); ``y`` labels for a class-conditional
        model (None: its null label)."""
        return trained_score(self.model.apply, self.params, self.init_sde, self.config.loss.parameterization, y)


WEIGHTS_FILE = "ema_weights.msgpack"


def restore(workdir: str, ema: bool = True) -> Restored:
    """The latest checkpoint of ``workdir`` with the config it was trained with (EMA parameters by default).

    A folder written by :func:`export_weights` (``config.json`` and one ``ema_weights.msgpack``, no
    ``checkpoints/``) restores the same way: that is how committed pretrained weights are read."""
    cfg = ml_collections.ConfigDict(load_config(workdir))
    sde = sde_from_config(cfg.sde)
    model = model_from_config(cfg.model, sde)
    example = jnp.zeros((1, *cfg.data.shape), jnp.float32)
    optimizer = optimizer_from_config(cfg.train)
    target = jax.eval_shape(lambda: init_train_state(init_params(model, jax.random.key(0), example, sde),
                                                     optimizer))  # shapes only: nothing is computed
    weights = os.path.join(workdir, WEIGHTS_FILE)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")) and os.path.exists(weights):
        if not ema:
            raise ValueError(f"{workdir} holds exported EMA weights only; restore it with ema=True.")
        params, step = _read_weights(weights, target.ema_params)
        return Restored(model, params, schedule_of(params, sde), cfg, step, init_sde=sde)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        restored = ckpt.restore(target)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints (nor an exported {WEIGHTS_FILE}); train "
                                "first.")
    state, meta = restored
    params = state.ema_params if ema else state.params
    return Restored(model, params, schedule_of(params, sde), cfg, int(meta["step"]), init_sde=sde)


def _read_weights(path: str, target: Any) -> tuple[Any, int]:
    """The parameters stored by :func:`export_weights`, put into the structure of ``target`` (the config's model)
    leaf by leaf, after checking that the leaves' paths and shapes are the model's."""
    import flax.serialization

    with open(path, "rb") as f:
        blob = flax.serialization.msgpack_restore(f.read())
    paths, leaves = _paths(target)
    stored = [blob["leaves"][str(i)] for i in range(len(blob["leaves"]))]
    if [blob["paths"].get(str(i)) for i in range(len(blob["paths"]))] != paths:
        raise ValueError(f"{path} does not hold the parameters of this config's model: {len(stored)} stored arrays "
                         f"against {len(leaves)} in the model, or their names differ.")
    for name, a, b in zip(paths, stored, leaves):
        if np.shape(a) != b.shape:
            raise ValueError(f"{path}: {name} has shape {np.shape(a)} where the config's model has {b.shape}.")
    return jax.tree.unflatten(jax.tree.structure(target), [jnp.asarray(a) for a in stored]), int(blob["step"])


def _paths(tree: Any) -> tuple[list[str], list[Any]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(k) for k, _ in flat], [v for _, v in flat]


def export_weights(workdir: str, out_dir: str, command: str = "") -> str:
    """Write the EMA parameters of ``workdir``'s latest checkpoint as one file ``out_dir/ema_weights.msgpack``
    beside its ``config.json`` (and ``command.txt``, the command that trained it): a few MB to commit, restored by
    :func:`restore` (``restore(out_dir)``). Refuses non-finite weights. Returns the file's path."""
    import flax.serialization

    r = restore(workdir)
    if not all_finite(r.params):
        raise CheckpointError(f"the EMA parameters of {workdir} are not finite; not exporting them.")
    os.makedirs(out_dir, exist_ok=True)
    save_config(out_dir, r.config)
    path = os.path.join(out_dir, WEIGHTS_FILE)
    paths, leaves = _paths(r.params)  # any pytree (a learned schedule's equinox module too), leaf by leaf
    blob = flax.serialization.msgpack_serialize({
        "paths": {str(i): p for i, p in enumerate(paths)},
        "leaves": {str(i): np.asarray(v) for i, v in enumerate(leaves)}, "step": r.step})
    with open(path + ".tmp", "wb") as f:
        f.write(blob)
    os.replace(path + ".tmp", path)
    if command:
        with open(os.path.join(out_dir, "command.txt"), "w") as f:
            f.write(command.strip() + "\n")
    return path


def restore_for_eval(workdir: str, ema: bool = True) -> tuple[Any, SDE, ml_collections.ConfigDict]:
    """(score_fn, sde, config) of the latest checkpoint in ``workdir``; ``config.train_steps`` is its step."""
    r = restore(workdir, ema)
    r.config.train_steps = r.step
    return r.score_fn(), r.sde, r.config
