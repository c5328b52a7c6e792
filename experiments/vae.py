"""MNIST / Fashion-MNIST autoencoder for latent diffusion: a KL-regularised VAE with a discretised logistic decoder
(``sde_jax.nn.VAE``, loss ``sde_jax.losses.vae_loss``), its reconstruction error and its latent scale.

    python -m experiments.vae --workdir runs/vae_mnist --config.data.dir=../shared/data/mnist
    python -m experiments.vae --workdir runs/vae_fmnist --config.data.name=fashion_mnist \\
        --config.data.dir=../shared/data/fashion_mnist
    python -m experiments.vae --workdir runs/vae_mnist                      # tensorflow-datasets (downloads)

Then train the score model on its latents: ``python -m experiments.latent --config.vae_dir=runs/vae_mnist ...``.

Trains with ``sde_jax.train.train`` (loss kind "vae"), so it writes ``config.json``, ``checkpoints/<step>/``,
``metrics.jsonl`` like every experiment and resumes; at every checkpoint ``reconstructions_<step>.png`` (pairs of
rows: test images, then their reconstructions from the posterior mean). After training, from the EMA weights:

* ``latent.json`` (``sde_jax.eval.latent.write_vae_record``): the latent scale c = 1 / std of z ~ q(z | x) over the
  training images (Stable Diffusion's 0.18215), the latent shape, and the fingerprint of the weights it belongs to;
  ``experiments.latent`` refuses a VAE whose weights no longer match it;
* ``eval.json``: test reconstruction error, -log2 p(x | z) / D of the discrete images for z ~ q(z | x) and at
  z = m(x), the KL to N(0, I) in bits/dim, and the mean squared error / PSNR of the decoded images in 8-bit units;
* ``loss.png``.

The default (2x2 patches, one stride-2 level: 7x7x4 latents, ~0.2M parameters) trains 1500 steps of 64 images in
about 5 minutes on 2 shared CPU cores.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import jax
import numpy as np
from ml_collections import ConfigDict

from experiments import common
from sde_jax.config import base_config, model_from_config
from sde_jax.data.images import from_model_scale, save_grid, to_model_scale
from sde_jax.data.pipeline import ImageBatches, load_images
from sde_jax.eval.latent import encode_images, vae_decode, vae_nll, write_vae_record
from sde_jax.latent import gaussian_kl, latent_scale
from sde_jax.nn.autoencoder import latent_shape
from sde_jax.train import restore, train
from sde_jax.train.metrics import read_metrics


def get_config() -> ConfigDict:
    c = base_config()
    # data.dir: a folder of MNIST-format IDX files; empty -> tensorflow-datasets. The decoder is discrete over the
    # 256 pixel values: the encoder reads the bin centres (no dequantisation).
    c.data = ConfigDict({"name": "mnist", "dir": "", "shape": (28, 28, 1), "scale": "minus_one_one",
                         "dequantize": False, "num_classes": 10})
    # 2x2 patches, then one stride-2 level: 28x28 -> 14x14 -> 7x7 x latent_channels
    c.model = ConfigDict({"name": "vae", "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "latent_channels": 4,
                          "patch_size": 2, "out_channels": 1})
    # kl_weight: beta of the KL to N(0, I), small as in LDM (the diffusion model is the prior)
    c.loss = ConfigDict({"kind": "vae", "kl_weight": 0.01, "num_bins": 256})
    c.train.update(steps=1500, batch_size=64, lr=2e-3, warmup=100, decay_steps=1500, ema_decay=0.995, log_every=50,
                   checkpoint_every=500, max_to_keep=2)
    del c.sample  # an autoencoder draws no samples
    # scale_examples: training images whose latents set the scale (0: all); recon_examples: test images evaluated
    c.eval = ConfigDict({"batch_size": 500, "scale_examples": 0, "recon_examples": 10000, "grid_rows": 4,
                         "grid_cols": 10})
    return c


def check_config(config: ConfigDict) -> tuple[int, int, int]:
    """The latent shape of the configured VAE on ``data.shape``; ValueError (before any work) for a network that
    cannot halve the images that often, or a model that is not a VAE."""
    if config.model.name != "vae" or config.loss.kind != "vae":
        raise ValueError(f"experiments.vae trains model.name='vae' with loss.kind='vae'; got {config.model.name!r} "
                         f"and {config.loss.kind!r}.")
    m = config.model
    if m.out_channels != config.data.shape[-1]:
        raise ValueError(f"model.out_channels={m.out_channels} must equal the images' channels "
                         f"{config.data.shape[-1]}.")
    return latent_shape(config.data.shape, m.ch_mult, m.latent_channels, m.patch_size)


# ------------------------------------------------------------------------------------------- evaluation
def reconstruct(apply_fn: Callable, params: Any, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """uint8 reconstructions of uint8 images: the decoder's location at z = m(x), rounded to its bin."""
    mean, _ = encode_images(apply_fn, params, images, batch_size)
    out = [from_model_scale(vae_decode(apply_fn, params, mean[i:i + batch_size])[0])
           for i in range(0, len(mean), batch_size)]
    return np.concatenate(out)


def save_reconstruction_grid(apply_fn: Callable, params: Any, images: np.ndarray, cols: int, path: str) -> None:
    """Pairs of rows of ``cols`` images: originals, then their reconstructions."""
    rec = reconstruct(apply_fn, params, images)
    rows = [part for i in range(0, len(images), cols) for part in (images[i:i + cols], rec[i:i + cols])]
    save_grid(np.concatenate(rows), len(rows), path)


def reconstruction_report(apply_fn: Callable, params: Any, images: np.ndarray, num_bins: int, batch_size: int,
                          seed: int) -> dict:
    """Test reconstruction error of uint8 ``images``: -log2 p(x | z) / D at z ~ q(z | x) (one draw per image) and at
    z = m(x), the unweighted KL to N(0, I) in bits/dim, and MSE / PSNR of the reconstructions in 8-bit units."""
    mean, logvar = encode_images(apply_fn, params, images, batch_size)
    rng = np.random.default_rng(seed)
    z = mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape).astype(np.float32)
    bpd = 1.0 / (math.prod(images.shape[1:]) * math.log(2.0))
    nll = lambda x, zz: np.asarray(vae_nll(apply_fn, params, x, zz, num_bins))
    sampled, at_mean, kl, sq = [], [], [], []
    for i in range(0, len(images), batch_size):
        x = to_model_scale(images[i:i + batch_size])
        sampled.append(nll(x, z[i:i + batch_size]) * bpd)
        at_mean.append(nll(x, mean[i:i + batch_size]) * bpd)
        kl.append(np.asarray(gaussian_kl(mean[i:i + batch_size], logvar[i:i + batch_size])) * bpd)
        rec = from_model_scale(vae_decode(apply_fn, params, mean[i:i + batch_size])[0])
        sq.append(np.mean((rec.astype(np.float64) - images[i:i + batch_size]) ** 2, axis=(1, 2, 3)))
    mean_of = lambda parts: float(np.mean(np.concatenate(parts)))
    mse = mean_of(sq)
    return {"recon_bpd": mean_of(sampled), "recon_bpd_at_mean": mean_of(at_mean), "kl_bpd": mean_of(kl),
            "mse_8bit": mse, "psnr_db": float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf"),
            "n_examples": len(images)}


def scale_of_latents(apply_fn: Callable, params: Any, images: np.ndarray, batch_size: int, seed: int) -> dict:
    """The latent scale c = 1 / std(z), z = m(x) + e^(v/2) eps ~ q(z | x) over ``images`` (one draw each), with the
    latents' mean and the encoder's mean posterior std, for the record."""
    mean, logvar = encode_images(apply_fn, params, images, batch_size)
    z = mean + np.exp(0.5 * logvar) * np.random.default_rng(seed).standard_normal(mean.shape).astype(np.float32)
    return {"scale": latent_scale(z), "latent_std": float(np.std(z)), "latent_mean": float(np.mean(z)),
            "posterior_std_mean": float(np.mean(np.exp(0.5 * logvar))), "scale_examples": len(images)}


# ------------------------------------------------------------------------------------------- main
def main(config: ConfigDict, workdir: str) -> None:
    shape = check_config(config)
    images, _ = load_images(config.data.name, "train", config.data.dir or None, config.data.shape)
    test_images, _ = load_images(config.data.name, "test", config.data.dir or None, config.data.shape)
    batches = ImageBatches(images, None, config.train.batch_size, seed=config.seed, scale=config.data.scale,
                           dequantize=config.data.dequantize)
    model, ec = model_from_config(config.model), config.eval
    grid_images = test_images[:ec.grid_rows * ec.grid_cols]

    def grid(step, state):
        save_reconstruction_grid(model.apply, state.ema_params, grid_images, ec.grid_cols,
                                 os.path.join(workdir, f"reconstructions_{step}.png"))

    result = train(config, workdir, batches, batches(0), on_checkpoint=grid)
    if result.interrupted or jax.process_index() != 0:
        return
    common.plot_loss(read_metrics(workdir), os.path.join(workdir, "loss.png"))
    r = restore(workdir)  # the EMA weights as every later reader gets them: the fingerprint is of these
    n_scale = ec.scale_examples or len(images)
    scale = scale_of_latents(model.apply, r.params, images[:n_scale], ec.batch_size, config.seed + 3)
    recon = reconstruction_report(model.apply, r.params, test_images[:ec.recon_examples], config.loss.num_bins,
                                  ec.batch_size, config.seed + 5)
    record = write_vae_record(workdir, r.params, scale["scale"], shape, step=r.step, data=config.data.name,
                                     **{k: v for k, v in scale.items() if k != "scale"},
                                     recon_bpd=recon["recon_bpd"], mse_8bit=recon["mse_8bit"])
    report = {"data": config.data.name, "train_steps": int(result.state.step), "train_seconds": result.seconds,
              "latent_shape": list(shape), **{k: v for k, v in record.items() if k not in ("recon_bpd", "mse_8bit")},
              **recon}
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"latent {'x'.join(map(str, shape))}, scale {scale['scale']:.5f}; test reconstruction "
          f"{recon['recon_bpd']:.4f} bits/dim (at the mean {recon['recon_bpd_at_mean']:.4f}), KL {recon['kl_bpd']:.4f} "
          f"bits/dim, PSNR {recon['psnr_db']:.2f} dB")


if __name__ == "__main__":
    common.define_flags(get_config())
    common.run(main)
