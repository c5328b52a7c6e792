"""MNIST / Fashion-MNIST: train a (class-conditional) score U-Net, sample it, and measure bits/dim.

    python -m experiments.mnist --workdir runs/mnist                                   # tfds download
    python -m experiments.mnist --workdir runs/mnist --config.data.dir=../shared/data/mnist   # local IDX files
    python -m experiments.mnist --workdir runs/fmnist --config.data.name=fashion_mnist

The default model is class-conditional and trained with label dropout (``loss.p_uncond``), so one network gives
s(x, t | y) and, with the null label, the unconditional s(x, t): the bits/dim are the unconditional model's, and
the sample grid uses classifier-free guidance of weight ``sample.w``. Likelihood weighting with importance
sampling (Song, Durkan, Murray & Ermon 2021) targets bits/dim; ``--config.loss.weighting=score_matching
--config.loss.importance_sampling=False`` targets sample quality.

Writes ``metrics.jsonl``, ``checkpoints/<step>/``, ``samples_<step>.png`` (one row per class) at every checkpoint,
``loss.png`` and ``eval.json`` (test-set bits/dim of ``eval.bpd_examples`` images with PF-ODE + Hutchinson;
classifier-feature Fréchet distance and KID when ``eval.classifier_dir`` holds a classifier trained by
``experiments.mnist_classifier``).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

import sde_jax as sj
from experiments import common
from sde_jax.data.images import from_model_scale, to_model_scale
from sde_jax.data.pipeline import ImageBatches, load_images
from sde_jax.train import train
from sde_jax.train.loop import model_from_config, sde_from_config
from sde_jax.train.metrics import read_metrics


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    # data.dir: a folder of MNIST-format IDX files; empty -> tensorflow-datasets (downloads on first use)
    c.data = ConfigDict({"name": "mnist", "dir": "", "shape": (28, 28, 1), "scale": "minus_one_one",
                         "dequantize": True, "flip": False, "num_classes": 10})
    c.sde = ConfigDict({"name": "vp", "beta_min": 0.1, "beta_max": 20.0, "sigma_min": 0.01, "sigma_max": 50.0,
                        "N": 1000})
    # 2x2 patches: 14x14 and 7x7 levels (see sde_jax.nn.unet); ~0.6M parameters
    c.model = ConfigDict({"name": "unet", "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                          "attn_resolutions": (7,), "dropout": 0.0, "patch_size": 2, "num_classes": 10})
    c.loss = ConfigDict({"kind": "dsm", "parameterization": "v", "weighting": "likelihood",
                         "importance_sampling": True, "reduce_mean": False, "p_uncond": 0.2})
    c.train = ConfigDict({"steps": 20000, "batch_size": 128, "lr": 1e-3, "warmup": 200, "decay_steps": 20000,
                          "grad_clip": 1.0, "ema_decay": 0.999, "log_every": 50, "checkpoint_every": 1000,
                          "max_to_keep": 3, "skip_nonfinite": False})
    # grids: sample.per_class images of each class, classifier-free guidance weight w (DDIM, sample.steps)
    c.sample = ConfigDict({"per_class": 10, "w": 1.0, "method": "ddim", "steps": 100, "seed": 1})
    # rtol = atol = 1e-4: with the likelihood's joint error norm, 1e-3 and 1e-4 agree to 0.001 bits/dim on MNIST
    c.eval = ConfigDict({"bpd_examples": 10000, "batch_size": 125, "rtol": 1e-4, "atol": 1e-4,
                         "classifier_dir": "", "fd_samples": 1000})
    return c


# ------------------------------------------------------------------------------------------- sampling
def guided_score(model, params, sde, parameterization: str, y, w: float, null_label: int):
    """Classifier-free guided score (1 + w) s(x, t | y) - w s(x, t | null) of one network."""
    cond = sj.score_fn(model.apply, params, sde, parameterization, y)
    if w == 0:
        return cond
    uncond = sj.score_fn(model.apply, params, sde, parameterization, jnp.full_like(y, null_label))
    return sj.classifier_free_guidance(cond, uncond, w)


def make_sampler(config: ConfigDict, model, sde):
    """``sample(params, key, y) -> images`` on the model scale, jitted once (params are an argument)."""
    data_shape = tuple(config.data.shape)

    @functools.partial(jax.jit, static_argnames=("w",))
    def sample(params, key, y, w):
        if config.model.get("num_classes") is None:
            score = sj.score_fn(model.apply, params, sde, config.loss.parameterization)
        else:
            score = guided_score(model, params, sde, config.loss.parameterization, y, w, config.model.num_classes)
        x, _ = sj.sample(score, sde, key, (y.shape[0], *data_shape), method=config.sample.method,
                         steps=config.sample.steps)
        return x

    return sample


def save_grid(images: np.ndarray, rows: int, path: str) -> None:
    """uint8 (N, H, W, C) -> a PNG grid of ``rows`` rows with a 2-pixel border."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, h, w, c = images.shape
    cols = -(-n // rows)
    grid = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = images[i]
    plt.imsave(path, grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=255)


def class_grid_labels(config: ConfigDict) -> np.ndarray:
    k = config.model.get("num_classes") or 1
    return np.repeat(np.arange(k, dtype=np.int32), config.sample.per_class)


# ------------------------------------------------------------------------------------------- main
def load_split(config: ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_images(config.data.name, split, config.data.dir or None)
    if images.shape[1:] != tuple(config.data.shape):
        raise ValueError(f"{config.data.name} images have shape {images.shape[1:]}, but data.shape is "
                         f"{tuple(config.data.shape)}.")
    return images, labels


def test_bpd(config: ConfigDict, model, params, sde, images: np.ndarray, key, progress: bool = True):
    """Bits/dim of uint8 ``images`` under the unconditional model (null label): PF-ODE + Hutchinson, uniform
    dequantisation (``sj.evaluate_bpd``); every batch has the same shape, so one compilation serves all."""
    k = config.model.get("num_classes")

    @jax.jit
    def logp(params, x, key):  # params are an argument, not constants baked into the program
        y = None if k is None else jnp.full((x.shape[0],), k, jnp.int32)
        score = sj.score_fn(model.apply, params, sde, config.loss.parameterization, y)
        return sj.log_likelihood(score, sde, x, key, divergence="hutchinson", rtol=config.eval.rtol,
                                 atol=config.eval.atol)

    batch_fn = functools.partial(logp, params)
    lo = 0.0 if config.data.scale == "zero_one" else -1.0
    return sj.evaluate_bpd(batch_fn, images, key, data_range=(lo, 1.0), batch_size=config.eval.batch_size,
                           progress=progress)


def sample_quality(config: ConfigDict, params, sampler, test_images: np.ndarray) -> dict:
    """Classifier-feature Fréchet distance and KID between ``eval.fd_samples`` unconditional samples and as many
    of the uint8 ``test_images``, with the classifier of ``eval.classifier_dir`` (``experiments.mnist_classifier``). Not FID: the
    features are the project's MNIST classifier's; compare with its real-vs-real floor for the same sizes."""
    from experiments.mnist_classifier import embed, feature_distances, load_classifier

    apply_fn, cparams, _ = load_classifier(config.eval.classifier_dir)
    n = config.eval.fd_samples
    null = config.model.get("num_classes") or 0
    xs = [np.asarray(sampler(params, jax.random.key(config.sample.seed + 100 + i), jnp.full((250,), null, jnp.int32),
                             0.0)) for i in range(-(-n // 250))]
    generated = np.concatenate(xs)[:n]
    real = np.asarray(to_model_scale(test_images[:n], config.data.scale))
    out = feature_distances(embed(apply_fn, cparams, real), embed(apply_fn, cparams, generated))
    print(f"classifier-feature FD {out['fd_classifier']:.3f}, KID {out['kid_classifier']:.4f} "
          f"({n} unconditional samples vs {n} test images; not FID)")
    return out


def main(config: ConfigDict, workdir: str) -> None:
    images, labels = load_split(config, "train")
    conditional = config.model.get("num_classes") is not None
    batches = ImageBatches(images, labels if conditional else None, config.train.batch_size, seed=config.seed,
                           scale=config.data.scale, dequantize=config.data.dequantize, flip=config.data.flip)
    model, sde = model_from_config(config.model), sde_from_config(config.sde)
    sampler = make_sampler(config, model, sde)
    y_grid = jnp.asarray(class_grid_labels(config))

    def grid(step, state):
        x = sampler(state.ema_params, jax.random.key(config.sample.seed), y_grid, config.sample.w)
        save_grid(from_model_scale(x, config.data.scale), config.model.get("num_classes") or 10,
                  os.path.join(workdir, f"samples_{step}.png"))

    result = train(config, workdir, batches, batches(0), on_checkpoint=grid)
    if result.interrupted or jax.process_index() != 0:
        return
    common.plot_loss(read_metrics(workdir), os.path.join(workdir, "loss.png"))
    params = result.state.ema_params
    report = {"data": config.data.name, "train_steps": int(result.state.step), "train_seconds": result.seconds}
    n = config.eval.bpd_examples
    test_images = load_split(config, "test")[0] if n or config.eval.classifier_dir else None  # read once
    if n:
        res = test_bpd(config, model, params, sde, test_images[:n], jax.random.key(config.seed + 7))
        report.update(bpd=res.mean, bpd_stderr=res.stderr, n_examples=res.n_examples, nfe_mean=res.nfe_mean,
                      bpd_seconds=res.seconds)
        print(f"test bits/dim ({res.n_examples} images): {res.mean:.4f} ± {res.stderr:.4f}  (NFE {res.nfe_mean:.0f})")
    if config.eval.classifier_dir:
        report.update(sample_quality(config, params, sampler, test_images))
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    common.define_flags(get_config())
    common.run(main)
