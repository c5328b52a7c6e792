"""Samplers on a trained MNIST model: fast solvers at 10 NFE, Picard against sequential, SMC inpainting.

    python -m benchmarks.mnist_sampling --workdir runs/mnist_cfg --classifier runs/classifier \\
        --data_dir ../shared/data/mnist --part fast      # or picard, inpaint

``--workdir`` is a class-conditional ``experiments.mnist`` run trained with label dropout, ``--classifier`` a clean
``experiments.mnist_classifier`` run. Accuracy is the fraction of class-conditional samples that the classifier
labels with the requested digit (+- binomial standard error); FD is the Fréchet distance in the classifier's
penultimate features (not FID) between the samples and as many test images, beside its real-vs-real floor at the
same size.

* ``fast``: classifier-free guidance w = 1, ``--per_class`` samples of each digit: DPM-Solver++(2M), UniPC and DDIM
  at 10 score evaluations (9 steps and the denoising step) beside DDIM with 50 and 100 steps.
* ``picard``: the conditional model (w = 0): DDIM-100 and ancestral-1000 sequentially and through
  ``method="picard"`` with the same keys, at tol 1e-3 (labels must agree) and tol 0.1 (depth, FD).
* ``inpaint``: top half of test digits known, bottom half sampled with the unconditional score (null label), by
  replacement, RePaint and SMC at about equal score evaluations per image; the grid goes to
  ``experiments/figures/mnist_inpainting_smc.png``.

Writes ``benchmarks/results/mnist_sampling_<part>.json`` and the table between the ``mnist_sampling`` markers of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj
from benchmarks.common import device_info, load_results, write_report
from sde_jax.data.images import from_model_scale, save_grid, to_model_scale
from sde_jax.data.pipeline import load_images
from sde_jax.eval import clean_time, embed, feature_distances, load_classifier, predict
from sde_jax.train.checkpoint import restore

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.environ.get("SDE_JAX_RESULTS_DIR") or os.path.join(os.path.dirname(HERE), "experiments", "figures")

FAST = [  # label -> (method, options): 10 NFE each, and the DDIM references
    ("ddim, 10 NFE", "ddim", {"steps": 9}),
    ("dpmpp_2m, 10 NFE", "dpmpp_2m", {"steps": 9}),
    ("unipc, 10 NFE", "unipc", {"steps": 9}),
    ("unipc quadratic grid, 10 NFE", "unipc", {"steps": 9, "grid": "quadratic"}),
    ("ddim, 50 steps", "ddim", {"steps": 50}),
    ("ddim, 100 steps", "ddim", {"steps": 100}),
]


class Bench:
    """The model, its scores, the classifier and the test set."""

    def __init__(self, args):
        self.model = restore(args.workdir)
        self.cfg, self.sde = self.model.config, self.model.sde
        self.k = self.cfg.model.num_classes
        if self.k is None:
            raise SystemExit(f"{args.workdir} holds an unconditional model; this benchmark needs a class-conditional "
                             "one trained with label dropout.")
        self.shape = tuple(self.cfg.data.shape)
        self.c_apply, self.c_params, c_config = load_classifier(args.classifier)
        self.t_clean = clean_time(c_config)
        self.test, self.test_labels = load_images(self.cfg.data.name, "test", args.data_dir, self.shape)
        self.batch = args.batch

    def score(self, y, w: float):
        cond = self.model.score_fn(y)
        return cond if w == 0 else sj.classifier_free_guidance(cond, self.null_score(y.shape[0]), w)

    def null_score(self, n: int):
        return sj.score_fn(self.model.model.apply, self.model.params, self.sde, self.cfg.loss.parameterization,
                           jnp.full((n,), self.k, jnp.int32))

    def draw(self, labels, w, key, method, options):
        """Samples (model scale) and the last info, in batches sharing one compilation."""
        xs, infos = [], []
        for i in range(0, len(labels), self.batch):
            y = jnp.asarray(labels[i:i + self.batch])
            x, info = sj.sample(self.score(y, w), self.sde, jax.random.fold_in(key, i), (len(y), *self.shape),
                                method=method, **options)
            xs.append(np.asarray(x))
            infos.append(jax.tree.map(np.asarray, info))
        return np.concatenate(xs), infos

    def labels_of(self, x):
        return predict(self.c_apply, self.c_params, x, self.t_clean)

    def features(self, x):
        return embed(self.c_apply, self.c_params, x, self.t_clean)

    @functools.lru_cache(maxsize=None)
    def real_features(self, n: int):
        """Features of the first n test images, and the FD floor (them against the next n), computed once per n."""
        real = [np.asarray(to_model_scale(self.test[i * n:(i + 1) * n], self.cfg.data.scale)) for i in (0, 1)]
        f_real, f_other = (self.features(r) for r in real)
        return f_real, feature_distances(f_real, f_other, kid_subset_size=min(1000, n))["fd_classifier"]

    def fd(self, x) -> dict:
        f_real, floor = self.real_features(len(x))
        out = feature_distances(f_real, self.features(x), kid_subset_size=min(1000, len(x)))
        return {**out, "fd_floor": floor}


def _acc(pred, labels) -> tuple[float, float]:
    a = float(np.mean(pred == labels))
    return a, float(np.sqrt(a * (1 - a) / len(labels)))


def part_fast(b: Bench, args) -> list[dict]:
    labels = np.repeat(np.arange(b.k, dtype=np.int32), args.per_class)
    rows = []
    for label, method, options in FAST:
        t0 = time.perf_counter()
        x, infos = b.draw(labels, 1.0, jax.random.key(args.seed), method, options)
        seconds = time.perf_counter() - t0
        acc, se = _acc(b.labels_of(x), labels)
        d = b.fd(x)
        rows.append({"sampler": label, "method": method, "options": options, "nfe": int(infos[0]["nfe"]),
                     "accuracy": acc, "accuracy_stderr": se, "fd_classifier": d["fd_classifier"],
                     "fd_floor": d["fd_floor"], "n": len(labels), "seconds": seconds})
        print(f"{label:32s} NFE {rows[-1]['nfe']:4d} accuracy {acc:.3f} +- {se:.3f} FD {d['fd_classifier']:.3f} "
              f"(floor {d['fd_floor']:.3f}) {seconds:.0f} s", flush=True)
    return rows


def part_picard(b: Bench, args) -> list[dict]:
    rows = []
    for base, steps, per_class in (("ddim", 100, args.picard_per_class), ("ancestral", 1000,
                                                                          args.picard_ancestral_per_class)):
        labels = np.repeat(np.arange(b.k, dtype=np.int32), per_class)
        key = jax.random.key(args.seed)
        sde_steps = {"steps": steps} if base == "ddim" else {"steps": min(steps, b.sde.N - 1)}
        t0 = time.perf_counter()
        x_seq, info_seq = b.draw(labels, 0.0, key, base, sde_steps)
        t_seq = time.perf_counter() - t0
        pred_seq = b.labels_of(x_seq)
        for tol in (1e-3, 0.1):
            t0 = time.perf_counter()
            x, infos = b.draw(labels, 0.0, key, "picard", {"base": base, "window": args.window, "tol": tol,
                                                           **sde_steps})
            seconds = time.perf_counter() - t0
            pred = b.labels_of(x)
            dev = np.sqrt(np.mean((x - x_seq).reshape(len(x), -1) ** 2, axis=1))
            r = {"base": base, "steps": sde_steps["steps"], "tol": tol, "window": args.window, "n": len(labels),
                 "depth": [int(i["sweeps"]) for i in infos], "nfe": [int(i["nfe"]) for i in infos],
                 "nfe_sequential": int(info_seq[0]["nfe"]), "labels_agree": float(np.mean(pred == pred_seq)),
                 "accuracy_sequential": _acc(pred_seq, labels)[0], "accuracy_picard": _acc(pred, labels)[0],
                 "deviation_median": float(np.median(dev)), "deviation_max": float(dev.max()),
                 "seconds_sequential": t_seq, "seconds_picard": seconds}
            if tol == 0.1:
                r["fd_sequential"], r["fd_picard"] = b.fd(x_seq)["fd_classifier"], b.fd(x)["fd_classifier"]
            rows.append(r)
            print(f"{base}-{r['steps']} tol {tol}: depth {r['depth']} NFE {r['nfe']} labels agree "
                  f"{r['labels_agree']:.3f}, deviation median {r['deviation_median']:.1e} max {r['deviation_max']:.2f}"
                  f" {seconds:.0f} s (sequential {t_seq:.0f} s)", flush=True)
    return rows


def part_inpaint(b: Bench, args) -> list[dict]:
    n = args.inpaint
    x_known = np.asarray(to_model_scale(b.test[:n], b.cfg.data.scale))
    mask = np.zeros((1, *b.shape), np.float32)
    mask[:, : b.shape[0] // 2] = 1.0
    score = b.null_score(n)
    budget = args.inpaint_budget
    methods = [("replacement", {"method": "replacement", "steps": budget // 2}),
               ("repaint", {"method": "repaint", "steps": budget // 10, "n_resample": 10}),
               (f"smc, {args.particles} particles", {"method": "smc", "n_particles": args.particles,
                                                      "steps": budget // args.particles - 2})]
    rows, grid = [], [from_model_scale(x_known * mask + (1 - mask) * -1.0, b.cfg.data.scale)[:10]]
    for label, opts in methods:
        t0 = time.perf_counter()
        x, info = sj.inpaint(score, b.sde, jax.random.key(args.seed), x_known, mask, **opts)
        x = np.asarray(x)
        seconds = time.perf_counter() - t0
        acc, se = _acc(b.labels_of(x), b.test_labels[:n])
        per_image = int(info.get("nfe_per_sample", info["nfe"]))
        d = b.fd(x)
        rows.append({"method": label, "options": opts, "n": n, "evaluations_per_image": per_image,
                     "label_kept": acc, "label_kept_stderr": se, "fd_classifier": d["fd_classifier"],
                     "fd_floor": d["fd_floor"], "seconds": seconds})
        print(f"{label:22s} {per_image} evaluations/image: label kept {acc:.3f} +- {se:.3f}, FD "
              f"{d['fd_classifier']:.3f} (floor {d['fd_floor']:.3f}), {seconds:.0f} s", flush=True)
        grid.append(from_model_scale(x, b.cfg.data.scale)[:10])
    grid.append(b.test[:10])
    save_grid(np.concatenate(grid), len(grid), os.path.join(FIGURES, "mnist_inpainting_smc.png"))
    return rows


PARTS = {"fast": part_fast, "picard": part_picard, "inpaint": part_inpaint}


def render(records: list[tuple[str, dict]]) -> str:
    out = []
    for name, r in records:
        head = (f"Model: {r['workdir']} ({r['train_steps']} steps). Device: {r['device']}. "
                f"Command: `{r['command']}`.")
        if r["part"] == "fast":
            out += ["### Fast samplers at 10 NFE (classifier-free guidance w = 1)", "", head, "",
                    "| sampler | NFE | accuracy | classifier-feature FD (floor) | seconds |", "|---|---|---|---|---|"]
            out += [f"| {x['sampler']} | {x['nfe']} | {x['accuracy']:.3f} +- {x['accuracy_stderr']:.3f} | "
                    f"{x['fd_classifier']:.3f} ({x['fd_floor']:.3f}) | {x['seconds']:.0f} |" for x in r["rows"]]
        elif r["part"] == "picard":
            out += ["### Picard against sequential (conditional model, w = 0)", "", head, "",
                    "| base | tol | images | depth per batch | NFE per batch (sequential) | labels agree | "
                    "deviation median / max | FD sequential / Picard | seconds sequential / Picard |",
                    "|---|---|---|---|---|---|---|---|---|"]
            out += [f"| {x['base']}-{x['steps']} | {x['tol']:g} | {x['n']} | {x['depth'][0]} | {x['nfe'][0]} "
                    f"({x['nfe_sequential']}) | {x['labels_agree']:.3f} | {x['deviation_median']:.1e} / "
                    f"{x['deviation_max']:.2f} | "
                    + (f"{x['fd_sequential']:.3f} / {x['fd_picard']:.3f}" if "fd_picard" in x else "-")
                    + f" | {x['seconds_sequential']:.0f} / {x['seconds_picard']:.0f} |" for x in r["rows"]]
        else:
            out += ["### Inpainting the bottom half (unconditional score)", "", head, "",
                    "| method | evaluations per image | label kept | classifier-feature FD (floor) | seconds |",
                    "|---|---|---|---|---|"]
            out += [f"| {x['method']} | {x['evaluations_per_image']} | {x['label_kept']:.3f} +- "
                    f"{x['label_kept_stderr']:.3f} | {x['fd_classifier']:.3f} ({x['fd_floor']:.3f}) | "
                    f"{x['seconds']:.0f} |" for x in r["rows"]]
            out += ["", "SMC's evaluations also carry the twist's gradient through the network (a VJP per step), "
                    "about twice a forward pass: its wall time says what that costs.",
                    "", "![inpainting](../experiments/figures/mnist_inpainting_smc.png)",
                    "", "Rows: masked input, replacement, RePaint, SMC, original."]
        out.append("")
    return "\n".join(out)


def main(argv=None) -> None:
    import sys
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--data_dir")
    p.add_argument("--part", choices=sorted(PARTS), required=True)
    p.add_argument("--per_class", type=int, default=50)
    p.add_argument("--picard_per_class", type=int, default=10)
    p.add_argument("--picard_ancestral_per_class", type=int, default=2)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--inpaint", type=int, default=50)
    p.add_argument("--inpaint_budget", type=int, default=1000, help="score evaluations per image")
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_readme", action="store_true")
    args = p.parse_args(argv)
    b = Bench(args)
    t0 = time.perf_counter()
    rows = PARTS[args.part](b, args)
    record = {"part": args.part, "device": device_info(), "workdir": os.path.abspath(args.workdir),
              "train_steps": b.model.step, "rows": rows, "seconds": time.perf_counter() - t0,
              "command": "python -m benchmarks.mnist_sampling " + " ".join(argv or sys.argv[1:])}
    write_report(f"mnist_sampling_{args.part}", record, "mnist_sampling", render, "mnist_sampling",
                 readme=not args.no_readme)


if __name__ == "__main__":
    main()
