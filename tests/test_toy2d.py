"""The main job end to end: ``python -m experiments.toy2d`` in a real process."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy2d"))
    cmd = [sys.executable, "-m", "experiments.toy2d", "--workdir", workdir, "--config.train.steps=300",
           "--config.model.width=64", "--config.sample.n=1000", "--config.eval.nll_examples=200"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_writes_metrics_figures_and_checkpoints(run_dir):
    workdir, proc = run_dir
    for name in ("metrics.jsonl", "samples.png", "loss.png", "eval.json", "config.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    with open(os.path.join(workdir, "samples.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "300"
    assert "NLL of held-out data" in proc.stdout


def test_loss_falls_and_every_step_logged_once(run_dir):
    workdir, _ = run_dir
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    steps = [r["step"] for r in recs]
    assert steps == list(range(50, 301, 50))
    first, last = recs[0]["loss"], min(r["loss"] for r in recs[-3:])
    # the default loss (likelihood weighting, importance-sampled t) is the negative ELBO's diffusion term up to a
    # constant, a noisy estimate: measured 27.5 at step 50 and 20.7 at best of the last three
    assert last < 0.85 * first, (first, last)


def test_eval_report(run_dir):
    workdir, _ = run_dir
    with open(os.path.join(workdir, "eval.json")) as f:
        rep = json.load(f)
    assert rep["train_steps"] == 300 and rep["sample_nfe"] > 10
    # 300 steps is a rough model: NLL above the data entropy, but far below an untrained model's
    assert rep["data_entropy_nats"] < rep["nll_nats"] < 6.0
