"""Bad input on the command line: each mistake ends ``python -m experiments.toy2d`` with exit code 2 and exactly one
line on stderr, ``error: <what is wrong and what to do>``, and no traceback.

The cases run as concurrent child processes (started together by a module fixture) to keep the suite short.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.test_train_support import (finish, reference_run, scratch, start, start_reference_in_background,
                                      toy_command)


def _corrupt(workdir: str) -> None:
    """Overwrite every file of the latest checkpoint's state with garbage."""
    ckpt = os.path.join(workdir, "checkpoints")
    latest = os.path.join(ckpt, str(max(int(n) for n in os.listdir(ckpt) if n.isdigit())), "state")
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\xbe\xef garbage " * 7)


def _copy_of_reference(name: str, corrupt: bool = False) -> str:
    workdir = scratch(name)
    shutil.copytree(reference_run(), workdir)
    if corrupt:
        _corrupt(workdir)
    return workdir


def _file_as_parent(name: str) -> str:
    path = scratch(name)
    with open(path, "w") as f:
        f.write("not a directory")
    return os.path.join(path, "run")


# name: (workdir factory, extra arguments, devices, environment, expected fragments of the one error line)
CASES = {
    "unknown config key": (
        None, ["--config.train.stepz=3"], 1, {},
        ["unknown config key 'train.stepz' in --config.train.stepz=3", 'Did you mean "steps" instead of "stepz"?']),
    "config value of the wrong type": (
        None, ["--config.train.steps=abc"], 1, {},
        ["--config.train.steps=abc: invalid literal for int()", "--helpshort"]),
    "no workdir": (
        "none", [], 1, {}, ["--workdir must have a value"]),
    "batch not divisible by devices": (
        None, ["--config.train.batch_size=30"], 4, {},
        ["batch size 30 is not divisible by the 4 devices; use a multiple of 4 (e.g. 28 or 32)"]),
    "unknown data set": (
        None, ["--config.data.name=mnist_toy"], 1, {}, ["unknown toy data set 'mnist_toy'; choose one of"]),
    "workdir not writable": (
        _file_as_parent, [], 1, {}, ["cannot write to workdir", "Not a directory", "pass a --workdir"]),
    "multi-host without coordinator": (
        None, [], 1, {"SDE_JAX_NUM_PROCESSES": "2"},
        ["needs the coordinator address as host:port (--coordinator or SDE_JAX_COORDINATOR)"]),
    "checkpoint of another model": (
        _copy_of_reference, ["--config.model.width=48"], 1, {},
        ["cannot restore checkpoint", "different model/config", "model.width: 32 -> 48",
         "use a new --workdir or delete that checkpoint"]),
    "corrupt checkpoint": (
        lambda name: _copy_of_reference(name, corrupt=True), [], 1, {},
        ["cannot restore checkpoint", "It is corrupt", "use a new --workdir or delete that checkpoint"]),
}
NEEDS_REFERENCE = ("checkpoint of another model", "corrupt checkpoint")


def _launch(name: str):
    make_workdir, extra, devices, env_vars, _ = CASES[name]
    slug = name.replace(" ", "_")
    workdir = scratch(slug) if make_workdir is None else None if make_workdir == "none" else make_workdir(slug)
    cmd = toy_command(workdir or "", *extra)
    if workdir is None:
        cmd = [a for a in cmd if not a.startswith("--workdir")]
    return start(cmd, devices, **env_vars)


@pytest.fixture(scope="module")
def outcomes() -> dict:
    """name -> (exit code, stderr) for every case; the independent ones run concurrently."""
    start_reference_in_background()
    first = {name: _launch(name) for name in CASES if name not in NEEDS_REFERENCE}
    results = {name: finish(proc, timeout=180) for name, proc in first.items()}
    later = {name: _launch(name) for name in NEEDS_REFERENCE}
    results.update({name: finish(proc, timeout=180) for name, proc in later.items()})
    return {name: (rc, err) for name, (rc, _, err) in results.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line(outcomes, name):
    rc, err = outcomes[name]
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}; stderr:\n{err[-2000:]}"
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{err[-2000:]}"
    for fragment in CASES[name][-1]:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.mark.parametrize("argv, message", [
    (["--config.optim.lr=3"], "unknown config key 'optim.lr' in --config.optim.lr=3"),
    (["--config.train.lr.x=3"], "unknown config key 'train.lr.x' in --config.train.lr.x=3: 'train.lr' is not a group"),
    (["--config.model.widht", "3"], 'Did you mean "width" instead of "widht"?'),
])
def test_config_override_checks_name_the_key(argv, message):
    from experiments.common import check_config_overrides
    from experiments.toy2d import get_config

    with pytest.raises(ValueError) as e:
        check_config_overrides(get_config(), ["--workdir=/tmp/x", *argv])
    assert message in str(e.value) and "\n" not in str(e.value)
    check_config_overrides(get_config(), ["--config.model.width=3", "--config.train.steps", "5"])  # valid keys
