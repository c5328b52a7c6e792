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

from sde_jax.classifier import classifier_loss, noisy_classifier_loss
from sde_jax.losses import TrainState, discrete_loss, dsm_loss, init_train_state, make_optimizer, make_train_step
from sde_jax.nn import build_model
from sde_jax.score import score_fn as make_score_fn
from sde_jax.sde import SDE, get_sde
from sde_jax.train import parallel
from sde_jax.train.checkpoint import (CheckpointError, Checkpointer, config_differences, load_config,
                                      save_config)
from sde_jax.train.metrics import MetricsWriter

Array = jax.Array
BatchFn = Callable[[int, slice], np.ndarray]
SYNC_EVERY = 25  # host sync at least this often (simulated CPU devices deadlock past ~50 queued steps)


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the last good checkpoint."""


class WorkdirError(RuntimeError):
    """The workdir cannot be created or written."""


_SDE_KEYS = {"vp": ("beta_min", "beta_max", "N"), "subvp": ("beta_min", "beta_max", "N"),
             "ve": ("sigma_min", "sigma_max", "N")}


def sde_from_config(cfg: Any) -> SDE:
    """``config.sde`` -> SDE: name plus that SDE's own keys (others, e.g. VE's sigmas for VP, are ignored)."""
    cfg = dict(cfg)
    name = cfg.get("name")
    if name not in _SDE_KEYS:
        raise ValueError(f"unknown sde.name {name!r}; choose one of {sorted(_SDE_KEYS)}.")
    return get_sde(name, **{k: cfg[k] for k in _SDE_KEYS[name] if k in cfg})


def model_from_config(cfg: Any):
    cfg = dict(cfg)
    return build_model(cfg.pop("name"), **cfg)


def loss_from_config(cfg: Any, model_apply, sde: SDE, model_cfg: Any = None):
    """``config.loss``: kind "dsm" (continuous, with weighting / importance_sampling) or "discrete" (score models),
    "classifier" or "noisy_classifier" (p_t(y | x_t) for classifier guidance, ``sde_jax.classifier``); with
    ``loss.p_uncond`` > 0 labels are dropped to the model's null label (``model.num_classes``), and a model with
    ``dropout`` > 0 trains with dropout on. ``loss.eps`` (optional) is the smallest training time (default
    ``sde.eps``; score_sde trains from 1e-5)."""
    model_cfg = dict(model_cfg or {})
    p_uncond = float(cfg.get("p_uncond", 0.0))
    null_label = model_cfg.get("num_classes")
    if p_uncond > 0 and null_label is None:
        raise ValueError(f"loss.p_uncond={p_uncond} needs a class-conditional model: set model.num_classes.")
    common = dict(p_uncond=p_uncond, null_label=null_label, dropout=float(model_cfg.get("dropout", 0.0)) > 0)
    kind = cfg.kind
    if kind == "classifier":
        return classifier_loss(model_apply)
    if kind == "noisy_classifier":
        return noisy_classifier_loss(model_apply, sde, cfg.get("eps"))
    if kind == "dsm":
        return dsm_loss(model_apply, sde, cfg.parameterization, weighting=cfg.weighting,
                        importance_sampling=cfg.importance_sampling, reduce_mean=cfg.reduce_mean,
                        eps=cfg.get("eps"), **common)
    if kind == "discrete":
        return discrete_loss(model_apply, sde, cfg.parameterization, reduce_mean=cfg.reduce_mean, **common)
    raise ValueError(f"unknown loss.kind {kind!r}; choose 'dsm', 'discrete', 'classifier' or 'noisy_classifier'.")


def optimizer_from_config(tc: Any):
    """``config.train``: lr, warmup, grad_clip and (optional) decay_steps of :func:`make_optimizer`."""
    return make_optimizer(tc.lr, warmup=tc.warmup, grad_clip=tc.grad_clip, decay_steps=int(tc.get("decay_steps", 0)))


def init_params(model: Any, key: Array, example: Array) -> Any:
    """Network parameters from one example batch (an array, or a dict whose "x" is the images)."""
    x = example["x"] if isinstance(example, dict) else example
    x = jnp.asarray(x, jnp.float32)
    return model.init(key, x, jnp.ones((x.shape[0],)))


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
    state: TrainState
    model: Any
    sde: SDE
    steps_run: int
    seconds: float
    interrupted: bool = False

    def score_fn(self, ema: bool = True, parameterization: str = "eps"):
        params = self.state.ema_params if ema else self.state.params
        return make_score_fn(self.model.apply, params, self.sde, parameterization)


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
    """``step(state, batch, key)`` that trains with fold_in(key, state.step): the noise key of step k is a pure
    function of k (and survives a restore with the state), computed on the device, not dispatched per step."""

    def step(state: TrainState, batch: Array, key: Array):
        return train_step(state, batch, jax.random.fold_in(key, state.step))

    return step


def train(config: ml_collections.ConfigDict, workdir: str, batch_fn: BatchFn, example: np.ndarray,
          progress: bool = True, on_checkpoint: Callable[[int, TrainState], None] | None = None) -> TrainResult:
    """Train per ``config`` in ``workdir``, resuming from its latest checkpoint.

    ``batch_fn(step, rows)`` returns rows ``rows`` of the global batch of that step (a pure function of step;
    each process asks only for its own rows): an array, or ``{"x": images, "y": labels}`` for class-conditional
    training; batches are prefetched in a background thread. ``example`` is one batch used to initialise the
    network. ``on_checkpoint(step, state)`` runs on the lead process after each checkpoint (sample grids).
    Checkpoints go to ``<workdir>/checkpoints/<step>/``, metrics to ``metrics.jsonl`` and ``tensorboard/``.
    Raises NonFiniteLossError (naming the step) on NaN/Inf unless ``train.skip_nonfinite``.
    """
    with _StopFlag() as stop:  # from the start: a SIGTERM during compilation still saves after the first step
        return _train(config, workdir, batch_fn, example, progress, stop, on_checkpoint)


def _train(config: ml_collections.ConfigDict, workdir: str, batch_fn: BatchFn, example: np.ndarray,
           progress: bool, stop: _StopFlag, on_checkpoint: Callable | None) -> TrainResult:
    tc = config.train
    _validate_train_config(tc)
    parallel.check_batch_size(tc.batch_size)
    lead = parallel.is_lead_process()
    prepare_workdir(workdir)

    model = model_from_config(config.model)
    sde = sde_from_config(config.sde)
    loss_fn = loss_from_config(config.loss, model.apply, sde, config.model)
    optimizer = optimizer_from_config(tc)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))

    def init_state() -> TrainState:
        return init_train_state(init_params(model, init_key, example), optimizer)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.max_to_keep)
    try:
        restored = _restore(ckpt, jax.eval_shape(init_state), workdir, config, lead)
    except BaseException:
        ckpt.close()
        raise
    start = 0
    if restored is None:
        state = jax.jit(init_state)()
    else:
        state, meta = restored
        start = int(meta["step"])
        train_key = jax.random.wrap_key_data(np.asarray(meta["rng"], np.uint32))
        if lead and progress:
            print(f"resuming from {workdir}/checkpoints/{start}", flush=True)
    if lead:
        save_config(workdir, config)
    writer = MetricsWriter(workdir, resume_step=start, enabled=lead)

    step_fn = parallel.pmap_step(_keyed_by_step(make_train_step(
        loss_fn, optimizer, tc.ema_decay, axis_name=parallel.AXIS, skip_nonfinite=tc.skip_nonfinite)))
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
            rstate, metrics = step_fn(rstate, batch, train_key)
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
    return TrainResult(state, model, sde, step - start, time.time() - t0, stopping)


@dataclasses.dataclass
class Restored:
    """A trained model from a workdir: network, parameters (EMA by default), SDE, config and step."""

    model: Any
    params: Any
    sde: SDE
    config: ml_collections.ConfigDict
    step: int

    def score_fn(self, y: Array | None = None):
        """The model's score; ``y`` labels for a class-conditional model (None: its null label)."""
        return make_score_fn(self.model.apply, self.params, self.sde, self.config.loss.parameterization, y)


def restore(workdir: str, ema: bool = True) -> Restored:
    """The latest checkpoint of ``workdir`` with the config it was trained with (EMA parameters by default)."""
    cfg = ml_collections.ConfigDict(load_config(workdir))
    model = model_from_config(cfg.model)
    sde = sde_from_config(cfg.sde)
    example = jnp.zeros((1, *cfg.data.shape), jnp.float32)
    optimizer = optimizer_from_config(cfg.train)
    target = jax.eval_shape(lambda: init_train_state(init_params(model, jax.random.key(0), example),
                                                     optimizer))  # shapes only: nothing is computed
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    restored = ckpt.restore(target)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
    state, meta = restored
    return Restored(model, state.ema_params if ema else state.params, sde, cfg, int(meta["step"]))


def restore_for_eval(workdir: str, ema: bool = True):
    """(score_fn, sde, config) of the latest checkpoint in ``workdir``; ``config.train_steps`` is its step."""
    r = restore(workdir, ema)
    r.config.train_steps = r.step
    return r.score_fn(), r.sde, r.config
