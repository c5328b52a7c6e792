"""``experiments.consistency`` on a slice of the real MNIST files with a tiny class-conditional U-Net teacher of random
weights (written by ``train()`` at step 0): CD, CT and PD each run a handful of steps and write their grid and
eval.json; a run that dies after k steps continues from k with the same call (PD in the same round); a missing
teacher, or one that is not a class-conditional score model, is a clear error before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache
from ml_collections import ConfigDict

from experiments import consistency as exp
from sde_jax.config import base_config, model_from_config, optimizer_from_config
from sde_jax.data.pipeline import ImageBatches
from sde_jax.train import init_params, init_train_state, restore
from sde_jax.train.checkpoint import Checkpointer, save_config
from sde_jax.train.metrics import read_metrics
from tests.conftest import MNIST_DIR, NEEDS_MNIST, ROOT

pytestmark = NEEDS_MNIST
TINY_UNET = {"name": "unet", "ch": 8, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": (), "dropout": 0.0,
             "patch_size": 2, "num_classes": 10}
CLASSIFIER = os.path.join(ROOT, "experiments", "checkpoints", "mnist_classifier")


@pytest.fixture(scope="module", autouse=True)
def fast_compiles(tmp_path_factory):
    """These tests check plumbing, not speed: XLA's optimisations off (compiles ~2x faster), and a persistent
    compilation cache, so a resumed run reads back the train step its dead predecessor compiled. Both are undone
    after the module."""
    names = ("jax_disable_most_optimizations", "jax_compilation_cache_dir",
             "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
    old = {n: jax.config.values[n] for n in names}
    new = dict(zip(names, (True, str(tmp_path_factory.mktemp("xla_cache")), 0.5, 0)))
    for n, v in new.items():
        jax.config.update(n, v)
    yield
    for n, v in old.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A train() workdir at step 0: a tiny class-conditional v-prediction U-Net (label dropout 0.2 in its config) with
    random weights, written without compiling anything."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    c = base_config()
    c.data = ConfigDict({"name": "mnist", "dir": MNIST_DIR, "shape": (28, 28, 1), "scale": "minus_one_one",
                         "dequantize": True, "flip": False, "num_classes": 10})
    c.model = ConfigDict(TINY_UNET)
    c.loss.update(parameterization="v", p_uncond=0.2)
    c.train.update(steps=0, batch_size=8, warmup=0)
    params = init_params(model_from_config(c.model), jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(0, init_train_state(params, optimizer_from_config(c.train)), {"rng": [0, 0], "data_position": 0})
    ckpt.close()
    save_config(workdir, c)
    return workdir


def tiny(method: str, teacher: str, **train) -> ConfigDict:
    c = exp.get_config()
    c.method, c.teacher_dir = method, teacher
    c.data.dir, c.data.limit = MNIST_DIR, 64
    c.model = ConfigDict(TINY_UNET)  # CT's network (CD and PD take the teacher's)
    c.train.update(batch_size=8, warmup=1, log_every=1, checkpoint_every=2, **train)
    c.consistency.update(levels=6, ct_s0=2, ct_s1=8)
    c.sample.per_class = 1
    c.eval.update(classifier_dir="", n_samples=10, batch_size=10)  # = the grid's 10 samples: one compilation
    return c


class Died(RuntimeError):
    pass


def die_at(monkeypatch, step: int, occurrence: int = 1) -> None:
    """The experiment's data pipeline raises when it is asked for batch ``step`` the ``occurrence``-th time: the run
    dies after ``step`` steps, its checkpoints on disk as a kill would leave them."""
    seen = []

    class Dying(ImageBatches):
        def __call__(self, s, rows=slice(None)):
            if s == step:
                seen.append(s)
                if len(seen) == occurrence:
                    raise Died(f"killed before step {s + 1}")
            return super().__call__(s, rows)

    monkeypatch.setattr(exp, "ImageBatches", Dying)


def steps_of(workdir: str) -> list[int]:
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))


def report(workdir: str) -> dict:
    with open(os.path.join(workdir, "eval.json")) as f:
        return json.load(f)


def is_png(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x89PNG"


def test_cd_dies_after_two_steps_resumes_from_two_and_evaluates(teacher_dir, tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "cd")
    config = tiny("cd", teacher_dir, steps=4)
    config.eval.update(classifier_dir=CLASSIFIER, teacher_steps=())  # the teacher's rows: in the PD test
    with monkeypatch.context() as m:
        die_at(m, 3)
        with pytest.raises(Died):
            exp.main(config, workdir, progress=False)
    assert steps_of(workdir) == [2] and not os.path.exists(os.path.join(workdir, "eval.json"))
    exp.main(config, workdir)
    assert f"resuming from {workdir}/checkpoints/2" in capsys.readouterr().out
    assert steps_of(workdir) == [2, 4]
    assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]
    r = report(workdir)
    assert (r["method"], r["train_steps"], r["train_steps_run"]) == ("cd", 4, 2) and r["train_seconds"] > 0
    assert [x["nfe"] for x in r["rows"]] == [1, 2]  # 1 and 2 consistency steps
    for x in r["rows"]:
        assert 0 <= x["accuracy"] <= 1 and np.isfinite(x["fd_classifier"]) and x["n"] == 10
    assert r["teacher"]["parameterization"] == "v" and len(r["teacher"]["fingerprint"]) == 64
    assert all(is_png(os.path.join(workdir, f)) for f in ("samples.png", "samples_2.png", "samples_4.png"))
    config.guidance_w = 2.0  # another distillation setting in the same workdir: refused before any work
    with pytest.raises(ValueError, match="another setting.*guidance_w"):
        exp.main(config, workdir, progress=False)


def test_ct_trains_from_scratch_with_the_curriculum(tmp_path):
    workdir = str(tmp_path / "ct")
    exp.main(tiny("ct", "", steps=3), workdir, progress=False)
    r = report(workdir)
    assert (r["method"], r["train_steps"]) == ("ct", 3) and [x["steps"] for x in r["rows"]] == [1, 2]
    assert all(np.isfinite(m["loss"]) for m in read_metrics(workdir))
    assert is_png(os.path.join(workdir, "samples.png"))


def test_pd_dies_in_round_one_and_resumes_in_that_round(teacher_dir, tmp_path, monkeypatch, capsys):
    workdir = str(tmp_path / "pd")
    config = tiny("pd", teacher_dir)
    config.pd.update(teacher_steps=4, final_steps=1, steps_per_round=4)  # rounds 4 -> 2 -> 1
    config.eval.teacher_steps = (1,)
    with monkeypatch.context() as m:
        die_at(m, 3, occurrence=2)  # round 0 runs its 4 steps; round 1 dies after 3
        with pytest.raises(Died):
            exp.main(config, workdir, progress=False)
    round0, round1 = (os.path.join(workdir, f"round_{k}") for k in (0, 1))
    assert steps_of(round0) == [2, 4] and steps_of(round1) == [2]
    before = read_metrics(round0)
    exp.main(config, workdir)
    out = capsys.readouterr().out
    assert "PD round 0" not in out and "PD round 1" in out and f"resuming from {round1}/checkpoints/2" in out
    assert steps_of(round1) == [2, 4] and read_metrics(round0) == before
    r = report(workdir)
    assert (r["train_steps"], r["train_steps_run"]) == (8, 2)
    assert [(x["sampler"], x["nfe"]) for x in r["rows"]] == [
        ("pd round 0, DDIM 2 step(s)", 2), ("pd round 1, DDIM 1 step(s)", 1),
        ("teacher, guided DDIM 1 step(s)", 2)]
    student = restore(round1)  # a round is a restorable score model of its student
    assert student.config.pd.student_steps == 1 and student.config.loss.parameterization == "v"
    assert is_png(os.path.join(workdir, "samples.png"))


def test_a_teacher_that_is_missing_or_of_the_wrong_kind_is_an_error_before_any_work(teacher_dir, tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="teacher_dir /nonexistent does not exist"):
        exp.main(tiny("cd", "/nonexistent"), workdir)
    with pytest.raises(ValueError, match="'classifier' model .* not a score model"):
        exp.main(tiny("pd", CLASSIFIER), workdir)
    with open(os.path.join(teacher_dir, "config.json")) as f:
        cfg = json.load(f)
    for name, change, match in (("unconditional", ("model", "num_classes", None), "unconditional"),
                                ("no_dropout", ("loss", "p_uncond", 0.0), "without label dropout")):
        folder = tmp_path / name
        folder.mkdir()
        bad = json.loads(json.dumps(cfg))
        bad[change[0]][change[1]] = change[2]
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            exp.main(tiny("cd", str(folder)), workdir)
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        exp.main(tiny("cd", str(empty)), workdir)
    assert not os.path.exists(workdir)
    proc = subprocess.run([sys.executable, "-m", "experiments.consistency", "--workdir", workdir,
                           "--config.teacher_dir=/nonexistent"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: teacher_dir /nonexistent does not exist")
