"""Latent diffusion against pixel-space diffusion on MNIST / Fashion-MNIST: sampling time at equal NFE, sample
quality, training cost and bits/dim, one row per model.

    python -m benchmarks.latent --workdir runs/latent_mnist --data_dir ../shared/data/mnist \\
        --pixel_bpd_record benchmarks/results/mnist_nll.json
    python -m benchmarks.latent --workdir runs/latent_fmnist --data_dir ../shared/data/fashion_mnist \\
        --pixel_workdir runs/fmnist_cfg --classifier runs/classifier_fmnist

``--workdir`` is an ``experiments.latent`` run (read with ``experiments.latent.load_latent_model``, which also
loads the frozen VAE it names and refuses a VAE whose weights or scale are not the ones it was trained on);
``--pixel_workdir`` a class-conditional ``experiments.mnist`` run trained with label dropout (default: the committed
``experiments/checkpoints/mnist_cfg``, MNIST only); ``--classifier`` a clean ``experiments.mnist_classifier`` run
on the same data set (default: the committed ``experiments/checkpoints/mnist_classifier``, MNIST only).

* **Sampling time at equal NFE**: both models draw the same ``--n_samples`` class-conditional samples (labels
  0, 1, ..., 9, 0, 1, ... so balanced), same sampler (``--method``, ``--steps``), classifier-free guidance weight
  ``--w``, same batch size ``--batch`` (a short last batch is padded to it, so each model compiles once). Each
  model draws one batch first (compilation, not timed); then the two are timed batch by batch in turn (the order
  alternating), each call until its uint8 images are on the host, so the latent model's time includes the VAE
  decode (its share is recorded). Seconds per image = summed batch times / n; the JSON also has every batch time,
  the process CPU time and the number of compilations during timing (0 expected).
* **Sample quality**: the classifier's accuracy on the samples (+- binomial standard error) and the Fréchet
  distance in its penultimate features (not FID) to the first n test images, beside the floor of those test
  images against the next n (``sde_jax.eval``: ``predict``, ``embed``, ``feature_distances``, as
  ``benchmarks.mnist_sampling``). Both models' samples are read as 8-bit images (the pixel model's rounded to
  the nearest bin, the latent model's are the decoder's location rounded to its bin).
* **Training cost**: steps and wall time of each run from its ``metrics.jsonl`` (the summed logging intervals,
  which survive resumes; ``eval.json``'s ``train_seconds`` where there is no metrics log); for the latent model the
  VAE's (``experiments.vae``) separately and the sum.
* **Bits/dim** (bounds on -log2 P(x) / D of the 8-bit test images): for the latent model the latent diffusion
  bound (``sde_jax.latent.latent_bound``: VAE reconstruction + encoder entropy + PF-ODE latent prior) from its
  ``eval.json``, or recomputed here on ``--bpd_examples`` test images (``sde_jax.eval.latent.evaluate_latent_bound``,
  Hutchinson, the run's ``eval.rtol`` / ``eval.atol`` unless given). The sampled pixel model has no likelihood
  record; ``--pixel_bpd_record`` (a ``benchmarks.mnist_nll`` record) adds the ELBO and PF-ODE rows of *its* VDM
  model, which is a different pixel model (``experiments.mnist_likelihood``), and the table says so.

Writes ``benchmarks/results/latent_<dataset>.json`` (``--name``; ``$SDE_JAX_RESULTS_DIR`` moves it), a grid of
samples (two rows per model, digits 0-9 across) to ``experiments/figures/latent_<dataset>_samples.png`` (also moved
by ``$SDE_JAX_RESULTS_DIR``), and the table between the ``latent`` markers of ``benchmarks/README.md``
(``--no_readme``: not).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import device_info, fmt, load_note, machine_info, run_benchmark

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_PIXEL = os.path.join(ROOT, "experiments", "checkpoints", "mnist_cfg")
DEFAULT_CLASSIFIER = os.path.join(ROOT, "experiments", "checkpoints", "mnist_classifier")
DATASET_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
PIXEL_BPD_NOTE = ("from `{record}`: the VDM model of `experiments.mnist_likelihood` ({steps} steps), a different "
                  "pixel model from the one sampled here")


# ------------------------------------------------------------------------------------------ small pure pieces
def balanced_labels(n: int, num_classes: int) -> np.ndarray:
    """Labels 0, 1, ..., K-1, 0, 1, ... (n of them, int32): every class n // K or n // K + 1 times."""
    if n < 1 or num_classes < 1:
        raise ValueError(f"need n >= 1 and num_classes >= 1; got {n} and {num_classes}.")
    return (np.arange(n) % num_classes).astype(np.int32)


def padded(y: np.ndarray, batch: int) -> np.ndarray:
    """``y`` padded to ``batch`` entries by repeating its last one (so a short last batch reuses the compiled
    sampler); ValueError if it is longer."""
    if not 1 <= len(y) <= batch:
        raise ValueError(f"a batch of {len(y)} labels does not fit batch size {batch}.")
    return np.concatenate([y, np.repeat(y[-1:], batch - len(y))])


def train_time(metrics: list[dict], eval_record: dict | None) -> tuple[float | None, str | None]:
    """(seconds, source) of a run's training: the sum of its logging intervals (interval steps / steps_per_sec)
    from its metrics log, which covers every session of a resumed run; else ``eval.json``'s ``train_seconds`` (the
    last session's loop); (None, None) if neither has it."""
    from sde_jax.train.metrics import logged_train_seconds

    total = logged_train_seconds(metrics)
    if total is not None:
        return total, "metrics.jsonl"
    if eval_record and eval_record.get("train_seconds") is not None:
        return float(eval_record["train_seconds"]), "eval.json"
    return None, None


def pixel_bpd_rows(record: dict) -> list[dict]:
    """The VDM model's ELBO and PF-ODE rows of a ``benchmarks.mnist_nll`` record, each as {label, bpd,
    bpd_stderr, n, nfe} (label: the row's model name without the ``VDM (this repo), `` prefix)."""
    out = []
    for r in record.get("rows", []):
        name = r.get("model", "")
        if not name.startswith("VDM") or not ("ELBO" in name or "PF-ODE" in name):
            continue
        label = name.split(", ", 1)[1] if ", " in name else name
        out.append({"label": label, "bpd": r["bpd"], "bpd_stderr": r.get("bpd_stderr"), "n": r.get("n"),
                    "nfe": r.get("nfe"), "bound": r.get("bound")})
    return out


def human_seconds(s: float | None) -> str:
    """``-``, ``42 s``, ``11 min`` or ``1.5 h``."""
    if s is None:
        return "-"
    if s < 600:
        return f"{s:.0f} s"
    if s < 3 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def bpd_cell(b: dict | None) -> str:
    return "-" if not b else f"{b['bpd']:.3f} +- {b['bpd_stderr']:.3f}"


# ------------------------------------------------------------------------------------------ the runs' records
def read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def training(workdir: str, step: int) -> dict:
    """Steps and wall time of the run in ``workdir`` (its latest checkpoint's step)."""
    from sde_jax.train.metrics import read_metrics

    metrics = read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    seconds, source = train_time(metrics, read_json(os.path.join(workdir, "eval.json")))
    return {"workdir": os.path.abspath(workdir), "train_steps": int(step), "train_seconds": seconds,
            "train_seconds_source": source}


def n_params(tree: Any) -> int:
    import jax

    return int(sum(np.size(a) for a in jax.tree.leaves(tree)))


# ------------------------------------------------------------------------------------------ the benchmark
class Model:
    """One side of the comparison: ``draw(key, y) -> (uint8 images, seconds of the sampler alone)`` for a batch
    of labels ``y`` (guidance weight ``w``), everything up to the host images."""

    def __init__(self, restored: Any, image_scale: str, args: argparse.Namespace, vae: Any = None):
        self.r, self.vae, self.args, self.image_scale = restored, vae, args, image_scale
        self.k = restored.config.model.get("num_classes")
        self.shape = tuple(restored.config.data.shape)

    def score(self, y):
        import jax.numpy as jnp

        import sde_jax as sj

        cond = self.r.score_fn(y)
        if self.args.w == 0:
            return cond
        return sj.classifier_free_guidance(cond, self.r.score_fn(jnp.full_like(y, self.k)), self.args.w)

    def draw(self, key, y: np.ndarray) -> tuple[np.ndarray, float, int]:
        import jax
        import jax.numpy as jnp

        import sde_jax as sj
        from sde_jax.data.images import from_model_scale

        t0 = time.perf_counter()
        y = jnp.asarray(y, jnp.int32)
        x, info = sj.sample(self.score(y), self.r.sde, key, (len(y), *self.shape), method=self.args.method,
                            steps=self.args.steps)
        x = jax.block_until_ready(x)
        sampled = time.perf_counter() - t0
        if self.vae is None:
            images = from_model_scale(x, self.image_scale)
        else:
            from experiments.latent import decode

            images = decode(self.vae, x)  # the decoder's location at z = u / c, as uint8
        return np.asarray(images), sampled, int(np.asarray(info["nfe"]))


def timed_draws(models: dict[str, Model], labels: np.ndarray, batch: int, seed: int) -> dict[str, dict]:
    """Every model's samples of ``labels`` in batches of ``batch``, after one untimed warm-up batch each, timed
    batch by batch in turn (alternating which goes first)."""
    import jax

    from sde_jax.eval import count_compiles

    key = jax.random.key(seed)
    out = {name: {"images": [], "wall": [], "cpu": [], "sampler": [], "nfe": None} for name in models}
    for name, m in models.items():  # compile (sampler, guidance, decoder) at the batch shape
        t0 = time.perf_counter()
        m.draw(jax.random.fold_in(key, 10**6), padded(labels[:batch], batch))
        out[name]["warmup_seconds"] = time.perf_counter() - t0
    names = list(models)
    with count_compiles() as compiles:
        for j, start in enumerate(range(0, len(labels), batch)):
            y = labels[start:start + batch]
            for name in (names if j % 2 == 0 else names[::-1]):
                w0, c0 = time.perf_counter(), time.process_time()
                images, sampled, nfe = models[name].draw(jax.random.fold_in(key, start), padded(y, batch))
                o = out[name]
                o["wall"].append(time.perf_counter() - w0)
                o["cpu"].append(time.process_time() - c0)
                o["sampler"].append(sampled)
                o["images"].append(images[:len(y)])
                o["nfe"] = nfe
    for o in out.values():
        o["images"] = np.concatenate(o["images"])
        o["compiles_during_timing"] = len(compiles)
    return out


def timing_row(o: dict, n: int, batch: int) -> dict:
    wall = float(np.sum(o["wall"]))
    return {"nfe": o["nfe"], "seconds": wall, "seconds_per_image": wall / n,
            "seconds_per_image_best_batch": float(np.min(o["wall"])) / batch,
            "cpu_seconds_per_image": float(np.sum(o["cpu"])) / n,
            "sampler_seconds_per_image": float(np.sum(o["sampler"])) / n,
            "after_sampler_seconds_per_image": (wall - float(np.sum(o["sampler"]))) / n,
            "batch_seconds": [float(s) for s in o["wall"]], "warmup_seconds": o["warmup_seconds"],
            "compiles_during_timing": o["compiles_during_timing"]}


def latent_bpd(args, r, vae, test: np.ndarray) -> dict | None:
    """The latent diffusion bound: recomputed on ``--bpd_examples`` test images, else the run's ``eval.json``."""
    if args.bpd_examples:
        import functools

        import jax
        import jax.numpy as jnp

        from sde_jax.data.images import to_model_scale
        from sde_jax.eval.latent import evaluate_latent_bound
        from sde_jax.latent import latent_bound

        k = r.config.model.get("num_classes")
        bs = min(args.bpd_batch, args.bpd_examples)
        y = None if k is None else jnp.full((bs,), k, jnp.int32)  # the unconditional model (null label)
        rtol = args.rtol if args.rtol is not None else float(r.config.eval.get("rtol", 1e-4))
        atol = args.atol if args.atol is not None else float(r.config.eval.get("atol", 1e-4))
        bound = functools.partial(latent_bound, encode=vae.encode, decoder_nll=vae.decoder_nll, score=r.score_fn(y),
                                  sde=r.sde, scale=vae.scale, divergence="hutchinson", eps=args.eps, rtol=rtol,
                                  atol=atol)
        t0 = time.perf_counter()
        res = evaluate_latent_bound(bound, to_model_scale(test[:args.bpd_examples]), jax.random.key(args.seed + 7),
                                    batch_size=bs, progress=True)
        return {"bpd": res["mean"]["total"], "bpd_stderr": res["stderr"]["total"], "terms": res["mean"],
                "terms_stderr": res["stderr"], "n": res["n_examples"], "nfe": res["nfe_mean"],
                "seconds": time.perf_counter() - t0, "source": "computed here",
                "settings": {"divergence": "hutchinson (1 probe)", "eps": args.eps, "rtol": rtol, "atol": atol,
                             "latents_per_image": 1}}
    ev = read_json(os.path.join(args.workdir, "eval.json")) or {}
    if ev.get("bpd") is None:
        return None
    return {"bpd": ev["bpd"], "bpd_stderr": ev.get("bpd_stderr"), "terms": ev.get("bpd_terms"),
            "terms_stderr": ev.get("bpd_terms_stderr"), "n": ev.get("n_examples"), "nfe": ev.get("nfe_mean"),
            "seconds": None, "source": "eval.json of the latent run",
            "settings": {"rtol": r.config.eval.get("rtol"), "atol": r.config.eval.get("atol")}}


def pixel_bpd(args, dataset: str) -> dict | None:
    if not args.pixel_bpd_record:
        return None
    rec = read_json(args.pixel_bpd_record)
    if rec is None:
        raise SystemExit(f"--pixel_bpd_record {args.pixel_bpd_record} does not exist.")
    if rec.get("dataset", dataset) != dataset:
        raise SystemExit(f"--pixel_bpd_record {args.pixel_bpd_record} is of {rec['dataset']}, not {dataset}.")
    rows = pixel_bpd_rows(rec)
    if not rows:
        raise SystemExit(f"--pixel_bpd_record {args.pixel_bpd_record} has no VDM ELBO or PF-ODE row (run "
                         "benchmarks.mnist_nll with --workdir).")
    model = rec.get("model") or {}
    return {"record": args.pixel_bpd_record, "rows": rows, "model_workdir": model.get("workdir"),
            "model_train_steps": model.get("train_steps"), "model_train_seconds": model.get("train_seconds"),
            "note": "a different pixel model: the VDM likelihood model of experiments.mnist_likelihood"}


def own_pixel_bpd(pixel_dir: str) -> dict | None:
    """The sampled pixel model's own PF-ODE bits/dim (uniform dequantisation, null label), from the ``eval.json``
    that ``experiments.mnist`` writes when ``eval.bpd_examples`` > 0; None if it has none."""
    e = read_json(os.path.join(pixel_dir, "eval.json")) or {}
    if e.get("bpd") is None:
        return None
    return {"bpd": e["bpd"], "bpd_stderr": e["bpd_stderr"], "n": e["n_examples"], "nfe": e.get("nfe_mean"),
            "source": os.path.join(pixel_dir, "eval.json")}


def run(args: argparse.Namespace) -> dict:
    from experiments.latent import load_latent_model
    from sde_jax.data.images import save_grid, to_model_scale
    from sde_jax.data.pipeline import load_images
    from sde_jax.eval import clean_time, embed, feature_distances, load_classifier, predict
    from sde_jax.train.checkpoint import restore

    t_start = time.perf_counter()
    r_lat, vae = load_latent_model(args.workdir)
    dataset = r_lat.config.data.name
    args.dataset = dataset  # the record's default name, latent_<dataset>
    image_shape = tuple(r_lat.config.data.image_shape)
    pixel_dir = args.pixel_workdir or (DEFAULT_PIXEL if dataset == "mnist" else None)
    classifier_dir = args.classifier or (DEFAULT_CLASSIFIER if dataset == "mnist" else None)
    if pixel_dir is None or classifier_dir is None:
        raise SystemExit(f"{args.workdir} is a {dataset} model: pass --pixel_workdir (a class-conditional "
                         f"experiments.mnist run on {dataset}) and --classifier (experiments.mnist_classifier on "
                         f"{dataset}); the committed defaults are MNIST models.")
    r_pix = restore(pixel_dir)
    pc = r_pix.config
    if pc.data.name != dataset or tuple(pc.data.shape) != image_shape:
        raise SystemExit(f"{pixel_dir} models {pc.data.name} {tuple(pc.data.shape)}, the latent run {dataset} "
                         f"{image_shape}: compare models of the same images.")
    k = r_lat.config.model.get("num_classes")
    if k is None or pc.model.get("num_classes") != k:
        raise SystemExit(f"both models must be class-conditional with the same classes (label dropout for "
                         f"guidance); got {k} (latent) and {pc.model.get('num_classes')} (pixel).")
    c_apply, c_params, c_config = load_classifier(classifier_dir)
    if c_config.data.get("name", dataset) != dataset:
        raise SystemExit(f"the classifier in {classifier_dir} was trained on {c_config.data.name}, not {dataset}.")
    c_scale, t_clean = c_config.data.get("scale", "minus_one_one"), clean_time(c_config)
    n = args.n_samples
    data_dir = args.data_dir or r_lat.config.data.get("dir") or None
    test, _ = load_images(dataset, "test", data_dir, image_shape)
    if 2 * n > len(test):
        raise SystemExit(f"--n_samples {n}: the FD floor needs 2 n <= {len(test)} test images.")

    batch = min(args.batch, n)
    labels = balanced_labels(n, k)
    models = {"pixel": Model(r_pix, pc.data.get("scale", "minus_one_one"), args),
              "latent": Model(r_lat, "minus_one_one", args, vae=vae)}
    drawn = timed_draws(models, labels, batch, args.seed)

    real = [np.asarray(to_model_scale(test[i * n:(i + 1) * n], c_scale)) for i in (0, 1)]
    f_real, f_other = (embed(c_apply, c_params, x, t_clean) for x in real)
    kid_size = min(1000, n)
    floor = feature_distances(f_real, f_other, kid_subset_size=kid_size)

    rows = []
    for name, o in drawn.items():
        x = np.asarray(to_model_scale(o["images"], c_scale))
        acc = float(np.mean(predict(c_apply, c_params, x, t_clean) == labels))
        d = feature_distances(f_real, embed(c_apply, c_params, x, t_clean), kid_subset_size=kid_size)
        row = {"model": name, **timing_row(o, n, batch), "accuracy": acc,
               "accuracy_stderr": math.sqrt(acc * (1 - acc) / n), "fd_classifier": d["fd_classifier"],
               "kid_classifier": d["kid_classifier"], "fd_floor": floor["fd_classifier"],
               "kid_floor": floor["kid_classifier"]}
        if name == "pixel":
            tr = training(pixel_dir, r_pix.step)
            row.update(label=f"pixel U-Net ({os.path.basename(os.path.normpath(pixel_dir))})",
                       params=n_params(r_pix.params), network=dict(pc.model), **tr,
                       train_seconds_total=tr["train_seconds"], bpd=own_pixel_bpd(pixel_dir),
                       pixel_bpd=pixel_bpd(args, dataset))
        else:
            tr = training(args.workdir, r_lat.step)
            vtr = training(vae.directory, vae.step)
            vae_eval = read_json(os.path.join(vae.directory, "eval.json")) or {}
            parts = [tr["train_seconds"], vtr["train_seconds"]]
            row.update(label=f"latent U-Net + VAE ({os.path.basename(os.path.normpath(args.workdir))})",
                       params=n_params(r_lat.params), network=dict(r_lat.config.model), **tr,
                       vae={**vtr, "params": n_params(vae.params), "latent_shape": list(vae.latent_shape),
                            "scale": vae.scale, "fingerprint": vae.fingerprint,
                            "recon_bpd": vae_eval.get("recon_bpd"), "psnr_db": vae_eval.get("psnr_db")},
                       train_seconds_total=None if None in parts else sum(parts),
                       bpd=latent_bpd(args, r_lat, vae, test))
        rows.append(row)
        print(f"{row['label']}: {row['seconds_per_image'] * 1e3:.2f} ms/image (NFE {row['nfe']}), accuracy "
              f"{acc:.3f} +- {row['accuracy_stderr']:.3f}, FD {row['fd_classifier']:.3f} (floor "
              f"{row['fd_floor']:.3f}), {row['compiles_during_timing']} compiles while timed", flush=True)
    pixel, latent = rows
    ratio = pixel["seconds_per_image"] / latent["seconds_per_image"]
    print(f"pixel / latent time per image: {ratio:.2f}x", flush=True)

    figure = None
    if n >= 2 * k:
        figures = os.environ.get("SDE_JAX_RESULTS_DIR") or os.path.join(ROOT, "experiments", "figures")
        os.makedirs(figures, exist_ok=True)
        figure = os.path.join(figures, f"latent_{dataset}_samples.png")
        save_grid(np.concatenate([drawn["pixel"]["images"][:2 * k], drawn["latent"]["images"][:2 * k]]), 4, figure)
    return {"kind": "latent", "dataset": dataset, "command": args.command, "device": device_info(),
            "machine": machine_info(), "sampler": {"method": args.method, "steps": args.steps, "w": args.w,
                                                    "nfe": latent["nfe"]},
            "n_samples": n, "batch": batch, "classifier": os.path.abspath(classifier_dir),
            "test_data": data_dir, "rows": rows, "ratio_pixel_over_latent": ratio, "figure": figure,
            "seconds": time.perf_counter() - t_start}


# ------------------------------------------------------------------------------------------ the README table
def render_record(name: str, r: dict) -> list[str]:
    s = r["sampler"]
    title = DATASET_TITLES.get(r["dataset"], r["dataset"])
    out = [f"### {title} (`{name}.json`)", "",
           f"Sampler: {s['method']}, {s['steps']} steps ({s['nfe']} NFE), classifier-free guidance w = {s['w']:g}, "
           f"{r['n_samples']} class-conditional samples (labels 0-9 in turn), batch {r['batch']} for both; times "
           f"are after a warm-up compile, the two models timed batch by batch in turn, up to uint8 images on the "
           f"host (the latent model's include the VAE decode, its share in brackets); with guidance each score "
           f"evaluation is two network passes (class and null label) for both models. Device: {r['device']}. "
           f"Command: `{r['command']}`.", "",
           "| model | parameters | NFE | ms / image | pixel / latent | accuracy | classifier-feature FD (floor) | "
           "train steps | train time | bits/dim |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    pixel_s = next(x["seconds_per_image"] for x in r["rows"] if x["model"] == "pixel")
    for x in r["rows"]:
        ms = f"{x['seconds_per_image'] * 1e3:.2f}"
        if x["model"] == "latent":
            ms += f" ({x['after_sampler_seconds_per_image'] * 1e3:.2f})"
            v = x["vae"]
            params = f"{millions(x['params'])} + VAE {millions(v['params'])}"
            steps = f"{x['train_steps']} + VAE {v['train_steps']}"
            train = (f"{human_seconds(x['train_seconds'])} + VAE {human_seconds(v['train_seconds'])} = "
                     f"{human_seconds(x['train_seconds_total'])}")
            b = x.get("bpd")
            bpd = "-" if not b else f"{bpd_cell(b)} (latent bound, {b['n']} images)"
        else:
            params, steps, train = millions(x["params"]), str(x["train_steps"]), human_seconds(x["train_seconds"])
            pb, b = x.get("pixel_bpd"), x.get("bpd")
            bpd = "-" if not b else f"{bpd_cell(b)} (PF-ODE, uniform dequantisation, {b['n']} images)"
            if pb:
                bpd = "; ".join([bpd] * bool(b) + [f"{q['label']} {bpd_cell(q)} ({q['n']} images)"
                                                    for q in pb["rows"]]) + " [*]"
                notes.append("[*] " + PIXEL_BPD_NOTE.format(record=pb["record"], steps=pb["model_train_steps"])
                             + ".")
        ratio = pixel_s / x["seconds_per_image"]
        out.append(f"| {x['label']} | {params} | {x['nfe']} | {ms} | {ratio:.2f}x | {x['accuracy']:.3f} +- "
                   f"{x['accuracy_stderr']:.3f} | {x['fd_classifier']:.3f} ({x['fd_floor']:.3f}) | {steps} | "
                   f"{train} | {bpd} |")
    out.append("")
    if notes:
        out += notes + [""]
    if r.get("figure"):
        rel = os.path.relpath(r["figure"], HERE)
        out += [f"![samples]({rel})", "", "Rows: pixel model (two), latent model (two); labels 0-9 across.", ""]
    return out


def render(records: list[tuple[str, dict]]) -> str:
    out = ["## Latent against pixel-space diffusion (`python -m benchmarks.latent`)", "",
           "A class-conditional score U-Net on the 7x7x4 latents of a frozen VAE (`experiments.vae`, "
           "`experiments.latent`) beside the pixel-space `experiments.mnist` U-Net, sampled with the same sampler "
           "at equal NFE. Accuracy: the fraction of samples the clean classifier labels with the requested class "
           "(+- binomial standard error); FD: Fréchet distance in its penultimate features (not FID) to as many "
           "test images, floor test-vs-test at the same size. Train time: summed logging intervals of each run's "
           "metrics (the latent row adds its VAE's). Bits/dim: upper bounds on -log2 P(x) / D of the 8-bit test "
           "images (+- standard error over images).", ""]
    for name, r in records:
        out += render_record(name, r)
    return "\n".join(out + load_note(records, "each time is one run after compilation, the two models side by "
                                              "side"))


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="an experiments.latent run (it names its VAE)")
    p.add_argument("--pixel_workdir", help="a class-conditional experiments.mnist run on the same data "
                   "(default for MNIST: experiments/checkpoints/mnist_cfg)")
    p.add_argument("--classifier", help="an experiments.mnist_classifier run on the same data (default for MNIST: "
                   "experiments/checkpoints/mnist_classifier)")
    p.add_argument("--data_dir", help="folder of the data set's IDX files (default: the latent run's data.dir, "
                   "else tensorflow-datasets)")
    p.add_argument("--n_samples", type=int, default=500)
    p.add_argument("--batch", type=int, default=250, help="batch size of both samplers")
    p.add_argument("--method", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--w", type=float, default=1.0, help="classifier-free guidance weight")
    p.add_argument("--bpd_examples", type=int, default=0, help="recompute the latent bound on this many test images "
                   "(0: take it from the latent run's eval.json)")
    p.add_argument("--bpd_batch", type=int, default=250)
    p.add_argument("--eps", type=float, default=1e-5, help="PF-ODE end time of the recomputed bound")
    p.add_argument("--rtol", type=float, help="of the recomputed bound (default: the latent run's eval.rtol)")
    p.add_argument("--atol", type=float, help="of the recomputed bound (default: the latent run's eval.atol)")
    p.add_argument("--pixel_bpd_record", help="a benchmarks.mnist_nll record (e.g. benchmarks/results/mnist_nll.json)"
                   ": its VDM model's ELBO and PF-ODE bits/dim, shown for the pixel side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="result name (default latent_<dataset>)")
    p.add_argument("--no_readme", action="store_true", help="do not refresh benchmarks/README.md")
    args = p.parse_args(argv)
    if args.n_samples < 1 or args.batch < 1 or args.steps < 1:
        p.error("--n_samples, --batch and --steps must be >= 1")
    argv = sys.argv[1:] if argv is None else argv
    args.command = "python -m benchmarks.latent " + shlex.join(a for a in argv if a != "--no_readme")
    return args


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv), parse_args, run, lambda a: f"latent_{a.dataset}", "latent_", render, "latent")


if __name__ == "__main__":
    main()
