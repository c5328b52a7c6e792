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


def restore(workdir: str, ema: bool = True) -> Restored:
    """The latest checkpoint of ``workdir`` with the config it was trained with (EMA parameters by default)."""
    cfg = ml_collections.ConfigDict(load_config(workdir))
    model = model_from_config(cfg.model)
    sde = sde_from_config(cfg.sde)
    example = jnp.zeros((1, *cfg.data.shape), jnp.float32)
    optimizer = optimizer_from_config(cfg.train)
    target = jax.eval_shape(lambda: init_train_state(init_params(model, jax.random.key(0), example, sde),
                                                     optimizer))  # shapes only: nothing is computed
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        restored = ckpt.restore(target)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
    state, meta = restored
    params = state.ema_params if ema else state.params
    return Restored(model, params, schedule_of(params, sde), cfg, int(meta["step"]), init_sde=sde)


def restore_for_eval(workdir: str, ema: bool = True) -> tuple[Any, SDE, ml_collections.ConfigDict]:
    """(score_fn, sde, config) of the latest checkpoint in ``workdir``; ``config.train_steps`` is its step."""
    r = restore(workdir, ema)
    r.config.train_steps = r.step
    return r.score_fn(), r.sde, r.config
