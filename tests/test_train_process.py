"""Training in real ``python -m experiments.toy2d`` processes: 4 devices log the losses of 1, SIGTERM saves and
exits 0, kill -9 then the same command resumes exactly, a checkpoint resumes on another device layout, and a
NaN stops the run naming the step with the last good checkpoint intact."""

from __future__ import annotations

import re
import shutil
import signal
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_train_support import (STEPS, assert_close, checkpoint_steps, finish, kill, losses, reference_run,
                                      run, scratch, start, start_reference_in_background, toy_command,
                                      wait_for_step)


@pytest.fixture(scope="module")
def four_devices_sigterm():
    """A 4-device run of the reference command, sent SIGTERM once step >= 60 is logged (the 1-device reference
    compiles meanwhile). Returns (workdir, exit code, stderr)."""
    start_reference_in_background()
    workdir = scratch("four_devices")
    proc = start(toy_command(workdir), devices=4)
    wait_for_step(proc, workdir, 60)
    kill(proc, signal.SIGTERM)
    rc, _, err = finish(proc)
    return workdir, rc, err


def _saved_step(stderr: str) -> int:
    found = re.findall(r"received SIGTERM: checkpoint saved at step (\d+), exiting", stderr)
    assert found, f"no SIGTERM message in stderr:\n{stderr[-2000:]}"
    return int(found[-1])


def test_four_devices_log_the_losses_of_one_device(four_devices_sigterm):
    workdir, _, _ = four_devices_sigterm
    got, ref = losses(workdir), losses(reference_run())
    assert len(got) >= 6
    assert_close(got, ref, rtol=1e-5)


def test_sigterm_saves_the_current_step_and_exits_cleanly(four_devices_sigterm):
    workdir, rc, err = four_devices_sigterm
    assert rc == 0, err[-2000:]
    assert "Traceback" not in err
    step = _saved_step(err)
    assert 60 <= step < STEPS
    assert checkpoint_steps(workdir)[-1] == step
    assert max(losses(workdir)) <= step


def test_checkpoint_from_four_devices_resumes_on_one(four_devices_sigterm):
    """Restore onto the current layout: the 4-device SIGTERM checkpoint continues on 1 device with the
    reference's losses (to float32 reduction-order noise)."""
    src, _, err = four_devices_sigterm
    step = _saved_step(err)
    workdir = scratch("four_to_one")
    shutil.copytree(src, workdir)
    until = (step // 10 + 4) * 10
    rc, out, err = run(toy_command(workdir, steps=until))
    assert rc == 0, err[-2000:]
    assert f"resuming from {workdir}/checkpoints/{step}" in out
    got = losses(workdir)
    assert sorted(got) == list(range(10, until + 1, 10))
    assert_close(got, losses(reference_run()), rtol=1e-5, steps=[s for s in got if s > step])


def test_kill_9_then_the_same_command_resumes_exactly():
    ref = losses(reference_run())
    workdir = scratch("killed")
    cmd = toy_command(workdir)
    proc = start(cmd)
    wait_for_step(proc, workdir, 120)
    kill(proc, signal.SIGKILL)
    proc.communicate()
    saved = checkpoint_steps(workdir)
    assert saved and saved[-1] < STEPS, saved
    rc, out, err = run(cmd)
    assert rc == 0, err[-2000:]
    assert f"resuming from {workdir}/checkpoints/{saved[-1]}" in out
    got = losses(workdir)  # asserts no step is logged twice
    assert sorted(got) == sorted(ref)
    assert_close(got, ref, rtol=1e-6)
    assert checkpoint_steps(workdir)[-1] == STEPS


# A real toy2d process whose batch of one step is NaN: injected by the test, not by a product flag.
NAN_RUN = """
import sys, numpy as np
from experiments import common, toy2d
clean = toy2d.make_batch_fn
def poisoned(config):
    fn = clean(config)
    return lambda step, rows: fn(step, rows) * (np.nan if step == {bad} else 1.0)
toy2d.make_batch_fn = poisoned
common.define_flags(toy2d.get_config())
common.run(toy2d.main)
"""


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_checkpoint():
    from sde_jax.train import restore_for_eval

    workdir = scratch("nan")
    bad = 76  # batch_fn(76) feeds the update logged as step 77
    cmd = [sys.executable, "-c", NAN_RUN.format(bad=bad)] + toy_command(workdir)[3:]
    rc, _, err = run(cmd)
    assert rc == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("error: non-finite loss/gradient at step 77 (loss=nan")
    assert "the last good checkpoint is step 50" in lines[0] and "train.skip_nonfinite=True" in lines[0]
    assert checkpoint_steps(workdir) == [50]
    assert max(losses(workdir)) == 70
    assert_close(losses(workdir), losses(reference_run()), rtol=1e-6)
    score, _, cfg = restore_for_eval(workdir)
    assert cfg.train_steps == 50
    assert np.all(np.isfinite(score(jnp.ones((3, 2)), jnp.full((3,), 0.5))))
