"""Training pieces in-process: TensorBoard event files, metrics on resume, checkpoints, config differences, the
parameterisation of a trained result's score."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from sde_jax.train.checkpoint import CheckpointError, Checkpointer, config_differences
from sde_jax.train.metrics import MetricsWriter, read_metrics
from sde_jax.train.step import init_train_state, make_optimizer


# ------------------------------------------------------------------------------------------ tfevents
def read_events(path: str) -> list:
    """The ``Event`` protos of a TensorBoard event file: TFRecords of uint64 length, uint32 crc, data, uint32 crc
    (the CRCs are not checked here)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            events.append(Event.FromString(f.read(length)))
            f.read(4)
    return events


def _scalars(event) -> dict:
    return {v.tag: v.simple_value for v in event.summary.value}


def test_event_files_hold_the_scalars_and_read_back_with_tensorboard(tmp_path):
    w = MetricsWriter(str(tmp_path), resume_step=20)
    w.write(30, {"loss": 1.5, "grad_norm": 0.25})
    w.write(40, {"loss": float("nan")})
    w.close()
    (name,) = os.listdir(tmp_path / "tensorboard")
    path = str(tmp_path / "tensorboard" / name)
    assert name.startswith("events.out.tfevents.")
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2" and events[0].wall_time > 1e9
    starts = [e.step for e in events if e.HasField("session_log")]
    assert starts == [20] and events[[e.HasField("session_log") for e in events].index(True)].session_log.status == 1
    logged = {}
    for e in events:
        if e.HasField("summary"):
            logged.setdefault(e.step, {}).update(_scalars(e))
    assert logged[30] == {"loss": 1.5, "grad_norm": 0.25}
    assert set(logged) == {30, 40} and np.isnan(logged[40]["loss"])

    try:  # TensorBoard's own reader, only where it happens to be installed (never a requirement)
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:
        pass
    else:
        assert [e.step for e in EventFileLoader(path).Load()] == [e.step for e in events]


# --------------------------------------------------------------------------------------------- metrics
def test_resume_drops_metrics_past_the_restored_step(tmp_path):
    w = MetricsWriter(str(tmp_path))
    for s in (10, 20, 30, 40):
        w.write(s, {"loss": s / 10})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "lo')  # cut by a kill
    w = MetricsWriter(str(tmp_path), resume_step=20)
    w.write(30, {"loss": 9.0})
    w.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path))] == [(10, 1.0), (20, 2.0), (30, 9.0)]
    files = sorted(os.listdir(tmp_path / "tensorboard"))
    assert len(files) == 2  # a new event file per writer, even within one second
    events = [e for f in files for e in read_events(str(tmp_path / "tensorboard" / f))]
    assert [e.step for e in events if e.HasField("session_log")] == [20]  # TensorBoard hides the first file's 30, 40
    assert sorted((e.step, _scalars(e)["loss"]) for e in events if e.HasField("summary")) == [
        (10, 1.0), (20, 2.0), (30, 3.0), (30, 9.0), (40, 4.0)]


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(str(tmp_path), enabled=False)
    w.write(1, {"loss": 1.0})
    w.close()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------ checkpoints
def _state(scale: float = 1.0, width: int = 3):
    params = {"w": np.full((width, 2), scale, np.float32), "b": np.zeros((2,), np.float32)}
    return init_train_state(params, make_optimizer(1e-3, warmup=10))


def test_checkpoint_round_trip_keeps_max_to_keep_and_refuses_nan(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    assert ckpt.restore(_state()) is None
    for step in (1, 2, 3):
        ckpt.save(step, _state(float(step)), {"rng": [0, step], "data_position": step})
    with pytest.raises(CheckpointError, match="refusing to checkpoint step 4: the state contains NaN"):
        ckpt.save(4, _state(float("nan")), {})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    state, meta = ckpt.restore(_state(0.0))
    ckpt.close()
    assert meta == {"rng": [0, 3], "data_position": 3, "step": 3}
    np.testing.assert_array_equal(state.params["w"], np.full((3, 2), 3.0, np.float32))
    assert int(state.step) == 0 and isinstance(state.params["w"], np.ndarray)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
    ckpt.save(5, _state(width=3), {"rng": [0, 1]})
    with pytest.raises(CheckpointError, match=r"cannot restore checkpoint .*/5 .*different model/config"):
        ckpt.restore(_state(width=4))
    ckpt.close()


def test_config_differences_name_each_changed_leaf():
    old = {"model": {"width": 32, "depth": 2}, "data": {"shape": [2]}, "seed": 0}
    new = {"model": {"width": 64, "depth": 2}, "data": {"shape": (2,)}, "seed": 0, "extra": 1}
    assert config_differences(old, new) == ["extra: '<unset>' -> 1", "model.width: 32 -> 64"]


def test_resume_config_changes_ignore_train_sample_and_eval(tmp_path):
    from ml_collections import ConfigDict

    from sde_jax.train.checkpoint import save_config
    from sde_jax.train.loop import _model_config_changes

    saved = ConfigDict({"data": {"name": "moons", "shape": (2,)}, "train": {"steps": 10}, "sample": {"n": 5}})
    save_config(str(tmp_path), saved)
    now = ConfigDict({"data": {"name": "rings", "shape": (2,)}, "train": {"steps": 99}, "sample": {"n": 0}})
    assert _model_config_changes(str(tmp_path), now) == ["data.name: 'moons' -> 'rings'"]
    assert _model_config_changes(str(tmp_path / "missing"), now) == []


# ------------------------------------------------------------------------------------- trained result
def test_result_score_reads_the_network_in_its_trained_parameterization(tmp_path):
    import jax.numpy as jnp
    from ml_collections import ConfigDict

    import sde_jax as sj
    from sde_jax.config import base_config
    from sde_jax.train import train

    c = base_config()
    c.data = ConfigDict({"shape": (2,)})
    c.model = ConfigDict({"name": "mlp", "width": 16, "depth": 1, "embed_dim": 8})
    c.loss.parameterization = "v"
    c.train.update(steps=3, batch_size=16, warmup=0, lr=1e-2, log_every=1, checkpoint_every=3)
    batch_fn = lambda step, rows: np.random.default_rng(step).normal(size=(16, 2)).astype(np.float32)[rows]
    result = train(c, str(tmp_path), batch_fn, batch_fn(0, slice(None)), progress=False)
    x, t = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2), jnp.full((4,), 0.5)
    got = np.asarray(result.score_fn()(x, t))
    read = lambda p: np.asarray(sj.score_fn(result.model.apply, result.state.ema_params, result.sde, p)(x, t))
    np.testing.assert_allclose(got, read("v"), rtol=1e-6)
    assert not np.allclose(got, read("eps"), rtol=1e-2)


# ------------------------------------------------------------------------------- custom loss, frozen pytree
def test_context_step_takes_frozen_as_an_argument_not_a_constant():
    """``make_train_step(context=True)``: the loss sees ``frozen`` and the step count; new frozen values of the same
    shapes reuse the compiled step (an argument, not an XLA constant of the program)."""
    import jax
    import jax.numpy as jnp

    from sde_jax.eval import count_compiles
    from sde_jax.train.step import make_train_step

    def loss(params, x0, keys, *, frozen, step):
        return jnp.sum((params["w"] - frozen["w"]) ** 2) + 1000.0 * step, {}

    opt = make_optimizer(1e-3, warmup=0)
    step = jax.jit(make_train_step(loss, opt, context=True))
    state = init_train_state({"w": np.zeros((3,), np.float32)}, opt)
    batch, key = np.zeros((4, 2), np.float32), jax.random.key(0)
    state1, m1 = step(state, batch, key, {"w": np.ones((3,), np.float32)})
    with count_compiles() as compiles:
        _, m2 = step(state1, batch, key, {"w": np.full((3,), 2.0, np.float32)})
    assert compiles == []
    assert float(m1["loss"]) == pytest.approx(3.0) and float(m2["loss"]) == pytest.approx(1000.0 + 12.0, rel=1e-3)
    with pytest.raises(TypeError, match="context=True"):
        step(state, batch, key)


def test_train_with_a_custom_loss_frozen_pytree_and_initial_params(tmp_path):
    """``train(loss_fn=, frozen=, initial_params=)``: training starts from the given parameters, the loss gets the
    frozen pytree and the number of steps taken; a resumed run gets them again; parameters of another network are
    a ValueError before any step."""
    import jax
    import jax.numpy as jnp
    from ml_collections import ConfigDict

    from sde_jax.config import base_config, model_from_config
    from sde_jax.train import train
    from sde_jax.train.metrics import read_metrics
    from sde_jax.train.step import init_params

    c = base_config()
    c.data = ConfigDict({"shape": (2,)})
    c.model = ConfigDict({"name": "mlp", "width": 8, "depth": 1, "embed_dim": 4})
    c.train.update(steps=3, batch_size=4, warmup=0, lr=1e-2, log_every=1, checkpoint_every=3)
    batch_fn = lambda step, rows: np.ones((4, 2), np.float32)[rows]
    example = batch_fn(0, slice(None))
    shapes = jax.eval_shape(lambda: init_params(model_from_config(c.model), jax.random.key(0), example))
    ones = jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes)
    target = jax.tree.map(lambda s: np.full(s.shape, 3.0, np.float32), shapes)
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))

    def loss(params, x0, keys, *, frozen, step):
        d = sum(jnp.sum((p - f) ** 2) for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(frozen)))
        return d / n + 1000.0 * step, {}

    result = train(c, str(tmp_path), batch_fn, example, progress=False, loss_fn=loss, frozen=target,
                   initial_params=ones)
    logged = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path))}
    assert logged[1] == pytest.approx(4.0)  # (1 - 3)^2: the initial params against the frozen target
    assert [int(logged[s] // 1000) for s in (1, 2, 3)] == [0, 1, 2]  # the loss saw the steps already taken
    assert logged[3] % 1000 < 4.0  # and moved towards the target
    c.train.steps = 5
    resumed = train(c, str(tmp_path), batch_fn, example, progress=False, loss_fn=loss, frozen=target,
                    initial_params=jax.tree.map(lambda a: a * 0, ones))  # ignored on resume
    assert resumed.steps_run == 2 and int(read_metrics(str(tmp_path))[-1]["loss"] // 1000) == 4
    assert int(result.state.step) == 3
    with pytest.raises(ValueError, match="initial_params"):
        train(c, str(tmp_path / "other"), batch_fn, example, progress=False, loss_fn=loss, frozen=target,
              initial_params={"w": np.ones((3,), np.float32)})
    with pytest.raises(ValueError, match="frozen is passed to a custom loss_fn only"):
        train(c, str(tmp_path / "other"), batch_fn, example, progress=False, frozen=target)
