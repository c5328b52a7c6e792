"""``python -m experiments.mnist`` end to end on the real MNIST files (tiny network, a few steps), and the
benchmark that reads its workdir."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import MNIST_DIR as DATA, NEEDS_MNIST, ROOT

pytestmark = NEEDS_MNIST
TINY = ["--config.model.ch=8", "--config.model.num_res_blocks=1", "--config.train.batch_size=16",
        "--config.train.steps=6", "--config.train.decay_steps=0", "--config.train.warmup=2",
        "--config.train.log_every=2", "--config.train.checkpoint_every=3", "--config.sample.per_class=1",
        "--config.sample.steps=4", "--config.eval.bpd_examples=20", "--config.eval.batch_size=10",
        "--config.eval.rtol=1e-2", "--config.eval.atol=1e-2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mnist"))
    cmd = [sys.executable, "-m", "experiments.mnist", "--workdir", workdir, f"--config.data.dir={DATA}", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_trains_checkpoints_grids_and_bits_per_dim(run_dir):
    workdir, proc = run_dir
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    for name in ("samples_3.png", "samples_6.png", "loss.png", "metrics.jsonl"):
        with open(os.path.join(workdir, name), "rb") as f:
            assert f.read(4) in (b"\x89PNG", b'{"st'), name
    with open(os.path.join(workdir, "eval.json")) as f:
        report = json.load(f)
    assert report["n_examples"] == 20 and report["train_steps"] == 6
    # an untrained network is a poor density model, but a proper one: bits/dim positive, finite, > the 1.69 floor
    assert 1.69 < report["bpd"] < 40 and np.isfinite(report["bpd_stderr"]) and report["nfe_mean"] > 0
    assert "test bits/dim (20 images)" in proc.stdout


def test_benchmark_writes_the_bpd_record_from_the_workdir(run_dir, tmp_path):
    workdir, _ = run_dir
    cmd = [sys.executable, "-m", "benchmarks.nll_checkpoint", "--workdir", workdir, "--dataset", "mnist",
           "--data_dir", DATA, "--n_examples", "10", "--batch_size", "5", "--rtol", "1e-2", "--atol", "1e-2", "--name", "test_mnist",
           "--no_readme"]
    env = {**os.environ, "SDE_JAX_RESULTS_DIR": str(tmp_path)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "test_mnist.json") as f:
        r = json.load(f)
    for key in ("bpd", "bpd_stderr", "n_examples", "nfe_mean", "train_steps", "train_seconds", "device"):
        assert r[key] is not None, key
    assert r["n_examples"] == 10 and r["train_steps"] == 6 and r["model"]["num_classes"] == 10


def test_guidance_benchmark_writes_accuracies_and_grids(run_dir, mnist_classifier, tmp_path):
    """``benchmarks.guidance`` on the tiny model: CFG against w, classifier guidance, inpainting, one record."""
    workdir, classifier = run_dir[0], mnist_classifier[0]
    cmd = [sys.executable, "-m", "benchmarks.guidance", "--workdir", workdir, "--classifier", classifier,
           "--noisy_classifier", classifier, "--data_dir", DATA, "--ws", "0,2", "--scales", "1", "--per_class", "1",
           "--batch", "10", "--steps", "3", "--inpaint", "2", "--inpaint_steps", "3", "--no_readme"]
    env = {**os.environ, "SDE_JAX_RESULTS_DIR": str(tmp_path)}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "guidance_mnist.json") as f:
        r = json.load(f)
    assert [c["w"] for c in r["cfg"]] == [0.0, 2.0] and r["train_steps"] == 6 and r["per_class"] == 1
    assert all(0.0 <= c["accuracy"] <= 1.0 and len(c["per_class_accuracy"]) == 10 for c in r["cfg"])
    assert sum(r["unconditional_class_histogram"]) == 10
    assert [c["scale"] for c in r["classifier_guidance"]] == [1.0]
    assert [c["method"] for c in r["inpainting"]] == ["replacement", "repaint_u4"]
    assert r["inpainting"][1]["nfe"] > r["inpainting"][0]["nfe"]
    assert r["train"]["loss"]["p_uncond"] == 0.2
    for name in ("mnist_cfg_w2.png", "mnist_classifier_guidance_s1.png", "mnist_inpainting.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(4) == b"\x89PNG", name
    from benchmarks.guidance import readme_section

    assert "| classifier-free | w = 2 |" in readme_section(r)


def test_a_wrong_data_dir_is_one_clear_line(tmp_path):
    cmd = [sys.executable, "-m", "experiments.mnist", "--workdir", str(tmp_path), "--config.data.dir=/nonexistent"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data.dir /nonexistent does not exist")
