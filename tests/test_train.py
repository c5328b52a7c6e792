"""Training pieces in-process: TensorBoard event files, metrics on resume, checkpoints, config differences."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from sde_jax.losses import init_train_state, make_optimizer
from sde_jax.train import tensorboard as tb
from sde_jax.train.checkpoint import CheckpointError, Checkpointer, config_differences
from sde_jax.train.metrics import MetricsWriter, read_metrics


# ------------------------------------------------------------------------------------------ tfevents
def test_crc32c_matches_published_check_values():
    # RFC 3720 (iSCSI), appendix B.4, and the CRC catalogue's check value for "123456789".
    assert tb.crc32c(b"123456789") == 0xE3069283
    assert tb.crc32c(bytes(32)) == 0x8A9136AA
    assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tb.crc32c(bytes(range(32))) == 0x46DD794E


def _event_proto_classes():
    """Event / Summary / SessionLog message classes built from a descriptor with protobuf itself, to parse our
    hand-written bytes with an independent decoder."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="sde_jax_test_event.proto", package="sdejaxtest")

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("Value", [("tag", 1, F.TYPE_STRING, opt, None), ("simple_value", 2, F.TYPE_FLOAT, opt, None)])
    message("Summary", [("value", 1, F.TYPE_MESSAGE, rep, ".sdejaxtest.Value")])
    message("SessionLog", [("status", 1, F.TYPE_INT32, opt, None)])
    message("Event", [("wall_time", 1, F.TYPE_DOUBLE, opt, None), ("step", 2, F.TYPE_INT64, opt, None),
                      ("file_version", 3, F.TYPE_STRING, opt, None),
                      ("summary", 5, F.TYPE_MESSAGE, opt, ".sdejaxtest.Summary"),
                      ("session_log", 6, F.TYPE_MESSAGE, opt, ".sdejaxtest.SessionLog")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sdejaxtest.Event"))


def test_event_file_reads_back_with_our_reader_and_with_protobuf(tmp_path):
    w = tb.EventWriter(str(tmp_path), start_step=20)
    w.scalars(30, {"loss": 1.5, "grad_norm": 0.25})
    w.scalars(40, {"loss": float("nan")})
    w.close()
    events = tb.read_events(w.path)
    assert os.path.basename(w.path).startswith("events.out.tfevents.")
    assert events[0]["file_version"] == "brain.Event:2"
    assert events[1]["step"] == 20 and events[1]["session_start"]
    assert events[2]["step"] == 30 and events[2]["scalars"] == {"loss": 1.5, "grad_norm": 0.25}
    assert events[3]["step"] == 40 and np.isnan(events[3]["scalars"]["loss"])

    Event = _event_proto_classes()
    parsed = [Event.FromString(r) for r in tb.read_records(w.path)]
    assert parsed[0].file_version == "brain.Event:2" and parsed[0].wall_time > 1e9
    assert parsed[1].step == 20 and parsed[1].session_log.status == tb.SESSION_START
    assert parsed[2].step == 30
    assert {v.tag: v.simple_value for v in parsed[2].summary.value} == {"loss": 1.5, "grad_norm": 0.25}

    try:  # TensorBoard's own reader, only where it happens to be installed (never a requirement)
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    except ImportError:
        pass
    else:
        assert list(RawEventFileLoader(w.path).Load()) == tb.read_records(w.path)


def test_event_records_reject_corruption_and_ignore_a_cut_tail(tmp_path):
    path = str(tmp_path / "events.out.tfevents.x")
    good = tb.encode_record(tb.encode_event(1.0, 1, scalars={"a": 1.0}))
    with open(path, "wb") as f:
        f.write(good + good[: len(good) // 2])  # a writer killed mid-record
    assert len(tb.read_records(path)) == 1
    bad = bytearray(good)
    bad[-6] ^= 0xFF  # flip a data byte: the data CRC no longer matches
    with open(path, "wb") as f:
        f.write(bytes(bad))
    with pytest.raises(ValueError, match="corrupt record data"):
        tb.read_records(path)
    length = struct.pack("<Q", 5)
    assert tb.masked_crc32c(length) == (((tb.crc32c(length) >> 15) | (tb.crc32c(length) << 17))
                                        + 0xA282EAD8) & 0xFFFFFFFF


def test_negative_and_large_steps_round_trip():
    for step in (0, 1, 127, 128, 2**40, -1):
        assert tb.decode_event(tb.encode_event(0.5, step))["step"] == step


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
    assert len(files) == 2
    resumed = [e for f in files for e in tb.read_events(str(tmp_path / "tensorboard" / f)) if e.get("session_start")]
    assert [e["step"] for e in resumed] == [20]


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
