"""Data-set NLL of a trained checkpoint: nats per example on a toy 2-D set, bits/dim on integer images.

    python -m benchmarks.nll_checkpoint --workdir DIR --dataset 8gaussians      # toy 2-D run: nats
    python -m benchmarks.nll_checkpoint --workdir DIR --dataset mnist --data_file test.npz   # integer images
    python -m benchmarks.nll_checkpoint --workdir runs/mnist --dataset mnist --data_dir ../shared/data/mnist \
        --n_examples 10000 --batch_size 125                  # test-set bits/dim of an experiments.mnist run

PF-ODE + Hutchinson (``sj.log_likelihood``) over the data set in padded batches (``sj.evaluate_nll`` /
``sj.evaluate_bpd``, uniform dequantization). A class-conditional network is evaluated with its null label, i.e.
as the unconditional model p(x). Writes ``benchmarks/results/nll_checkpoint_<dataset>.json`` and refreshes the
table between the ``nll_checkpoint`` markers of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import numpy as np

import sde_jax as sj
from benchmarks.common import add_solve_args, run_benchmark, device_info, fmt, load_note
from sde_jax.data import ENTROPY, TOY_SETS, sample_toy
from sde_jax.train.checkpoint import restore
from sde_jax.train.metrics import logged_train_seconds, read_metrics


def train_seconds(workdir: str) -> float | None:
    """Wall seconds of the training steps of ``workdir``, from its metrics log (``logged_train_seconds``)."""
    return logged_train_seconds(read_metrics(workdir))


def integer_images(args: argparse.Namespace) -> np.ndarray:
    """The evaluation images (uint8 NHWC): a data set's test split (``--data_dir`` or tfds) or an npz file."""
    if args.data_file is None:
        from sde_jax.data.pipeline import load_images

        k, _ = load_images(args.dataset, "test", args.data_dir)
    else:
        with np.load(args.data_file) as f:
            k = f[f.files[0]] if "x" not in f.files else f["x"]
    k = np.asarray(k)[: args.n_examples]
    return k[..., None] if k.ndim == 3 else k  # (N, H, W) -> NHWC


def run(args: argparse.Namespace) -> dict:
    model = restore(args.workdir)
    sde, cfg = model.sde, model.config
    key = jax.random.key(args.seed)
    divergence = args.divergence
    batch_fn = functools.partial(sj.log_likelihood, model.score_fn(), sde, divergence=divergence,
                                 n_probes=args.n_probes, eps=args.eps, rtol=args.rtol, atol=args.atol)
    common = {"dataset": args.dataset, "device": device_info(), "train_steps": model.step,
              "train_seconds": train_seconds(args.workdir), "workdir": os.path.abspath(args.workdir),
              "model": {"name": cfg.model.name, "n_params": int(sum(a.size for a in jax.tree.leaves(model.params))),
                        "num_classes": cfg.model.get("num_classes"), "p_uncond": cfg.loss.get("p_uncond", 0.0),
                        "weighting": cfg.loss.weighting}}
    settings = {"sde": type(sde).__name__, "divergence": divergence, "n_probes": args.n_probes,
                "eps": args.eps, "rtol": args.rtol, "atol": args.atol, "batch_size": args.batch_size,
                "seed": args.seed, "solver": "tsit5 (adaptive)"}
    if args.data_file is None and args.data_dir is None and args.dataset in TOY_SETS:
        x = np.asarray(sample_toy(args.dataset, jax.random.fold_in(key, 0), args.n_examples))
        res = sj.evaluate_nll(batch_fn, x, jax.random.fold_in(key, 1), batch_size=args.batch_size)
        return {**common, "kind": "checkpoint", "nll_nats": res.mean, "nll_nats_stderr": res.stderr,
                "nll_nats_per_dim": res.mean / x.shape[1], "data_entropy_nats": ENTROPY.get(args.dataset),
                "n_examples": res.n_examples, "nfe_mean": res.nfe_mean, "seconds": res.seconds, "settings": settings}
    k = integer_images(args)
    num_bins = int(cfg.data.get("num_bins", 256))
    data_range = (0.0, 1.0) if cfg.data.get("scale", "minus_one_one") == "zero_one" else (-1.0, 1.0)
    res = sj.evaluate_bpd(batch_fn, k, jax.random.fold_in(key, 1), num_bins=num_bins, data_range=data_range,
                          n_dequant=args.n_dequant, batch_size=args.batch_size)
    settings.update(num_bins=num_bins, data_range=list(data_range), n_dequant=args.n_dequant,
                    dequantization="uniform")
    return {**common, "kind": "checkpoint_bpd", "bpd": res.mean, "bpd_stderr": res.stderr,
            "n_examples": res.n_examples, "nfe_mean": res.nfe_mean, "seconds": res.seconds, "settings": settings}


def readme_section(rows: list[tuple[str, dict]]) -> str:
    """Tables of every checkpoint record: bits/dim of image models, nats of toy 2-D models."""
    out = ["## NLL of trained models (`python -m benchmarks.nll_checkpoint`)", ""]
    images = [(n, r) for n, r in rows if r["kind"] == "checkpoint_bpd"]
    if images:
        out += ["Test-set bits/dim of trained image models (`experiments.mnist`): PF-ODE + Hutchinson (one Rademacher "
                "probe per image), uniform dequantization, adaptive Tsit5 at the stated tolerances; +- is the standard "
                "error over images. A class-conditional network is evaluated with its null label, i.e. as the "
                "unconditional model p(x).", "",
                "| result | data | n | bpd | NFE | rtol/atol | params | train steps | train time | eval time | "
                "device |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in images:
            s, tt = r["settings"], r.get("train_seconds")
            out.append(f"| {n} | {r['dataset']} | {r['n_examples']} | {r['bpd']:.3f} +- {r['bpd_stderr']:.3f} | "
                       f"{r['nfe_mean']:.0f} | {s['rtol']:g}/{s['atol']:g} | {r['model']['n_params'] / 1e6:.2f}M | "
                       f"{r['train_steps']} | {'-' if tt is None else f'{tt / 60:.0f} min'} | "
                       f"{r['seconds'] / 60:.0f} min | {r['device']} |")
        out.append("")
    toys = [(n, r) for n, r in rows if r["kind"] == "checkpoint"]
    if toys:
        out += ["NLL (nats per example, +- standard error) of trained toy 2-D models on fresh samples of their data "
                "set, beside the data's differential entropy (the best possible NLL).", "",
                "| result | data | n | NLL (nats) | data entropy | NFE | train steps | s | device |",
                "|---|---|---|---|---|---|---|---|---|"]
        for n, r in toys:
            out.append(f"| {n} | {r['dataset']} | {r['n_examples']} | {fmt(r['nll_nats'])} +- "
                       f"{fmt(r['nll_nats_stderr'])} | {fmt(r.get('data_entropy_nats'))} | {r['nfe_mean']:.0f} | "
                       f"{r['train_steps']} | {r['seconds']:.1f} | {r['device']} |")
        out.append("")
    return "\n".join(out + load_note(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="training workdir with checkpoints")
    p.add_argument("--dataset", required=True, help="toy 2-D name (nats) or image set (bits/dim)")
    p.add_argument("--data_file", help="npz of integer images (N, H, W[, C])")
    p.add_argument("--data_dir", help="folder of IDX files (MNIST format) for --dataset mnist|fashion_mnist; "
                   "without it named image sets come from tensorflow-datasets")
    p.add_argument("--divergence", choices=["exact", "hutchinson"], default="hutchinson")
    p.add_argument("--n_probes", type=int, default=1)
    p.add_argument("--n_examples", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=200)
    p.add_argument("--n_dequant", type=int, default=1)
    add_solve_args(p, "nll_checkpoint_<dataset>")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv), parse_args, run, lambda a: f"nll_checkpoint_{a.dataset}", "nll_checkpoint_", readme_section, "nll_checkpoint",
                  None)


if __name__ == "__main__":
    main()
