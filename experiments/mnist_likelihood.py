"""MNIST likelihood with VDM (Kingma et al. 2021): a learned noise schedule trained for a low-variance ELBO, the
discretised decoder, Fourier features of z, and the test-set ELBO in bits/dim.

    python -m experiments.mnist_likelihood --workdir /work/runs/mnist_vdm --config.data.dir=../shared/data/mnist

The recipe, sized for a 2-core CPU: an unconditional 2x2-patched U-Net with 32/64 channels and Fourier features of
z (n = 6, 7) damped by the noise level, eps parameterisation, VDM's learned schedule starting linear in gamma from -13.3 to 5 (its end points
trained on the ELBO, its shape on the estimator's variance), antithetic times, batch 64, Adam with lr 2e-3,
warm-up and a cosine decay to 0 at ``train.steps`` (``train.decay_steps`` follows ``train.steps``), gradients
clipped to norm 1, EMA 0.9999 with the warm-up d = min(0.9999, (1 + s) / (10 + s)), i.e. an average over roughly
the last 10% of the steps for any run shorter than ~90k steps. Data at the 8-bit bin centres (no
dequantisation): the bound is on -log2 P(x) of the discrete images.

Resumable: run the same command again to continue (a larger ``--config.train.steps`` stretches the cosine).
Writes ``metrics.jsonl`` (loss = training ELBO in bits/dim), ``checkpoints/<step>/`` every
``train.checkpoint_every`` steps, ``samples_<step>.png`` (DDIM, ``sample.steps`` steps, EMA weights) and a line of
``elbo_progress.jsonl`` (test ELBO of the first ``eval.progress_examples`` test images, one t each) at every
checkpoint, then ``loss.png`` and ``eval.json``: the test-set ELBO in bits/dim of ``eval.elbo_examples`` images
(mean and standard error over images, ``eval.elbo_t`` stratified times per image, EMA weights; the raw weights'
too), its three terms and the learned schedule's end points.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict

import sde_jax as sj
from experiments import common
from sde_jax.config import base_config, model_from_config, sde_from_config
from sde_jax.data.images import from_model_scale, save_grid
from sde_jax.data.pipeline import ImageBatches, load_images
from sde_jax.train import train
from sde_jax.train.metrics import read_metrics
from sde_jax.vdm import trained_score, vdm_elbo_bpd


def get_config() -> ConfigDict:
    c = base_config()
    # data.dir: a folder of MNIST-format IDX files; empty -> tensorflow-datasets. Bin centres, no dequantisation.
    c.data = ConfigDict({"name": "mnist", "dir": "", "shape": (28, 28, 1), "scale": "minus_one_one",
                         "dequantize": False, "flip": False})
    c.sde = ConfigDict({"name": "vdm_learned", "gamma_min": -13.3, "gamma_max": 5.0, "width": 1024})
    # 2x2 patches: 14x14 and 7x7 levels; sin/cos(2^n 2 pi z), n = 6, 7, as extra input channels, damped by the noise
    # level (fourier_damping = the initial schedule's (gamma_min, gamma_max); sde_jax.nn.unet.fourier_damping):
    # undamped, they dominate the PF-ODE's Jacobian at high noise (benchmarks.fourier_jacobian); damped, the ELBO
    # after 4500 steps is 1.44 instead of 1.64 and the ODE needs 145 instead of ~740 NFE (benchmarks.ode_gap)
    c.model = ConfigDict({"name": "unet", "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 2,
                          "attn_resolutions": (7,), "dropout": 0.0, "patch_size": 2, "fourier_features": (6, 7),
                          "fourier_damping": (-13.3, 5.0)})
    c.loss = ConfigDict({"kind": "vdm", "parameterization": "eps", "num_bins": 256, "antithetic": True,
                         "group": 8})
    c.train.update(steps=12000, batch_size=64, lr=2e-3, warmup=500, grad_clip=1.0, ema_decay=0.9999,
                   checkpoint_every=500, log_every=50, max_to_keep=2)
    c.train.decay_steps = c.train.get_ref("steps")  # cosine to 0 at the last step, whatever train.steps is
    c.sample = ConfigDict({"seed": 1, "n": 64, "method": "ddim", "steps": 100})
    c.eval = ConfigDict({"elbo_examples": 1000, "elbo_t": 4, "batch_size": 250, "progress_examples": 500,
                         "raw": True})
    return c


def check_config(config: ConfigDict) -> None:
    """ValueError for settings the VDM bound cannot use."""
    if config.data.dequantize or config.data.scale != "minus_one_one":
        raise ValueError("the VDM loss reads 8-bit data at the bin centres on [-1, 1]: set data.dequantize=False "
                         "and data.scale='minus_one_one'.")
    if config.loss.kind != "vdm":
        raise ValueError(f"mnist_likelihood trains the VDM bound; got loss.kind={config.loss.kind!r}.")
    damping = tuple(config.model.get("fourier_damping", ()) or ())
    ends = (config.sde.gamma_min, config.sde.gamma_max)
    if damping and tuple(float(g) for g in damping) != tuple(float(g) for g in ends):
        raise ValueError(f"model.fourier_damping={damping} must be the schedule's initial (gamma_min, gamma_max) = "
                         f"{ends}: the network reads its noise level from them. Set both, or "
                         "--config.model.fourier_damping='()' for undamped features.")


def elbo_report(elbo: dict, prefix: str = "elbo") -> dict:
    """Mean and standard error over images of the per-image bound and its terms (bits/dim)."""
    n = elbo["bpd"].shape[0]
    out = {f"{prefix}_bpd": float(elbo["bpd"].mean()),
           f"{prefix}_bpd_stderr": float(elbo["bpd"].std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")}
    for term in ("prior", "reconstruction", "diffusion"):
        out[f"{prefix}_{term}"] = float(elbo[term].mean())
    return out


def main(config: ConfigDict, workdir: str) -> None:
    check_config(config)
    images, _ = load_images(config.data.name, "train", config.data.dir or None, config.data.shape)
    test_images, _ = load_images(config.data.name, "test", config.data.dir or None, config.data.shape)
    batches = ImageBatches(images, None, config.train.batch_size, seed=config.seed, scale=config.data.scale,
                           dequantize=False, flip=False)
    model, init_sde = model_from_config(config.model), sde_from_config(config.sde)
    shape = (config.sample.n, *config.data.shape)
    score_of = lambda params: trained_score(model.apply, params, init_sde, config.loss.parameterization)
    t0 = time.time()

    def on_checkpoint(step: int, state) -> None:
        score = score_of(state.ema_params)
        x, _ = sj.sample(score, score.sde, jax.random.key(config.sample.seed), shape, method=config.sample.method,
                         steps=config.sample.steps)
        save_grid(from_model_scale(x, config.data.scale), int(math.sqrt(config.sample.n)),
                  os.path.join(workdir, f"samples_{step}.png"))
        n = config.eval.progress_examples
        if n:
            elbo = vdm_elbo_bpd(score, test_images[:n], jax.random.key(config.seed + 7), n_t=1,
                                batch_size=min(n, config.eval.batch_size))
            line = {"step": step, "wall_time": time.time(), "process_seconds": time.time() - t0, "n": n,
                    **elbo_report(elbo)}
            with open(os.path.join(workdir, "elbo_progress.jsonl"), "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"\nstep {step}: test ELBO {line['elbo_bpd']:.4f} ± {line['elbo_bpd_stderr']:.4f} bits/dim "
                  f"({n} images)", flush=True)

    result = train(config, workdir, batches, batches(0), on_checkpoint=on_checkpoint)
    if result.interrupted or jax.process_index() != 0:
        return
    common.plot_loss(read_metrics(workdir), os.path.join(workdir, "loss.png"))
    n = config.eval.elbo_examples
    key = jax.random.key(config.seed + 7)
    ev = dict(n_t=config.eval.elbo_t, batch_size=config.eval.batch_size)
    report = {"data": config.data.name, "train_steps": int(result.state.step), "train_seconds": result.seconds,
              "n_examples": int(min(n, len(test_images))), "elbo_t": config.eval.elbo_t}
    t_eval = time.time()
    report.update(elbo_report(vdm_elbo_bpd(result.score_fn(), test_images[:n], key, progress=True, **ev)))
    report["elbo_seconds"] = time.time() - t_eval
    if config.eval.raw:
        report.update(elbo_report(vdm_elbo_bpd(result.score_fn(ema=False), test_images[:n], key, **ev), "raw_elbo"))
    sde = result.sde
    report["schedule"] = {"gamma_min": float(sde.gamma(0.0)), "gamma_max": float(sde.gamma(1.0)),
                          "gamma_at_quarters": [float(g) for g in sde.gamma(np.linspace(0.25, 0.75, 3))]} \
        if hasattr(sde, "gamma") else {}
    print(f"test ELBO ({report['n_examples']} images, EMA): {report['elbo_bpd']:.4f} ± "
          f"{report['elbo_bpd_stderr']:.4f} bits/dim")
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    common.define_flags(get_config())
    common.run(main)
