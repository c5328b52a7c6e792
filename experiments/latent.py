"""Latent diffusion on MNIST / Fashion-MNIST: a class-conditional score U-Net on the scaled latents u = c z of a frozen
VAE trained by ``experiments.vae``, its decoded samples, and the latent diffusion bound in bits/dim.

    python -m experiments.vae --workdir runs/vae_mnist --config.data.dir=../shared/data/mnist
    python -m experiments.latent --workdir runs/latent_mnist --config.vae_dir=runs/vae_mnist
    python -m experiments.latent --workdir runs/latent_mnist --config.vae_dir=runs/vae_mnist \\
        --config.eval.classifier_dir=runs/classifier          # + accuracy of samples, classifier-feature FD

    python -m experiments.vae --workdir runs/vae_fmnist --config.data.name=fashion_mnist \\
        --config.data.dir=../shared/data/fashion_mnist
    python -m experiments.latent --workdir runs/latent_fmnist --config.vae_dir=runs/vae_fmnist

The data set, its folder and the latent shape are the VAE's (``data.name`` / ``data.dir`` override the first two).
The training latents are z ~ q(z | x) of every training image, drawn afresh each step
(``sde_jax.data.pipeline.LatentBatches``), times the VAE's latent scale c from its ``latent.json``. The SDE, loss,
label dropout and classifier-free guidance are those of ``experiments.mnist``; samples u are decoded as the
decoder's location at z = u / c.

The run's ``config.json`` records the VAE's scale and the fingerprint of its weights (``config.vae``). A VAE
folder without a scale, or whose weights are not the ones the scale (or this latent run) was made with, is an
error before any work: the latent model is only meaningful on the latents it was trained on.

Writes ``metrics.jsonl``, ``checkpoints/<step>/``, ``samples_<step>.png`` (one row per class, guidance weight
``sample.w``) at every checkpoint, ``loss.png`` and ``eval.json``: the bound on -log2 P(x) / D of
``eval.bpd_examples`` test images (``sde_jax.latent.latent_bound``: reconstruction, encoder entropy term, latent
prior term and total, PF-ODE + Hutchinson on the unconditional model), and with ``eval.classifier_dir`` the
classifier's accuracy on class-conditional samples and the classifier-feature FD / KID of unconditional ones.

The default U-Net (7x7 and 4x4 levels, no patches, ~0.66M parameters) trains 2500 steps of 128 latents in about
11 minutes on 2 shared CPU cores (4 steps/s, measured; encoding the 60,000 training images first takes ~30 s), and
the bound of 500 test images takes about 3 minutes more (~260 score evaluations per image at rtol = atol = 1e-4).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

import sde_jax as sj
from experiments import common
from experiments.common import make_sampler
from sde_jax.config import base_config, model_from_config, sde_from_config
from sde_jax.data.images import class_grid_labels, save_grid, to_model_scale
from sde_jax.data.pipeline import LatentBatches, load_images
from sde_jax.eval import accuracy, clean_time, embed, feature_distances, load_classifier
from sde_jax.eval.latent import FrozenVAE, evaluate_latent_bound, load_vae
from sde_jax.latent import check_scale, latent_bound
from sde_jax.train import Restored, restore, train
from sde_jax.train.checkpoint import load_config
from sde_jax.train.metrics import read_metrics


def get_config() -> ConfigDict:
    c = base_config()
    c.vae_dir = ""  # the workdir of experiments.vae (required)
    # data.name / data.dir: empty -> the VAE's; data.shape is the VAE's latent shape (set from it in main)
    c.data = ConfigDict({"name": "", "dir": "", "shape": (7, 7, 4), "num_classes": 10})
    # 7x7 and 4x4 levels, no patches; ~0.66M parameters
    c.model = ConfigDict({"name": "unet", "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (),
                          "dropout": 0.0, "patch_size": 1, "num_classes": 10})
    c.loss.update(parameterization="v", weighting="likelihood", importance_sampling=True, p_uncond=0.2)
    c.train.update(steps=2500, lr=1e-3, warmup=200, decay_steps=2500, checkpoint_every=500)
    c.sample.update(per_class=10, w=1.0, method="ddim", steps=100)
    # bpd_examples test images for the bound (0: none); fd_samples samples for accuracy and FD (with classifier_dir)
    c.eval = ConfigDict({"bpd_examples": 500, "batch_size": 250, "rtol": 1e-4, "atol": 1e-4, "classifier_dir": "",
                         "fd_samples": 1000})
    return c


# ------------------------------------------------------------------------------------------- the frozen VAE
def resolve(config: ConfigDict, vae: FrozenVAE) -> ConfigDict:
    """The config with the VAE's data set where ``data.name`` / ``data.dir`` are empty, its latent shape as
    ``data.shape``, its image shape as ``data.image_shape``, and ``vae`` = {fingerprint, scale, step}: what the run
    records in its config.json."""
    config = ConfigDict(config.to_dict())
    vd = vae.config.data
    config.data.name = config.data.name or vd.name
    config.data.dir = config.data.dir or (vd.get("dir", "") if config.data.name == vd.name else "")
    config.data.shape = tuple(vae.latent_shape)
    config.data.image_shape = tuple(vd.shape)
    config.vae = ConfigDict({"fingerprint": vae.fingerprint, "scale": vae.scale, "step": vae.step})
    return config


def check_vae(recorded: dict | None, vae: FrozenVAE, where: str) -> None:
    """ValueError unless ``recorded`` (a latent run's ``config.vae``) names the scale and the weights of ``vae``."""
    if not recorded or not recorded.get("fingerprint"):
        raise ValueError(f"{where} records no VAE (config.vae with its fingerprint and scale): it was not trained by "
                         "experiments.latent, or its config.json was edited. Use a new --workdir.")
    if recorded["fingerprint"] != vae.fingerprint:
        raise ValueError(f"{where} was trained on the latents of VAE weights {recorded['fingerprint'][:12]}, but "
                         f"the VAE in {vae.directory} now has weights {vae.fingerprint[:12]} (step {vae.step}): its "
                         "latents mean something else. Point --config.vae_dir at the VAE it was trained with, or "
                         "train the latent model again in a new --workdir.")
    scale = check_scale(recorded.get("scale"))
    if not np.isclose(scale, vae.scale, rtol=1e-6):
        raise ValueError(f"{where} was trained with latent scale {scale}, but the VAE in {vae.directory} records "
                         f"{vae.scale}.")


def check_workdir(workdir: str, vae: FrozenVAE) -> None:
    """Before resuming: ValueError if ``workdir`` holds a run made with another VAE or scale (or not a latent run)."""
    if os.path.exists(os.path.join(workdir, "config.json")):
        check_vae(load_config(workdir).get("vae"), vae, workdir)


def load_latent_model(workdir: str) -> tuple[Restored, FrozenVAE]:
    """The trained latent score model of ``workdir`` (EMA weights) and the frozen VAE it was trained on, after
    checking that the VAE folder still holds those weights and that scale."""
    r = restore(workdir)
    vae = load_vae(r.config.get("vae_dir", ""))
    vae_record = r.config.get("vae")
    check_vae(vae_record.to_dict() if vae_record is not None else None, vae, workdir)
    return r, vae


# ------------------------------------------------------------------------------------------- evaluation
def decode(vae: FrozenVAE, u: jax.Array) -> np.ndarray:
    """uint8 images of scaled latents u: the VAE decoder at z = u / c."""
    return vae.images(jnp.asarray(u) / vae.scale)


def test_bound(config: ConfigDict, model: Any, params: Any, sde: Any, vae: FrozenVAE, images: np.ndarray,
               key: jax.Array, progress: bool = True) -> dict:
    """The latent diffusion bound (bits/dim) of uint8 ``images`` under the unconditional model (null label):
    ``sde_jax.latent.latent_bound`` with one z ~ q(z | x) per image, PF-ODE + Hutchinson, padded batches."""
    k = config.model.get("num_classes")
    y = None if k is None else jnp.full((config.eval.batch_size,), k, jnp.int32)
    score = sj.score_fn(model.apply, params, sde, config.loss.parameterization, y)
    bound = functools.partial(latent_bound, encode=vae.encode, decoder_nll=vae.decoder_nll, score=score,
                              sde=sde, scale=config.vae.scale, divergence="hutchinson", rtol=config.eval.rtol,
                              atol=config.eval.atol)
    return evaluate_latent_bound(bound, to_model_scale(images), key, batch_size=config.eval.batch_size,
                                 progress=progress)


def draw(sampler: Callable, params: Any, vae: FrozenVAE, labels: np.ndarray, w: float, seed: int,
         batch: int) -> np.ndarray:
    """Decoded uint8 samples for ``labels`` (guidance weight w), in batches of ``batch`` (the last one padded, so
    the sampler compiles once)."""
    out = []
    for i in range(0, len(labels), batch):
        y = labels[i:i + batch]
        y_full = np.concatenate([y, np.repeat(y[-1:], batch - len(y))])
        u = sampler(params, jax.random.key(seed + i), jnp.asarray(y_full, jnp.int32), w)
        out.append(decode(vae, u)[:len(y)])
    return np.concatenate(out)


def sample_quality(config: ConfigDict, params: Any, sampler: Callable, vae: FrozenVAE,
                   test_images: np.ndarray) -> dict:
    """With the classifier in ``eval.classifier_dir`` (``experiments.mnist_classifier``): its accuracy on
    ``eval.fd_samples`` class-conditional samples (labels 0..9 in turn, guidance weight ``sample.w``), and the
    classifier-feature FD / KID between as many unconditional samples and test images (not FID: compare with the
    classifier's real-vs-real floor for the same sizes)."""
    apply_fn, cparams, cconfig = load_classifier(config.eval.classifier_dir)
    n, t = config.eval.fd_samples, clean_time(cconfig)
    k = config.model.get("num_classes")
    out = {}
    if k is not None:
        labels = np.arange(n, dtype=np.int32) % k
        images = draw(sampler, params, vae, labels, config.sample.w, config.sample.seed + 200, config.eval.batch_size)
        out["sample_accuracy"] = accuracy(apply_fn, cparams, np.asarray(to_model_scale(images)), labels, t)
        out["sample_accuracy_w"] = float(config.sample.w)
    null = np.full((n,), k if k is not None else 0, np.int32)
    generated = np.asarray(to_model_scale(draw(sampler, params, vae, null, 0.0, config.sample.seed + 100,
                                               config.eval.batch_size)))
    real = np.asarray(to_model_scale(test_images[:n]))
    out.update(feature_distances(embed(apply_fn, cparams, real, t), embed(apply_fn, cparams, generated, t)))
    print(f"classifier accuracy of conditional samples {out.get('sample_accuracy', float('nan')):.4f}; "
          f"classifier-feature FD {out['fd_classifier']:.3f}, KID {out['kid_classifier']:.4f} "
          f"({n} unconditional samples vs {n} test images; not FID)")
    return out


# ------------------------------------------------------------------------------------------- main
def main(config: ConfigDict, workdir: str) -> None:
    vae = load_vae(config.vae_dir)
    config = resolve(config, vae)
    check_workdir(workdir, vae)
    images, labels = load_images(config.data.name, "train", config.data.dir or None, config.data.image_shape)
    conditional = config.model.get("num_classes") is not None
    mean, logvar = vae.encode_images(images)
    batches = LatentBatches(mean, logvar, labels if conditional else None, config.train.batch_size,
                            scale=config.vae.scale, seed=config.seed)
    del images
    sde = sde_from_config(config.sde)
    model = model_from_config(config.model, sde)
    sampler = make_sampler(config, model, sde)
    y_grid = jnp.asarray(class_grid_labels(config.model.get("num_classes"), config.sample.per_class))

    def grid(step, state):
        u = sampler(state.ema_params, jax.random.key(config.sample.seed), y_grid, config.sample.w)
        save_grid(decode(vae, u), config.model.get("num_classes") or 1, os.path.join(workdir, f"samples_{step}.png"))

    result = train(config, workdir, batches, batches(0), on_checkpoint=grid)
    if result.interrupted or jax.process_index() != 0:
        return
    common.plot_loss(read_metrics(workdir), os.path.join(workdir, "loss.png"))
    params = result.state.ema_params
    report = {"data": config.data.name, "vae_dir": config.vae_dir, "vae": config.vae.to_dict(),
              "train_steps": int(result.state.step), "train_seconds": result.seconds}
    n = config.eval.bpd_examples
    test_images = None
    if n or config.eval.classifier_dir:
        test_images, _ = load_images(config.data.name, "test", config.data.dir or None, config.data.image_shape)
    if n:
        res = test_bound(config, model, params, sde, vae, test_images[:n], jax.random.key(config.seed + 7))
        report.update(bpd=res["mean"]["total"], bpd_stderr=res["stderr"]["total"], bpd_terms=res["mean"],
                      bpd_terms_stderr=res["stderr"], n_examples=res["n_examples"], nfe_mean=res["nfe_mean"])
        m = res["mean"]
        print(f"test bound ({res['n_examples']} images): {m['total']:.4f} ± {res['stderr']['total']:.4f} bits/dim = "
              f"reconstruction {m['reconstruction']:.4f} + encoder {m['neg_entropy']:.4f} + latent prior "
              f"{m['prior']:.4f}  (NFE {res['nfe_mean']:.0f})")
    if config.eval.classifier_dir:
        report.update(sample_quality(config, params, sampler, vae, test_images))
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    common.define_flags(get_config())
    common.run(main)
