"""Controllable generation on MNIST: classifier-free guidance accuracy against w, classifier guidance with a
noise-conditional classifier, and inpainting of masked test digits.

    python -m benchmarks.guidance --workdir runs/mnist --classifier runs/classifier \\
        --noisy_classifier runs/noisy_classifier --data_dir ../shared/data/mnist

``--workdir`` is a class-conditional ``experiments.mnist`` run (trained with label dropout); ``--classifier`` a
clean classifier and ``--noisy_classifier`` a noise-conditional one, both from ``experiments.mnist_classifier``.
For each guidance weight w, ``--per_class`` samples of every digit are drawn with (1 + w) s(x|y) - w s(x) and the
clean classifier labels them: accuracy = fraction labelled with the requested digit. Classifier guidance uses the
unconditional score (null label) plus scale * grad log p_t(y | x_t) of the noisy classifier. Inpainting keeps the
top half of test digits and samples the bottom half (replacement PC, and RePaint resampling).

Writes ``benchmarks/results/guidance_mnist.json``, the table between the ``guidance`` markers of
``benchmarks/README.md`` and the PNG grids (largest w, largest scale, inpainting) in ``experiments/figures/``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj
from benchmarks.common import device_info, write_readme_section
from sde_jax.data.images import from_model_scale, save_grid, to_model_scale
from sde_jax.data.pipeline import load_images
from sde_jax.train.checkpoint import restore

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.environ.get("SDE_JAX_RESULTS_DIR")  # tests write the record and the grids elsewhere
RESULTS = os.path.join(OUT or os.path.join(HERE, "results"), "guidance_mnist.json")
README = os.path.join(HERE, "README.md")
FIGURES = OUT or os.path.join(os.path.dirname(HERE), "experiments", "figures")
BEGIN, END = "<!-- guidance:begin -->", "<!-- guidance:end -->"


def sample_classes(score_for, sde, key, labels: np.ndarray, shape, method: str, steps: int, batch: int):
    """Samples for ``labels`` in equal batches; ``score_for(y)`` builds the (guided) score of a batch of labels.
    The score is a pytree with the labels as leaves, so all batches share one compilation of ``sj.sample``."""
    if len(labels) % batch:
        raise ValueError(f"{len(labels)} labels do not split into batches of {batch}.")

    def draw(y, k):
        return sj.sample(score_for(y), sde, k, (y.shape[0], *shape), method=method, steps=steps)[0]

    return np.concatenate([np.asarray(draw(jnp.asarray(labels[i:i + batch]), jax.random.fold_in(key, i)))
                           for i in range(0, len(labels), batch)])


def run(args: argparse.Namespace) -> dict:
    from sde_jax.eval import clean_time, load_classifier, predict

    model = restore(args.workdir)
    cfg, sde = model.config, model.sde
    k = cfg.model.num_classes
    if k is None:
        raise SystemExit(f"{args.workdir} holds an unconditional model; guidance needs a class-conditional one.")
    shape = tuple(cfg.data.shape)
    c_apply, c_params, c_config = load_classifier(args.classifier)

    def classify(x: np.ndarray) -> np.ndarray:  # the clean classifier's labels
        return predict(c_apply, c_params, x, clean_time(c_config))

    labels = np.repeat(np.arange(k, dtype=np.int32), args.per_class)
    key = jax.random.key(args.seed)
    param = cfg.loss.parameterization
    result = {"device": device_info(), "workdir": os.path.abspath(args.workdir), "train_steps": model.step,
              "train": {"loss": cfg.loss.to_dict(), "batch_size": cfg.train.batch_size, "lr": cfg.train.lr},
              "sampler": {"method": args.method, "steps": args.steps}, "per_class": args.per_class, "cfg": [],
              "classifier": os.path.abspath(args.classifier)}

    pick = np.concatenate([np.where(labels == c)[0][:10] for c in range(k)])  # 10 per digit for the grids

    def guided_run(score_for, figure: str | None) -> dict:
        """Sample ``labels`` with ``score_for(y)``, label the samples with the clean classifier, save a grid."""
        t0 = time.perf_counter()
        x = sample_classes(score_for, sde, key, labels, shape, args.method, args.steps, args.batch)
        pred = classify(x)
        acc = float(np.mean(pred == labels))
        if figure:
            save_grid(from_model_scale(x[pick], cfg.data.scale), k, os.path.join(FIGURES, figure))
        return {"accuracy": acc, "accuracy_stderr": float(np.sqrt(acc * (1 - acc) / len(labels))),
                "per_class_accuracy": [float(np.mean(pred[labels == c] == c)) for c in range(k)],
                "seconds": time.perf_counter() - t0}

    def uncond_score(y):  # s(x, t | null): the same network with the null label
        return sj.score_fn(model.model.apply, model.params, sde, param, jnp.full_like(y, k))

    # --- classifier-free guidance: one network, s(x|y) and s(x|null)
    for w in args.ws:
        r = guided_run(lambda y, w=w: model.score_fn(y) if w == 0 else
                       sj.classifier_free_guidance(model.score_fn(y), uncond_score(y), w),
                       f"mnist_cfg_w{w:g}.png" if w == max(args.ws) else None)
        result["cfg"].append({"w": w, **r})
        print(f"CFG w={w}: accuracy {r['accuracy']:.3f}", flush=True)
    uncond_x = sample_classes(uncond_score, sde, key, labels, shape, args.method, args.steps, args.batch)
    result["unconditional_class_histogram"] = np.bincount(classify(uncond_x), minlength=k).tolist()

    # --- classifier guidance with the noise-conditional classifier, on the unconditional score
    if args.noisy_classifier:
        from sde_jax.classifier import log_prob_fn as make_log_prob

        apply_fn, params = load_classifier(args.noisy_classifier)[:2]
        log_prob = make_log_prob(apply_fn, params)
        result["classifier_guidance"] = []
        for scale in args.scales:
            r = guided_run(lambda y, scale=scale: sj.classifier_guidance(uncond_score(y), log_prob, y, scale),
                           f"mnist_classifier_guidance_s{scale:g}.png" if scale == max(args.scales) else None)
            result["classifier_guidance"].append({"scale": scale, **r})
            print(f"classifier guidance scale={scale}: accuracy {r['accuracy']:.3f}", flush=True)

    # --- inpainting: top half known, bottom half sampled (unconditional score)
    test, test_labels = load_images(cfg.data.name, "test", args.data_dir)
    x_known = to_model_scale(test[: args.inpaint], cfg.data.scale)
    mask = np.zeros((1, *shape), np.float32)
    mask[:, : shape[0] // 2] = 1.0
    uncond = uncond_score(jnp.zeros((args.inpaint,), jnp.int32))
    rows = [from_model_scale(x_known * mask + (1 - mask) * -1.0, cfg.data.scale)]
    result["inpainting"] = []
    for name, opts in (("replacement", {"method": "replacement"}), ("repaint_u4", {"method": "repaint", "n_resample": 4})):
        t0 = time.perf_counter()
        x, info = sj.inpaint(uncond, sde, jax.random.fold_in(key, 5), x_known, mask, steps=args.inpaint_steps,
                             n_corrector=1, **opts)
        pred = classify(x)
        acc = float(np.mean(pred == test_labels[: args.inpaint]))
        result["inpainting"].append({"method": name, "nfe": int(info["nfe"]), "seconds": time.perf_counter() - t0,
                                     "label_kept_accuracy": acc})
        print(f"inpainting {name}: the classifier reads the original digit in {acc:.2f} of completions", flush=True)
        rows.append(from_model_scale(x, cfg.data.scale))
    rows.append(test[: args.inpaint])
    save_grid(np.concatenate(rows), len(rows), os.path.join(FIGURES, "mnist_inpainting.png"))
    result["inpainting_grid_rows"] = ["masked (top half known)", "replacement PC", "RePaint U=4", "original"]
    return result


def readme_section(r: dict) -> str:
    out = ["## Guidance on MNIST (`python -m benchmarks.guidance`)", "",
           f"Class-conditional `experiments.mnist` model ({r['train_steps']} steps at batch "
           f"{r['train']['batch_size']}, {r['train']['loss']['weighting']} weighting, label dropout "
           f"{r['train']['loss']['p_uncond']:g}), "
           f"{r['per_class']} samples per digit, {r['sampler']['method']} with {r['sampler']['steps']} steps; "
           "accuracy = fraction of samples that the project's clean MNIST classifier labels with the requested digit "
           f"(+- binomial standard error). Device: {r['device']}.", "",
           "| guidance | weight | accuracy | seconds |", "|---|---|---|---|"]
    for c in r["cfg"]:
        out.append(f"| classifier-free | w = {c['w']:g} | {c['accuracy']:.3f} +- {c['accuracy_stderr']:.3f} | "
                   f"{c['seconds']:.0f} |")
    for c in r.get("classifier_guidance", []):
        out.append(f"| noise-conditional classifier | scale = {c['scale']:g} | {c['accuracy']:.3f} +- "
                   f"{c['accuracy_stderr']:.3f} | {c['seconds']:.0f} |")
    out += ["", f"Unconditional samples (null label), classifier's histogram over digits: "
            f"{r['unconditional_class_histogram']}.", ""]
    for c in r.get("inpainting", []):
        out.append(f"Inpainting ({c['method']}, {c['nfe']} NFE): the classifier reads the original digit in "
                   f"{c['label_kept_accuracy']:.2f} of completions.")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="class-conditional experiments.mnist run")
    p.add_argument("--classifier", required=True, help="clean classifier workdir (experiments.mnist_classifier)")
    p.add_argument("--noisy_classifier", help="noise-conditional classifier workdir, for classifier guidance")
    p.add_argument("--data_dir", help="MNIST IDX folder (else tensorflow-datasets)")
    p.add_argument("--ws", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--scales", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 4.0])
    p.add_argument("--per_class", type=int, default=50)
    p.add_argument("--method", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--inpaint", type=int, default=16, help="test digits to inpaint")
    p.add_argument("--inpaint_steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_readme", action="store_true", help="do not refresh benchmarks/README.md")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["seconds_total"] = time.perf_counter() - start
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=2)
    if not args.no_readme:
        write_readme_section(readme_section(result), BEGIN, END, README)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
