"""Few-step MNIST samples of the distilled students of ``experiments.consistency`` beside their teacher.

    python -m benchmarks.distill_mnist --cd runs/cd_mnist --pd runs/pd_mnist

Rows, all under one protocol (``experiments.consistency.evaluate``: ``eval.n_samples`` class-conditional samples with
balanced labels, the clean classifier's accuracy +- binomial standard error, the Fréchet distance in its penultimate
features to as many test images, beside the test-vs-test floor):

* the rows of each run's own ``eval.json``: the CD student at 1 and 2 steps, PD's student of every round, and the
  guided teacher (classifier-free guidance w = ``guidance_w``) with DDIM at ``eval.teacher_steps`` steps;
* computed here: the CD student's 2-step sampler at each ``--mid_levels`` re-noising level s = sigma / alpha (the
  choice of ``sample.mid_level``), and the guided teacher with DPM-Solver++(2M) at 10 NFE (``--no_fast`` skips both).

``network passes`` counts evaluations of the U-Net per sample (a guided score costs two). The record keeps each
run's training steps, time and step rate, and the issue's target: the 2-step CD student within 5 accuracy points and
2x the FD of the teacher's 50-step DDIM. Writes ``benchmarks/results/distill_mnist.json`` and the table between the
``distill_mnist`` markers of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from benchmarks.common import device_info, load_note, machine_info, run_benchmark


def read_eval(workdir: str) -> dict:
    path = os.path.join(workdir, "eval.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: run python -m experiments.consistency --workdir {workdir} to the "
                         "end first.")
    with open(path) as f:
        return json.load(f)


def run_rows(workdir: str) -> list[dict]:
    """The rows of an experiments.consistency run's eval.json, with its training cost."""
    e = read_eval(workdir)
    cost = {k: e.get(k) for k in ("method", "train_steps", "train_seconds", "train_seconds_logged", "steps_per_sec",
                                  "batch_size")}
    return [{**r, **cost, "workdir": workdir, "source": "eval.json"} for r in e["rows"]]


def extra_samplers(config, restored, mid_levels: list[float]) -> list:
    """The CD student's 2-step sampler at each re-noising level and the guided teacher with DPM-Solver++(2M) at 10
    NFE."""
    import sde_jax as sj
    from experiments import consistency as exp

    out = []
    for mid in mid_levels:
        config.sample.mid_level = mid
        two = exp.consistency_samplers(config, restored.model.apply, restored.sde, restored.params)[1]
        out.append(two._replace(label=f"cd, 2 steps, mid_level {mid:g}"))
    teacher = exp.load_teacher(config.teacher_dir, config.guidance_w)
    tc, shape = config.teacher, tuple(config.data.shape)

    def draw(key, y):
        score = exp.guided(teacher.model.apply, teacher.params, teacher.sde, tc.parameterization, y, tc.null_label,
                           config.guidance_w)
        return sj.sample(score, teacher.sde, key, (len(y), *shape), method="dpmpp_2m", steps=9)[0]
    out.append(exp.Sampler("teacher, guided DPM-Solver++(2M), 10 NFE", 9, 20, draw))
    return out


def target(rows: list[dict]) -> dict | None:
    """The 2-step CD student (the run's own row) against the teacher's 50-step DDIM."""
    cd = next((r for r in rows if r["sampler"].startswith("cd, 2 steps (") and r.get("accuracy") is not None), None)
    ref = next((r for r in rows if r["sampler"] == "teacher, guided DDIM 50 step(s)"), None)
    if cd is None or ref is None:
        return None
    return {"student": cd["sampler"], "accuracy_drop_points": 100 * (ref["accuracy"] - cd["accuracy"]),
            "fd_ratio": cd["fd_classifier"] / ref["fd_classifier"],
            "met": bool(ref["accuracy"] - cd["accuracy"] <= 0.05 and cd["fd_classifier"] <= 2 * ref["fd_classifier"])}


def run(args: argparse.Namespace) -> dict:
    from ml_collections import ConfigDict

    from experiments import consistency as exp
    from sde_jax.train import restore
    from sde_jax.train.checkpoint import load_config

    rows = run_rows(args.cd) + (run_rows(args.pd) if args.pd else [])
    if not args.no_fast:
        config = ConfigDict(load_config(args.cd))
        restored = restore(args.cd)
        for r in exp.evaluate(config, extra_samplers(config, restored, args.mid_levels)):
            rows.append({**r, "method": "teacher" if r["sampler"].startswith("teacher") else "cd",
                         "workdir": args.cd, "source": "computed here"})
    return {"kind": "distill_mnist", "command": args.command, "device": device_info(), "machine": machine_info(),
            "rows": rows, "target": target(rows)}


def _cost(r: dict) -> str:
    if r.get("train_steps") is None or r["sampler"].startswith("teacher"):
        return "-"
    rate = f", {r['steps_per_sec']:.1f} steps/s" if r.get("steps_per_sec") else ""
    wall = f", {r['train_seconds_logged'] / 60:.0f} min" if r.get("train_seconds_logged") else ""
    return f"{r['train_steps']} steps{rate}{wall}"


def render(records: list[tuple[str, dict]]) -> str:
    out = ["## Few-step MNIST generation by distillation (`python -m benchmarks.distill_mnist`)", "",
           "Students of `experiments.consistency` (CD: consistency distillation; PD: progressive distillation) of the "
           "class-conditional `experiments/checkpoints/mnist_cfg` with classifier-free guidance w = 1 inside the "
           "teacher, beside the guided teacher itself. Accuracy: the clean classifier's on class-conditional samples "
           "(+- binomial standard error); FD: Fréchet distance in its penultimate features (not FID) to as many test "
           "images (floor: test against test). Network passes per sample (a guided score is two).", ""]
    for name, r in records:
        out += [f"`{name}.json`: `{r['command']}`. Device: {r['device']}.", "",
                "| sampler | steps | network passes | accuracy | FD (floor) | samples | training |",
                "|---|---|---|---|---|---|---|"]
        shown = set()
        for x in r["rows"]:
            if x.get("accuracy") is None or (x["sampler"].startswith("teacher") and x["sampler"] in shown):
                continue  # the teacher's rows of the second run repeat the first's (same samples, same numbers)
            shown.add(x["sampler"])
            out.append(f"| {x['sampler']} | {x['steps']} | {x['nfe']} | {x['accuracy']:.3f} +- "
                       f"{x['accuracy_stderr']:.3f} | {x['fd_classifier']:.3f} ({x['fd_floor']:.3f}) | {x['n']} | "
                       f"{_cost(x)} |")
        t = r.get("target")
        if t:
            out += ["", f"Target (2-step CD within 5 accuracy points and 2x the FD of the teacher's 50-step DDIM): "
                        f"{t['student']} is {t['accuracy_drop_points']:.1f} points below and at "
                        f"{t['fd_ratio']:.2f}x the FD: {'met' if t['met'] else 'not met'}."]
        out.append("")
    return "\n".join(out + load_note(records, "times are of one run"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cd", required=True, help="an experiments.consistency CD run, finished (its eval.json)")
    p.add_argument("--pd", help="an experiments.consistency PD run, finished")
    p.add_argument("--mid_levels", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.4, 0.8, 1.5],
                   help="re-noising levels s = sigma / alpha of the CD student's 2-step sampler")
    p.add_argument("--no_fast", action="store_true", help="only collect the runs' eval.json rows")
    p.add_argument("--name", help="result name (default distill_mnist)")
    p.add_argument("--no_readme", action="store_true")
    args = p.parse_args(argv)
    if any(m <= 0 for m in args.mid_levels):
        p.error("--mid_levels must be > 0")
    argv = sys.argv[1:] if argv is None else argv
    args.command = "python -m benchmarks.distill_mnist " + shlex.join(a for a in argv if a != "--no_readme")
    return args


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv), parse_args, run, lambda a: "distill_mnist", "distill_mnist", render,
                  "distill_mnist")


if __name__ == "__main__":
    main()
