"""Input pipeline: the hand-written ``sde_jax.data.pipeline.ImageBatches`` against an equivalent grain pipeline.

    python -m benchmarks.input_pipeline [--data_dir ../shared/data/mnist] [--batches 300]

Both turn the same in-memory uint8 MNIST training arrays into the loop's batches of 128: a new permutation each
epoch (batches run across epoch boundaries), uniform dequantisation x + u, u ~ U[0, 1), the [-1, 1] scale of
``sde_jax.data.images.to_model_scale``, and the labels. grain's pipeline is
``MapDataset.source -> shuffle(seed) -> repeat() -> batch(128) -> random_map(scale)``, read by random access
``ds[step]`` (what the loop's ``batch_fn(step, rows)`` needs for exact resume) and, apart, through
``to_iter_dataset()`` (grain's threaded read-ahead). Batches per second over ``--batches`` batches after a
warm-up, three rounds interleaved (median and best), and whether the batch of a step is the same when asked
twice and from a fresh pipeline (determinism, exact resume). Writes ``results/input_pipeline.json`` and the
README section.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

import numpy as np

from benchmarks.common import machine_info, write_readme_section
from sde_jax.data.images import to_model_scale
from sde_jax.data.pipeline import ImageBatches, load_images

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "input_pipeline.json")
README = os.path.join(HERE, "README.md")
BEGIN, END = "<!-- input-pipeline:begin -->", "<!-- input-pipeline:end -->"


class _Rows:
    """grain source: example i is ``{"x": images[i], "y": labels[i]}``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.images[i], "y": self.labels[i]}


def grain_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int) -> Any:
    """The grain ``MapDataset`` of ImageBatches' batches: per-epoch shuffles, dequantised [-1, 1] images and labels;
    batch k is ``ds[k]`` (random access), its noise from grain's per-index generator."""
    import grain

    def scale(batch: dict, rng: np.random.Generator) -> dict:
        u = rng.random(batch["x"].shape, np.float32)
        return {"x": to_model_scale(batch["x"], "minus_one_one", noise=u), "y": batch["y"].astype(np.int32)}

    ds = grain.MapDataset.source(_Rows(images, labels)).shuffle(seed=seed).repeat()
    return ds.batch(batch_size, drop_remainder=True).random_map(scale, seed=seed)


def _rate(next_batch: Callable[[int], Any], start: int, n: int) -> float:
    """Batches per second of ``next_batch(step)`` for steps start .. start + n - 1."""
    t0 = time.perf_counter()
    for step in range(start, start + n):
        next_batch(step)
    return n / (time.perf_counter() - t0)


def _same(a: Any, b: Any) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("x", "y"))


def measure(images: np.ndarray, labels: np.ndarray, batch_size: int, batches: int, warmup: int,
            rounds: int = 3) -> dict:
    """Batches per second of each pipeline (interleaved rounds) and their determinism / resume checks."""
    hand = ImageBatches(images, labels, batch_size, seed=0, scale="minus_one_one", dequantize=True)
    grain_ds = grain_batches(images, labels, batch_size, seed=0)

    def grain_iterator() -> Callable[[int], Any]:
        it = iter(grain_ds.to_iter_dataset())
        return lambda step: next(it)

    candidates = {"ImageBatches (batch_fn(step))": lambda: hand.__call__,
                  "grain MapDataset (ds[step])": lambda: grain_ds.__getitem__,
                  "grain to_iter_dataset (read-ahead)": grain_iterator}
    rates: dict[str, list[float]] = {k: [] for k in candidates}
    for r in range(rounds):
        for name, make in candidates.items():
            fn = make()
            _rate(fn, 0, warmup)
            rates[name].append(_rate(fn, warmup + r * batches, batches))
    step = 1234  # past the first epoch (469 batches of 128)
    checks = {
        "ImageBatches": {"deterministic": _same(hand(step), hand(step)),
                         "exact_resume": _same(hand(step), ImageBatches(images, labels, batch_size, seed=0)(step))},
        "grain": {"deterministic": _same(grain_ds[step], grain_ds[step]),
                  "exact_resume": _same(grain_ds[step], grain_batches(images, labels, batch_size, seed=0)[step])},
    }
    return {"batches_per_sec": {k: {"median": float(np.median(v)), "best": float(max(v)), "rounds": v}
                                for k, v in rates.items()}, "checks": checks}


def markdown(result: dict) -> str:
    s = result["settings"]
    m = result["machine"]
    rows = [f"| {k} | {v['median']:.0f} | {v['best']:.0f} |" for k, v in result["batches_per_sec"].items()]
    return "\n".join([
        "## Input pipeline (`python -m benchmarks.input_pipeline`)",
        "",
        f"MNIST training images in memory (uint8), batches of {s['batch_size']} with labels, per-epoch shuffles, "
        "uniform dequantisation, [-1, 1] scale. Batches/s over "
        f"{s['batches']} batches after {s['warmup']} warm-up batches, {s['rounds']} interleaved rounds. "
        f"{m['cpu']} ({m['cpu_cores']} cores, shared), load {m['load_average_1m_start']:.1f} at the start.",
        "",
        "| pipeline | batches/s (median) | best |",
        "|---|---:|---:|",
        *rows,
        "",
        "Same batch of a step when asked twice and from a fresh pipeline (deterministic, exact resume): "
        + ", ".join(f"{k} {'yes' if all(v.values()) else 'NO'}" for k, v in result["checks"].items())
        + f". {result['decision']}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist"))
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no_readme", action="store_true")
    args = parser.parse_args()
    images, labels = load_images("mnist", "train", args.data_dir, (28, 28, 1))
    result = {"machine": machine_info(),
              "settings": {"data": "mnist train", "batch_size": args.batch_size, "batches": args.batches,
                           "warmup": args.warmup, "rounds": args.rounds}}
    result.update(measure(images, labels, args.batch_size, args.batches, args.warmup, args.rounds))
    rates = result["batches_per_sec"]
    hand = rates["ImageBatches (batch_fn(step))"]["median"]
    grain_best = max(v["median"] for k, v in rates.items() if k.startswith("grain"))
    result["decision"] = (
        f"Kept ImageBatches: grain's fastest form gives {grain_best / hand:.2f}x its batches/s (grain reads and "
        "stacks the batch example by example in Python; ImageBatches gathers it with one numpy index)."
        if grain_best < hand else f"grain is as fast ({grain_best / hand:.2f}x ImageBatches' batches/s).")
    print(json.dumps({k: result[k] for k in ("batches_per_sec", "checks", "decision")}, indent=2))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=2)
    if not args.no_readme:
        write_readme_section(markdown(result), BEGIN, END, README)


if __name__ == "__main__":
    main()
