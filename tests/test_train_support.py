"""Helpers shared by the process-level tests (test_train*, test_parallel, test_cli); no tests here.

Every run is a real ``python -m experiments.toy2d`` process on a tiny model. All of them share one persistent
XLA compilation cache (a temporary directory for this pytest session), so a program is compiled once per device
layout, not once per process.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRATCH = tempfile.mkdtemp(prefix="sde_jax_train_tests_")
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)

# A tiny score MLP; train-only (sample.n=0 skips sampling and the NLL evaluation).
TOY = ["--config.seed=0", "--config.model.width=32", "--config.model.depth=1", "--config.model.embed_dim=16",
       "--config.train.batch_size=64", "--config.train.log_every=10", "--config.train.checkpoint_every=50",
       "--config.sample.n=0"]
STEPS = 300


def scratch(name: str) -> str:
    """A fresh path (not yet created) in this session's scratch directory."""
    path = os.path.join(_SCRATCH, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def env(devices: int = 1, **extra: str) -> dict:
    """The environment of a child process: ``devices`` simulated CPU devices, the shared compilation cache."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SDE_JAX_", "XLA_FLAGS", "JAX_"))}
    e.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=os.path.join(_SCRATCH, "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    e.update(extra)
    return e


def toy_command(workdir: str, *args: str, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "experiments.toy2d", f"--workdir={workdir}", *TOY,
            f"--config.train.steps={steps}", *args]


def start(cmd: list[str], devices: int = 1, **extra: str) -> subprocess.Popen:
    """Start a child process in the repository root, capturing stdout and stderr as text."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env(devices, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a started child; kills it if it outlives ``timeout``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child timed out after {timeout}s; stderr tail:\n{err[-2000:]}") from None
    return proc.returncode, out, err


def run(cmd: list[str], devices: int = 1, timeout: float = 240, **extra: str) -> tuple[int, str, str]:
    return finish(start(cmd, devices, **extra), timeout)


def run_ok(cmd: list[str], devices: int = 1, **extra: str) -> str:
    """Run to completion and assert exit 0; returns stderr."""
    rc, _, err = run(cmd, devices, **extra)
    assert rc == 0, f"exit {rc}; stderr tail:\n{err[-3000:]}"
    return err


def metrics(workdir: str) -> list[dict]:
    """The records of ``metrics.jsonl`` (skipping a line cut by a kill)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def losses(workdir: str) -> dict[int, float]:
    """step -> logged loss; asserts no step is logged twice."""
    recs = metrics(workdir)
    steps = [r["step"] for r in recs]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {steps}"
    return {r["step"]: float(r["loss"]) for r in recs}


def checkpoint_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for_step(proc: subprocess.Popen, workdir: str, step: int, timeout: float = 240) -> int:
    """Poll until ``metrics.jsonl`` shows a step >= ``step``; returns that step (asserts the child still runs)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        recs = metrics(workdir)
        if recs and recs[-1]["step"] >= step:
            return recs[-1]["step"]
        if proc.poll() is not None:
            raise AssertionError(f"child exited ({proc.returncode}) before step {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no step >= {step} logged within {timeout}s")


def kill(proc: subprocess.Popen, sig: int) -> None:
    assert proc.poll() is None, "the child finished before it could be signalled"
    os.kill(proc.pid, sig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_close(got: dict[int, float], want: dict[int, float], rtol: float, steps=None) -> None:
    """``got[s] == want[s]`` to ``rtol`` for ``steps`` (default: all of ``got``), each present in ``want``."""
    steps = sorted(got) if steps is None else list(steps)
    assert steps, "no steps to compare"
    a = np.array([got[s] for s in steps])
    b = np.array([want[s] for s in steps])
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0, err_msg=f"steps {steps}")


_REFERENCE_LOCK = threading.Lock()
_REFERENCE: dict[str, str] = {}


def reference_run() -> str:
    """The uninterrupted 1-device run every process test compares against (run once per session)."""
    with _REFERENCE_LOCK:
        if "workdir" not in _REFERENCE:
            workdir = scratch("reference")
            run_ok(toy_command(workdir))
            _REFERENCE["workdir"] = workdir
        return _REFERENCE["workdir"]


def start_reference_in_background() -> None:
    """Start the reference run in a thread, so it overlaps another child's compilation (a failure there is
    raised again by the next ``reference_run()`` call, which retries)."""
    threading.Thread(target=lambda: _quiet(reference_run), daemon=True).start()


def _quiet(fn) -> None:
    try:
        fn()
    except BaseException:  # reported by the retry in the test's own thread
        pass


__all__ = ["ROOT", "TOY", "STEPS", "scratch", "env", "toy_command", "start", "finish", "run", "run_ok", "metrics",
           "losses", "checkpoint_steps", "wait_for_step", "kill", "free_port", "assert_close", "reference_run",
           "start_reference_in_background"]
