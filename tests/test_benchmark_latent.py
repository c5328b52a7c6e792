"""``benchmarks.latent``: its small pure pieces (labels, padding, training time from a metrics log, the pixel
bits/dim rows of a ``benchmarks.mnist_nll`` record) and the README table of a record."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import latent as bl


def test_balanced_labels_and_padding():
    y = bl.balanced_labels(25, 10)
    assert y.dtype == np.int32 and list(y[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    counts = np.bincount(y, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 25
    assert list(bl.padded(np.array([3, 4], np.int32), 5)) == [3, 4, 4, 4, 4]
    assert list(bl.padded(y[:10], 10)) == list(y[:10])
    with pytest.raises(ValueError):
        bl.padded(y, 10)
    with pytest.raises(ValueError):
        bl.balanced_labels(0, 10)


def test_train_time_sums_logging_intervals_and_falls_back_to_eval_json():
    metrics = [{"step": 50, "steps_per_sec": 0.5}, {"step": 100, "steps_per_sec": 2.0},
               {"step": 150, "loss": 1.0}, {"step": 200, "steps_per_sec": 1.0}]
    seconds, source = bl.train_time(metrics, {"train_seconds": 7.0})
    assert seconds == pytest.approx(50 / 0.5 + 50 / 2.0 + 100 / 1.0) and source == "metrics.jsonl"
    assert bl.train_time([{"step": 5, "steps_per_sec": "nan"}], {"train_seconds": 7.0}) == (7.0, "eval.json")
    assert bl.train_time([], None) == (None, None)


def _nll_record():
    rows = [{"model": "per-pixel categorical", "bpd": 1.69, "bpd_stderr": 0.004, "n": 10000},
            {"model": "VDM (this repo), ELBO", "bpd": 1.67, "bpd_stderr": 0.013, "n": 1000, "nfe": None},
            {"model": "VDM (this repo), PF-ODE, kernel dequantisation + decoder", "bpd": 1.858,
             "bpd_stderr": 0.035, "n": 100, "nfe": 841.0}]
    return {"dataset": "mnist", "rows": rows, "model": {"workdir": "/runs/vdm", "train_steps": 4500}}


def test_pixel_bpd_rows_take_the_vdm_elbo_and_pf_ode_rows():
    rows = bl.pixel_bpd_rows(_nll_record())
    assert [r["label"] for r in rows] == ["ELBO", "PF-ODE, kernel dequantisation + decoder"]
    assert rows[0]["bpd"] == 1.67 and rows[1]["nfe"] == 841.0 and rows[1]["n"] == 100
    committed = os.path.join(bl.HERE, "results", "mnist_nll.json")
    if os.path.exists(committed):
        with open(committed) as f:
            assert any(r["label"] == "ELBO" for r in bl.pixel_bpd_rows(json.load(f)))


def test_human_seconds():
    assert [bl.human_seconds(s) for s in (None, 42.4, 3300.0, 5 * 3600.0)] == ["-", "42 s", "55 min", "5.0 h"]


def test_render_has_one_row_per_model_with_ratio_and_training_sum():
    common = {"nfe": 51, "accuracy": 0.98, "accuracy_stderr": 0.006, "fd_classifier": 0.9, "fd_floor": 0.49}
    pixel = {"model": "pixel", "label": "pixel U-Net (mnist_cfg)", "params": 710_000, "seconds_per_image": 0.14,
             "train_steps": 6000, "train_seconds": 3323.0, "bpd": None,
             "pixel_bpd": {"record": "benchmarks/results/mnist_nll.json", "model_train_steps": 4500,
                           "rows": bl.pixel_bpd_rows(_nll_record())}, **common}
    latent = {"model": "latent", "label": "latent U-Net + VAE (latent_mnist)", "params": 660_000,
              "seconds_per_image": 0.02, "after_sampler_seconds_per_image": 0.001, "train_steps": 2500,
              "train_seconds": 660.0, "train_seconds_total": 960.0,
              "vae": {"params": 200_000, "train_steps": 1500, "train_seconds": 300.0},
              "bpd": {"bpd": 1.41, "bpd_stderr": 0.01, "n": 500}, **common}
    record = {"dataset": "mnist", "sampler": {"method": "ddim", "steps": 50, "w": 1.0, "nfe": 51},
              "n_samples": 500, "batch": 250, "device": "cpu (2 cores)", "command": "python -m benchmarks.latent X",
              "rows": [pixel, latent], "figure": None, "load_avg_1min": 2.0}
    text = bl.render([("latent_mnist", record)])
    lines = [line for line in text.splitlines() if line.startswith("| ") and "model" not in line]
    assert len(lines) == 2
    assert "| 140.00 | 1.00x |" in lines[0] and "ELBO 1.670 +- 0.013 (1000 images)" in lines[0]
    assert "| 20.00 (1.00) | 7.00x |" in lines[1]
    assert "11 min + VAE 300 s = 16 min" in lines[1] and "2500 + VAE 1500" in lines[1]
    assert "1.410 +- 0.010 (latent bound, 500 images)" in lines[1]
    assert "a different pixel model" in text and "`python -m benchmarks.latent X`" in text
    assert "load average 2.0" in text
    # a pixel model with its own PF-ODE bits/dim (experiments.mnist's eval.json) shows it first
    pixel.update(bpd={"bpd": 1.02, "bpd_stderr": 0.02, "n": 250}, pixel_bpd=None)
    line = [x for x in bl.render([("latent_mnist", record)]).splitlines() if x.startswith("| pixel")][0]
    assert line.endswith("| 1.020 +- 0.020 (PF-ODE, uniform dequantisation, 250 images) |"), line


def test_own_pixel_bpd_reads_the_pixel_runs_eval_json(tmp_path):
    assert bl.own_pixel_bpd(str(tmp_path)) is None  # no eval.json
    (tmp_path / "eval.json").write_text(json.dumps({"train_steps": 10, "bpd": None}))
    assert bl.own_pixel_bpd(str(tmp_path)) is None  # trained with eval.bpd_examples = 0
    (tmp_path / "eval.json").write_text(json.dumps({"bpd": 3.1, "bpd_stderr": 0.05, "n_examples": 250,
                                                     "nfe_mean": 180.0}))
    got = bl.own_pixel_bpd(str(tmp_path))
    assert (got["bpd"], got["bpd_stderr"], got["n"], got["nfe"]) == (3.1, 0.05, 250, 180.0)
