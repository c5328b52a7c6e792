"""Data parallelism (sde_jax/train/parallel.py): layout helpers, map_batches on 4 simulated devices, and two
processes on 127.0.0.1 (gloo) reproducing one process on the same global batch and stopping together."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax.train import parallel
from tests.test_train_support import (ROOT, assert_close, checkpoint_steps, env, finish, free_port, kill, losses,
                                      reference_run, scratch, start, start_reference_in_background, toy_command,
                                      wait_for_step)


# ------------------------------------------------------------------------------------- settings, layout
@pytest.mark.parametrize("args, env_vars, message", [
    ((None, 2, 0), {}, "needs the coordinator address as host:port"),
    (("localhost", 2, 0), {}, "needs the coordinator address as host:port"),
    (("127.0.0.1:1234", 2, 2), {}, r"process id 2 is outside \[0, 2\)"),
    ((None, None, None), {"SDE_JAX_NUM_PROCESSES": "two"}, "SDE_JAX_NUM_PROCESSES='two' is not an integer"),
    ((None, 0, None), {}, "number of processes must be >= 1"),
])
def test_distributed_settings_reject_bad_input(monkeypatch, args, env_vars, message):
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        parallel.distributed_settings(*args)


def test_distributed_settings_from_environment(monkeypatch):
    monkeypatch.setenv("SDE_JAX_COORDINATOR", "10.0.0.1:8476")
    monkeypatch.setenv("SDE_JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("SDE_JAX_PROCESS_ID", "3")
    assert parallel.distributed_settings() == ("10.0.0.1:8476", 4, 3)
    assert parallel.distributed_settings(process_id=1) == ("10.0.0.1:8476", 4, 1)  # a flag beats the env
    monkeypatch.delenv("SDE_JAX_NUM_PROCESSES")
    monkeypatch.delenv("SDE_JAX_PROCESS_ID")
    assert parallel.initialize_distributed() is False  # one process: nothing to initialise


def test_batch_size_must_divide_over_devices(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    assert parallel.check_batch_size(64) == 16
    with pytest.raises(ValueError, match=r"batch size 30 is not divisible by the 4 devices; use a multiple of 4 "
                                         r"\(e.g. 28 or 32\)"):
        parallel.check_batch_size(30)


def test_replicate_shard_unreplicate_round_trip():
    n = jax.local_device_count()
    tree = {"a": np.arange(6.0).reshape(2, 3), "s": np.int32(7)}
    rep = parallel.replicate(tree)
    assert rep["a"].shape == (n, 2, 3)
    back = parallel.unreplicate(rep)
    np.testing.assert_array_equal(back["a"], tree["a"])
    assert int(back["s"]) == 7
    assert parallel.shard(np.zeros((4 * n, 2)))[...].shape == (n, 4, 2)


def test_map_batches_equals_the_direct_call_on_one_device():
    x = jnp.linspace(-1.0, 1.0, 14).reshape(7, 2)
    fn = lambda v, scale: ({"y": jnp.sin(v) * scale}, {"nfe": jnp.asarray(3)})  # noqa: E731
    out, info = parallel.map_batches(fn, x, 2.0)
    np.testing.assert_allclose(out["y"], 2.0 * jnp.sin(x), rtol=1e-6)
    assert info["nfe"].shape == (jax.local_device_count(),)
    with pytest.raises(ValueError, match="one common, non-empty leading axis"):
        parallel.map_batches(fn, jnp.zeros((0, 2)), 1.0)


# --------------------------------------------------------------------------------- 4 simulated devices
FOUR_DEVICE_CHECKS = r"""
import functools, jax, jax.numpy as jnp, numpy as np
from sde_jax.train import parallel
assert jax.local_device_count() == 4, jax.devices()

# map_batches: padding (10 rows over 4 devices), per-example outputs unpadded, per-device outputs stacked
x = jnp.arange(20.0).reshape(10, 2)
y, nfe = parallel.map_batches(lambda v, c: (v * v + c, jnp.float32(5)), x, 1.0)
np.testing.assert_allclose(y, x * x + 1.0)
assert nfe.shape == (4,), nfe.shape
# a typed key gets the device index folded in: independent noise per device, same key on one device
noise = parallel.map_batches(lambda v, k: v[:, 0] * 0 + jax.random.normal(k, ()), jnp.zeros((8, 1)),
                             jax.random.key(0))
per_device = np.asarray(noise).reshape(4, 2)
assert np.all(per_device[:, 0] == per_device[:, 1]) and len(set(per_device[:, 0].tolist())) == 4, per_device
np.testing.assert_allclose(per_device[1, 0], jax.random.normal(jax.random.fold_in(jax.random.key(0), 1), ()))

# the train step: our replicas have pmap's own layout, so a second step reuses the first trace and compile;
# the 4-device loss matches the per-example losses of the whole global batch on the host
from sde_jax import VPSDE
from sde_jax.losses import dsm_loss
from sde_jax.train.step import example_keys, init_train_state, make_optimizer, make_train_step
from sde_jax.nn import ScoreMLP
model, sde, opt = ScoreMLP(width=16, depth=1, embed_dim=8), VPSDE(), make_optimizer(1e-2, warmup=0)
loss = dsm_loss(model.apply, sde)
batch = np.asarray(jax.random.normal(jax.random.key(1), (16, 2)))
state = init_train_state(model.init(jax.random.key(2), batch[:1], jnp.ones((1,))), opt)
traces = []
def counted(*a):
    traces.append(1)
    return make_train_step(loss, opt, 0.9, axis_name=parallel.AXIS)(*a)
step = parallel.pmap_step(counted)
rs = parallel.replicate(state)
rs, m0 = step(rs, parallel.shard(batch), jax.random.key(10))
rs, m1 = step(rs, parallel.shard(batch), jax.random.key(11))
assert len(traces) == 1, f"pmap step traced {len(traces)} times"
whole, _ = jax.jit(loss)(state.params, batch, example_keys(jax.random.key(10), 16))
np.testing.assert_allclose(float(parallel.unreplicate(m0)["loss"]), float(whole), rtol=1e-6)

# the likelihood seam: evaluate_nll(batch_fn(x, key) -> (logp, info)) with batch_fn = partial(map_batches, fn)
import sde_jax as sj
score = sj.score_fn(model.apply, state.params, sde)
fn = functools.partial(sj.log_likelihood, score, sde, divergence="exact")
data = np.asarray(jax.random.normal(jax.random.key(3), (10, 2)))
direct = sj.evaluate_nll(fn, data, jax.random.key(4), batch_size=10, progress=False)
spread = sj.evaluate_nll(functools.partial(parallel.map_batches, fn), data, jax.random.key(4), batch_size=10,
                         progress=False)
np.testing.assert_allclose(spread.values, direct.values, rtol=1e-5)
print("ok")
"""


def test_four_devices_map_batches_train_step_and_likelihood_seam():
    proc = subprocess.Popen([sys.executable, "-c", FOUR_DEVICE_CHECKS], cwd=ROOT, env=env(4),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, out, err = finish(proc)
    assert rc == 0 and out.strip() == "ok", err[-3000:]


# ------------------------------------------------------------------------------------- two processes
def test_two_processes_reproduce_one_process_and_stop_together():
    """2 processes x 2 devices (gloo on 127.0.0.1) on the same global batch log the losses of 1 device: so
    under multi-process pmap ``axis_index`` is the global, process-major device index, and each process's
    ``process_slice`` rows meet the right example keys. Coordinator and process count come from the
    environment, the process id from the flag. SIGTERM to process 1 only: both agree to stop at the same step,
    save one checkpoint there and exit 0."""
    start_reference_in_background()
    workdir = scratch("two_processes")
    hosts = {"SDE_JAX_COORDINATOR": f"127.0.0.1:{free_port()}", "SDE_JAX_NUM_PROCESSES": "2"}
    procs = [start(toy_command(workdir, f"--process_id={i}"), devices=2, **hosts) for i in range(2)]
    wait_for_step(procs[0], workdir, 30)
    kill(procs[1], signal.SIGTERM)
    results = [finish(p) for p in procs]
    for i, (rc, _, err) in enumerate(results):
        assert rc == 0, f"process {i} exited {rc}:\n{err[-3000:]}"
    saved = [re.findall(r"checkpoint saved at step (\d+), exiting", err) for _, _, err in results]
    assert "another process was signalled" in results[0][2] and "received SIGTERM" in results[1][2]
    assert saved[0] == saved[1] and len(saved[0]) == 1, saved
    step = int(saved[0][0])
    assert checkpoint_steps(workdir)[-1] == step
    got = losses(workdir)  # written by process 0 only: a step twice would fail here
    assert sorted(got) == list(range(10, step // 10 * 10 + 1, 10)) and len(got) >= 3
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1  # one event file: process 0's
    assert_close(got, losses(reference_run()), rtol=1e-5)
