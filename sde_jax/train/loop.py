"""The training loop: config -> (model, SDE, loss, optimiser) -> steps, metrics, checkpoints, resume.

Determinism: the batch of step k is ``batch_fn(k, rows)`` and its noise key is fold_in(train_key, k) (k = the
number of steps done before it), so a run resumed from the checkpoint at step k logs exactly the losses of an
uninterrupted run. SIGTERM/SIGINT save
a checkpoint at the current step before exiting; a non-finite loss stops the run naming the step (or the
step is skipped, ``train.skip_nonfinite``), and a broken state is never checkpointed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from sde_jax.config import loss_from_config, model_from_config, optimizer_from_config, sde_from_config
from sde_jax.sde import SDE
from sde_jax.train import parallel
from sde_jax.train.checkpoint import CheckpointError, Checkpointer, config_differences, load_config, save_config
from sde_jax.train.metrics import MetricsWriter
from sde_jax.train.step import TrainState, init_params, init_train_state, make_train_step
from sde_jax.vdm import schedule_of, trained_score

Array = jax.Array
BatchFn = Callable[[int, slice], np.ndarray]
SYNC_EVERY = 25  # host sync at least this often (simulated CPU devices deadlock past ~50 queued steps)


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the last good checkpoint."""


class WorkdirError(RuntimeError):
    """The workdir cannot be created or written."""


class Prefetcher:
    """``batch_fn(step, rows)`` for the next steps computed in a background thread and placed on the devices
    while the current step runs (a queue of ``depth`` batches), so host-side data work overlaps compute."""

    def __init__(self, batch_fn: BatchFn, rows: slice, start: int, stop: int, depth: int = 2):
        import concurrent.futures

        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._fn, self._rows, self._stop = batch_fn, rows, stop
        self._queue = [self._submit(s) for s in range(start, min(start + depth, stop))]
        self._next = start + len(self._queue)

    def _submit(self, step: int):
        return self._pool.submit(lambda: parallel.shard(jax.tree.map(np.asarray, self._fn(step, self._rows))))

    def get(self):
        """The next step's sharded batch (exceptions of ``batch_fn`` surface here)."""
        batch = self._queue.pop(0).result()
        if self._next < self._stop:
            self._queue.append(self._submit(self._next))
            self._next += 1
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass
class TrainResult:
    """What ``train`` returns: the final state, the network, SDE and config it was trained with, and timings.

    ``sde`` is the SDE of the EMA parameters: the configured one, or for a learned schedule the trained (EMA)
    schedule; ``init_sde`` is the configured (initial) one."""

    state: TrainState
    model: Any
    sde: SDE
    config: ml_collections.ConfigDict
    steps_run: int
    seconds: float
    interrupted: bool = False
    init_sde: SDE | None = None

    def __post_init__(self):
        if self.init_sde is None:
            self.init_sde = self.sde

    def score_fn(self, y: Array | None = None, ema: bool = True):
        """The trained score s(x, t) in the parameterisation it was trained with (``config.loss``), from the EMA
        parameters (``ema``) or the raw ones; ``y`` labels for a class-conditional model (None: its null label).
        With a learned schedule the model's ``sde`` is the one trained with those parameters."""
        params = self.state.ema_params if ema else self.state.params
        return trained_score(self.model.apply, params, self.init_sde, self.config.loss.parameterization, y)


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def prepare_workdir(workdir: str) -> str:
    """Create ``workdir`` and check that files can be written in it; WorkdirError (one line) otherwise."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise WorkdirError(f"cannot write to workdir {workdir} ({e.strerror or e}); "
                           "pass a --workdir in a directory you can write to.") from None
    return workdir


def _validate_train_config(tc: Any) -> None:
    bad = [f"train.{k}={tc[k]}" for k in ("log_every", "checkpoint_every", "max_to_keep") if tc[k] < 1]
    if tc.steps < 0 or bad:
        raise ValueError(f"invalid {', '.join(bad + ([f'train.steps={tc.steps}'] if tc.steps < 0 else []))}: "
                         "train.steps must be >= 0 and train.log_every, checkpoint_every, max_to_keep >= 1.")


def _model_config_changes(workdir: str, config: Any) -> list[str]:
    """Differences from the workdir's saved config outside train/sample/eval (which may change on resume)."""
    try:
        diffs = config_differences(load_config(workdir), config.to_dict())
    except (OSError, ValueError):
        return []
    return [d for d in diffs if not d.startswith(("train.", "sample.", "eval."))]


def _restore(ckpt: Checkpointer, target: TrainState, workdir: str, config: Any,
             lead: bool) -> tuple[TrainState, dict] | None:
    """The latest checkpoint. On failure the error names the config keys that differ from the workdir's own; a
    successful restore under a changed config (e.g. another data set) is allowed with a warning."""
    try:
        restored = ckpt.restore(target)
    except CheckpointError as e:
        diffs = _model_config_changes(workdir, config)
        if diffs:
            raise CheckpointError(f"{e} This workdir was trained with a different config: "
                                  f"{'; '.join(diffs[:4])}.") from None
        raise
    diffs = _model_config_changes(workdir, config) if restored is not None else []
    if diffs and lead:
        print(f"warning: resuming {workdir} with a config that differs from its own: {'; '.join(diffs[:4])}",
              file=sys.stderr, flush=True)
    return restored


def _nonfinite_message(step: int, metrics: dict, ckpt: Checkpointer) -> str:
    ckpt.wait()
    last = ckpt.latest_step()
    where = (f"the last good checkpoint is step {last} ({ckpt.directory}/{last})" if last is not None
             else "no checkpoint was written yet")
    return (f"non-finite loss/gradient at step {step} (loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}); training stopped and {where}. "
            "Lower train.lr, check the data, or set train.skip_nonfinite=True to skip such steps.")


class _Logger:
    """Checks fetched step metrics for NaN/Inf and logs every ``log_every``-th with its steps/s and examples/s."""

    def __init__(self, writer: MetricsWriter, bar: Any, ckpt: Checkpointer, tc: Any, start: int, lead: bool):
        self.writer, self.bar, self.ckpt, self.tc, self.lead = writer, bar, ckpt, tc, lead
        self.t_last, self.step_last = time.time(), start

    def drain(self, pending: list[tuple[int, dict]], step: int) -> None:
        """Fetch the metrics of the ``pending`` steps (one host sync) and log them; NonFiniteLossError on the
        first non-finite step unless ``train.skip_nonfinite``."""
        fetched = [(s, parallel.unreplicate(m)) for s, m in pending]
        pending.clear()
        for s, m in fetched:
            if not bool(m["finite"]):
                if not self.tc.skip_nonfinite:
                    raise NonFiniteLossError(_nonfinite_message(s, m, self.ckpt))
                if self.lead:
                    print(f"warning: step {s} skipped (non-finite loss/gradient)", file=sys.stderr)
            if s % self.tc.log_every == 0 or s == self.tc.steps:
                now = time.time()
                rate = (s - self.step_last) / max(now - self.t_last, 1e-9)
                self.t_last, self.step_last = now, s
                self.writer.write(s, {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
                                      "steps_per_sec": rate, "examples_per_sec": rate * self.tc.batch_size})
                self.bar.set_postfix(loss=f"{float(m['loss']):.4f}")
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def _keyed_by_step(train_step: Callable) -> Callable:
    """``step(state, batch, key, *frozen)`` that trains with fold_in(key, state.step): the noise key of step k is a
    pure function of k (and survives a restore with the state), computed on the device, not dispatched per step."""

    def step(state: TrainState, batch: Array, key: Array, *frozen: Any):
        return train_step(state, batch, jax.random.fold_in(key, state.step), *frozen)

    return step


def train(config: ml_collections.ConfigDict, workdir: str, batch_fn: BatchFn, example: np.ndarray,
          progress: bool = True, on_checkpoint: Callable[[int, TrainState], None] | None = None, *,
          loss_fn: Callable[..., tuple[Array, dict]] | None = None, frozen: Any = None,
          initial_params: Any = None) -> TrainResult:
    """Train per ``config`` in ``workdir``, resuming from its latest checkpoint.

    ``batch_fn(step, rows)`` returns rows ``rows`` of the global batch of that step (a pure function of step;
    each process asks only for its own rows): an array, or ``{"x": images, "y": labels}`` for class-conditional
    training; batches are prefetched in a background thread. ``example`` is one batch used to initialise the
    network. ``on_checkpoint(step, state)`` runs on the lead process after each checkpoint (sample grids).
    Checkpoints go to ``<workdir>/checkpoints/<step>/``, metrics to ``metrics.jsonl`` and ``tensorboard/``.
    Raises NonFiniteLossError (naming the step) on NaN/Inf unless ``train.skip_nonfinite``.

    Distillation and other losses that ``config.loss`` cannot name:

    * ``loss_fn(params, x0, keys[, y], *, frozen, step) -> (loss, aux)`` replaces the config's loss
      (``sde_jax.train.step.make_train_step`` with ``context=True``): ``keys`` one key per example, ``step`` the
      steps already taken (traced int32), ``frozen`` the pytree passed here;
    * ``frozen``: a pytree that does not train (a teacher's parameters), placed on the devices once and passed to
      every step as an argument, never closed over (it would become an XLA constant of the compiled step);
    * ``initial_params``: the network's parameters at step 0 instead of a random init (a student initialised from
      its teacher), with the shapes of ``config.model``'s parameters (ValueError otherwise); unused on resume.
    """
    if frozen is not None and loss_fn is None:
        raise ValueError("frozen is passed to a custom loss_fn only; give loss_fn too.")
    with _StopFlag() as stop:  # from the start: a SIGTERM during compilation still saves after the first step
        return _train(config, workdir, batch_fn, example, progress, stop, on_checkpoint, loss_fn, frozen,
                      initial_params)


def _check_initial_params(params: Any, target: Any) -> None:
    """ValueError unless ``params`` has the tree structure and leaf shapes of the model's parameters ``target``."""
    if jax.tree.structure(params) != jax.tree.structure(target):
        raise ValueError("initial_params do not have the tree structure of config.model's parameters; they belong "
                         "to another network.")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(target)):
        if np.shape(a) != b.shape:
            raise ValueError(f"initial_params{jax.tree_util.keystr(path)} has shape {np.shape(a)}, config.model's "
                             f"parameters {b.shape}.")


def _train(config: ml_collections.ConfigDict, workdir: str, batch_fn: BatchFn, example: np.ndarray,
           progress: bool, stop: _StopFlag, on_checkpoint: Callable | None, custom_loss: Callable | None = None,
           frozen: Any = None, initial_params: Any = None) -> TrainResult:
    tc = config.train
    _validate_train_config(tc)
    parallel.check_batch_size(tc.batch_size)
    lead = parallel.is_lead_process()
    prepare_workdir(workdir)

    sde = sde_from_config(config.sde)
    model = model_from_config(config.model, sde)
    loss_fn = custom_loss or loss_from_config(config.loss, model.apply, sde, config.model)
    optimizer = optimizer_from_config(tc)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    if initial_params is not None:
        _check_initial_params(initial_params, jax.eval_shape(lambda: init_params(model, init_key, example, sde)))
        initial_params = jax.tree.map(jnp.asarray, initial_params)

    def init_state() -> TrainState:
        params = init_params(model, init_key, example, sde) if initial_params is None else initial_params
        return init_train_state(params, optimizer)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.max_to_keep)
    try:
        restored = _restore(ckpt, jax.eval_shape(init_state), workdir, config, lead)
    except BaseException:
        ckpt.close()
        raise
    start = 0
    if restored is None:  # given parameters are not closed over by a compiled function (they would be constants)
        state = jax.jit(init_state)() if initial_params is None else init_state()
    else:
        state, meta = restored
        start = int(meta["step"])
        train_key = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
        if lead and progress:
            print(f"resuming from {workdir}/checkpoints/{start}", flush=True)
    if lead:
        save_config(workdir, config)
    writer = MetricsWriter(workdir, resume_step=start, enabled=lead)

    context = custom_loss is not None
    step_fn = parallel.pmap_step(_keyed_by_step(make_train_step(
        loss_fn, optimizer, tc.ema_decay, axis_name=parallel.AXIS, skip_nonfinite=tc.skip_nonfinite,
        context=context)), n_replicated=int(context))
    extra = (parallel.replicate(frozen),) if context else ()
    rows = parallel.process_slice(tc.batch_size)
    rstate = parallel.replicate(state)
    key_data = np.asarray(jax.random.key_data(train_key)).tolist()

    def save(step: int) -> None:
        ckpt.save(step, parallel.unreplicate(rstate), {"rng": key_data, "data_position": step})

    log = _Logger(writer, tqdm(total=tc.steps, initial=start, disable=not (progress and lead), dynamic_ncols=True),
                  ckpt, tc, start, lead)
    multi = jax.process_count() > 1
    pending: list[tuple[int, dict]] = []
    t0, step, stopping = time.time(), start, False
    batches = Prefetcher(batch_fn, rows, start, tc.steps)
    try:
        while step < tc.steps:
            batch = batches.get()
            rstate, metrics = step_fn(rstate, batch, train_key, *extra)
            step += 1
            pending.append((step, metrics))
            ckpt_now = step % tc.checkpoint_every == 0 or step == tc.steps
            # sync points depend on the step only, so all processes of a multi-host run meet at the same ones
            sync = step % tc.log_every == 0 or ckpt_now or len(pending) >= SYNC_EVERY
            if sync or (stop.signum and not multi):
                log.drain(pending, step)
                stopping = parallel.any_process(stop.signum is not None) if multi else stop.signum is not None
            if ckpt_now or stopping:
                save(step)
            if ckpt_now and on_checkpoint is not None and lead and not stopping:
                on_checkpoint(step, parallel.unreplicate(rstate))
            if stopping:
                why = f"received {signal.Signals(stop.signum).name}" if stop.signum else "another process was signalled"
                print(f"\n{why}: checkpoint saved at step {step}, exiting.", file=sys.stderr, flush=True)
                break
        if restored is None and tc.steps == 0:
            save(0)
    finally:
        batches.close()
        log.close()
        ckpt.close()
    state = parallel.unreplicate(rstate)
    return TrainResult(state, model, schedule_of(state.ema_params, sde), config, step - start, time.time() - t0,
                       stopping, init_sde=sde)
