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
from experiments.common import make_sampler
from sde_jax.config import base_config, model_from_config, sde_from_config
from sde_jax.data.images import class_grid_labels, from_model_scale, save_grid, to_model_scale
from sde_jax.data.pipeline import ImageBatches, load_images
from sde_jax.eval import clean_time, embed, evaluate_bpd, feature_distances, load_classifier
from sde_jax.train import train
from sde_jax.train.metrics import read_metrics


def get_config() -> ConfigDict:
    c = base_config()
    # data.dir: a folder of MNIST-format IDX files; empty -> tensorflow-datasets (downloads on first use)
    c.data = ConfigDict({"name": "mnist", "dir": "", "shape": (28, 28, 1), "scale": "minus_one_one",
                         "dequantize": True, "flip": False, "num_classes": 10})
    # 2x2 patches: 14x14 and 7x7 levels (see sde_jax.nn.unet); ~0.6M parameters
    c.model = ConfigDict({"name": "unet", "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                          "attn_resolutions": (7,), "dropout": 0.0, "patch_size": 2, "num_classes": 10})
    c.loss.update(parameterization="v", weighting="likelihood", importance_sampling=True, p_uncond=0.2)
    c.train.update(steps=20000, lr=1e-3, warmup=200, decay_steps=20000)
    # grids: sample.per_class images of each class, classifier-free guidance weight w (DDIM, sample.steps)
    c.sample.update(per_class=10, w=1.0, method="ddim", steps=100)
    # rtol = atol = 1e-4: with the likelihood's joint error norm, 1e-3 and 1e-4 agree to 0.001 bits/dim on MNIST
    c.eval = ConfigDict({"bpd_examples": 10000, "batch_size": 125, "rtol": 1e-4, "atol": 1e-4,
                         "classifier_dir": "", "fd_samples": 1000})
    return c


# ------------------------------------------------------------------------------------------- main
def test_bpd(config: ConfigDict, model, params, sde, images: np.ndarray, key, progress: bool = True):
    """Bits/dim of uint8 ``images`` under the unconditional model (null label): PF-ODE + Hutchinson, uniform
    dequantisation, padded batches of ``eval.batch_size`` (``sde_jax.eval.evaluate_bpd``)."""
    k = config.model.get("num_classes")
    y = None if k is None else jnp.full((config.eval.batch_size,), k, jnp.int32)
    score = sj.score_fn(model.apply, params, sde, config.loss.parameterization, y)
    batch_fn = functools.partial(sj.log_likelihood, score, sde, divergence="hutchinson", rtol=config.eval.rtol,
                                 atol=config.eval.atol)
    lo = 0.0 if config.data.scale == "zero_one" else -1.0
    return evaluate_bpd(batch_fn, images, key, data_range=(lo, 1.0), batch_size=config.eval.batch_size,
                        progress=progress)


def sample_quality(config: ConfigDict, params, sampler, test_images: np.ndarray) -> dict:
    """Classifier-feature Fréchet distance and KID between ``eval.fd_samples`` unconditional samples and as many
    of the uint8 ``test_images``, in the features of the classifier in ``eval.classifier_dir`` (trained by
    ``experiments.mnist_classifier``) read at its clean time, as its real-vs-real floors are. Not FID: compare
    with that floor for the same sizes."""
    apply_fn, cparams, cconfig = load_classifier(config.eval.classifier_dir)
    n, t = config.eval.fd_samples, clean_time(cconfig)
    null = config.model.get("num_classes") or 0
    xs = [np.asarray(sampler(params, jax.random.key(config.sample.seed + 100 + i), jnp.full((250,), null, jnp.int32),
                             0.0)) for i in range(-(-n // 250))]
    generated = np.concatenate(xs)[:n]
    real = np.asarray(to_model_scale(test_images[:n], config.data.scale))
    out = feature_distances(embed(apply_fn, cparams, real, t), embed(apply_fn, cparams, generated, t))
    print(f"classifier-feature FD {out['fd_classifier']:.3f}, KID {out['kid_classifier']:.4f} "
          f"({n} unconditional samples vs {n} test images; not FID)")
    return out


def main(config: ConfigDict, workdir: str) -> None:
    images, labels = load_images(config.data.name, "train", config.data.dir or None, config.data.shape)
    conditional = config.model.get("num_classes") is not None
    batches = ImageBatches(images, labels if conditional else None, config.train.batch_size, seed=config.seed,
                           scale=config.data.scale, dequantize=config.data.dequantize, flip=config.data.flip)
    sde = sde_from_config(config.sde)
    model = model_from_config(config.model, sde)
    sampler = make_sampler(config, model, sde)
    y_grid = jnp.asarray(class_grid_labels(config.model.get("num_classes"), config.sample.per_class))

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
    test_images = None
    if n or config.eval.classifier_dir:  # read once
        test_images, _ = load_images(config.data.name, "test", config.data.dir or None, config.data.shape)
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
