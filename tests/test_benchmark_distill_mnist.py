"""benchmarks.distill_mnist without sampling (--no_fast): it collects the runs' eval.json rows, judges the target
(2-step CD within 5 accuracy points and 2x the FD of the teacher's 50-step DDIM) and renders one table row each."""

import json

import pytest

from benchmarks import distill_mnist as bd


def _row(sampler, steps, nfe, acc, fd):
    return {"sampler": sampler, "steps": steps, "nfe": nfe, "accuracy": acc, "accuracy_stderr": 0.006,
            "fd_classifier": fd, "fd_floor": 0.145, "n": 1000}


def _run(tmp_path, name, method, rows):
    d = tmp_path / name
    d.mkdir()
    (d / "eval.json").write_text(json.dumps({"method": method, "train_steps": 2000, "train_seconds": 1400.0,
                                             "steps_per_sec": 1.4, "batch_size": 32, "rows": rows}))
    return str(d)


@pytest.mark.parametrize("fd_two, met", [(1.0, True), (1.2, False)])
def test_collects_rows_and_judges_the_target(tmp_path, monkeypatch, fd_two, met):
    monkeypatch.setenv("SDE_JAX_RESULTS_DIR", str(tmp_path / "out"))
    cd = _run(tmp_path, "cd", "cd", [_row("cd, 1 step", 1, 1, 0.958, 1.39),
                                     _row("cd, 2 steps (t_mid 0.058)", 2, 2, 0.95, fd_two),
                                     _row("teacher, guided DDIM 50 step(s)", 50, 100, 0.976, 0.547)])
    pd = _run(tmp_path, "pd", "pd", [_row("pd round 3, DDIM 1 step(s)", 1, 1, 0.9, 2.0),
                                     _row("teacher, guided DDIM 50 step(s)", 50, 100, 0.976, 0.547)])
    args = bd.parse_args(["--cd", cd, "--pd", pd, "--no_fast", "--no_readme"])
    rec = bd.run(args)
    assert [r["sampler"] for r in rec["rows"]][-2] == "pd round 3, DDIM 1 step(s)" and len(rec["rows"]) == 5
    t = rec["target"]
    assert t["met"] is met and t["accuracy_drop_points"] == pytest.approx(2.6) and t["fd_ratio"] == pytest.approx(
        fd_two / 0.547)
    text = bd.render([("distill_mnist", {**rec, "load_avg_1min": 2.0})])
    lines = [x for x in text.splitlines() if x.startswith("| ") and not x.startswith("| sampler")]
    assert len(lines) == 4 and "| 2000 steps, 1.4 steps/s |" in lines[0] and lines[2].endswith("| - |")  # teacher once
    assert ("not met" in text) != met


def test_a_run_without_eval_json_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="eval.json does not exist"):
        bd.run(bd.parse_args(["--cd", str(tmp_path), "--no_fast"]))
