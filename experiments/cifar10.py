"""CIFAR-10 with the configurations of Song et al. (ICLR 2021): train, sample grids, test-set bits/dim.

    python -m experiments.cifar10 --workdir runs/vp --config.preset=ddpmpp_continuous_vp
    python -m experiments.cifar10 --workdir runs/ve --config.preset=ncsnpp_continuous_ve
    python -m experiments.cifar10 --workdir runs/ddpm --config.preset=ddpm --config.train.batch_size=64

``--config.preset`` picks the SDE, network, loss, optimiser, EMA, data scaling and sampler of one of score_sde's
CIFAR-10 configs (github.com/yang-song/score_sde, ``configs/``; the network fields are
``sde_jax.nn.presets.cifar10_preset``); every other ``--config.KEY=VALUE`` overrides a field of that preset.

================================ ============================================ ===== ============= ==========
preset                           score_sde config                             EMA   data range    sampler
================================ ============================================ ===== ============= ==========
``ddpm``                         ``vp/ddpm/cifar10.py`` (discrete DDPM loss)  .9999 [-1, 1]       ancestral
``ddpmpp_continuous_vp``         ``vp/cifar10_ddpmpp_continuous.py``          .9999 [-1, 1]       PC: EM
``ddpmpp_continuous_subvp``      ``subvp/cifar10_ddpmpp_continuous.py``       .9999 [-1, 1]       PC: EM
``ddpmpp_deep_continuous_vp``    ``vp/cifar10_ddpmpp_deep_continuous.py``     .9999 [-1, 1]       PC: EM
``ddpmpp_deep_continuous_subvp`` ``subvp/cifar10_ddpmpp_deep_continuous.py``  .9999 [-1, 1]       PC: EM
``ncsnpp_continuous_ve``         ``ve/cifar10_ncsnpp_continuous.py``          .999  [0, 1]        PC: RD+L
``ncsnpp_deep_continuous_ve``    ``ve/cifar10_ncsnpp_deep_continuous.py``     .999  [0, 1]        PC: RD+L
================================ ============================================ ===== ============= ==========

Shared by all (``configs/default_cifar10_configs.py``): batch 128, Adam lr 2e-4 with 5000 linear warm-up steps,
gradient norm clipped to 1, dropout 0.1, random horizontal flips, no uniform dequantisation in training,
unweighted (``score_matching``) loss, beta 0.1 -> 20, sigma 0.01 -> 50, N = 1000, 1000 sampling steps with the
final denoising step; 1,300,001 iterations (950,001 for the deep networks). VP / sub-VP / DDPM losses average over
pixels (``reduce_mean``), VE sums. Samplers: EM = Euler-Maruyama predictor, no corrector; RD+L = reverse-diffusion
predictor + one Langevin corrector step, snr 0.16; ancestral = DDPM's ancestral sampling on the N levels.

Differences from score_sde: pixels map to bin centres, (x + 1/2) / 256 (score_sde: x / 255); the EMA decay is
warmed up as min(decay, (1 + step) / (10 + step)) (``sde_jax.train.step.make_train_step``). Continuous training
draws t ~ U(loss.eps, 1) with score_sde's loss.eps = 1e-5.

Writes ``metrics.jsonl``, ``checkpoints/<step>/`` every ``train.checkpoint_every`` steps, ``samples_<step>.png``
(``sample.num`` images) every ``sample.every`` steps and at the end, ``loss.png`` and ``eval.json`` (test-set
bits/dim of ``eval.bpd_examples`` images, PF-ODE + Hutchinson with uniform dequantisation).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import jax
from ml_collections import ConfigDict

import sde_jax as sj
from experiments import common
from experiments.mnist import test_bpd
from sde_jax.config import base_config, model_from_config, sde_from_config
from sde_jax.data.images import from_model_scale, save_grid
from sde_jax.data.pipeline import ImageBatches, load_images
from sde_jax.nn.presets import PARAMETERIZATION, cifar10_preset, ve_time_embedding
from sde_jax.train import train
from sde_jax.train.metrics import read_metrics

DEFAULT_PRESET = "ddpmpp_continuous_vp"

# preset -> (network preset of sde_jax.nn.presets, SDE, continuous-time loss, EMA rate, training iterations)
PRESETS: dict[str, tuple[str, str, bool, float, int]] = {
    "ddpm": ("ddpm", "vp", False, 0.9999, 1_300_001),
    "ddpmpp_continuous_vp": ("ddpmpp_continuous", "vp", True, 0.9999, 1_300_001),
    "ddpmpp_continuous_subvp": ("ddpmpp_continuous", "subvp", True, 0.9999, 1_300_001),
    "ddpmpp_deep_continuous_vp": ("ddpmpp_deep_continuous", "vp", True, 0.9999, 950_001),
    "ddpmpp_deep_continuous_subvp": ("ddpmpp_deep_continuous", "subvp", True, 0.9999, 950_001),
    "ncsnpp_continuous_ve": ("ncsnpp_continuous", "ve", True, 0.999, 1_300_001),
    "ncsnpp_deep_continuous_ve": ("ncsnpp_deep_continuous", "ve", True, 0.999, 950_001),
}

# The keyword options of sj.sample each method takes from config.sample (others keep the sampler's defaults).
SAMPLER_KEYS = {"pc": ("steps", "predictor", "snr", "n_corrector"), "sde": ("steps",), "ode": (),
                "ancestral": ("steps",), "ddim": ("steps",), "dpmpp_2m": ("steps",), "dpmpp_3m": ("steps",),
                "dpmpp_2m_sde": ("steps",), "unipc": ("steps",), "heun": ("steps",)}


def get_config(preset: str = DEFAULT_PRESET) -> ConfigDict:
    """The full config of ``preset`` (see the module docstring); any field can be changed afterwards."""
    if preset not in PRESETS:
        raise ValueError(f"unknown CIFAR-10 preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    network, sde, continuous, ema, steps = PRESETS[preset]
    vp_like = sde in ("vp", "subvp")
    c = base_config()
    c.preset = preset
    c.seed = 42
    # data.dir: the tensorflow-datasets data directory (empty: its default, ~/tensorflow_datasets)
    c.data = ConfigDict({"name": "cifar10", "dir": "", "shape": (32, 32, 3),
                         "scale": "minus_one_one" if vp_like else "zero_one", "dequantize": False, "flip": True})
    c.sde.name = sde
    c.model = ConfigDict(cifar10_preset(network))
    c.loss.update(kind="dsm" if continuous else "discrete", parameterization=PARAMETERIZATION[network],
                  reduce_mean=vp_like, p_uncond=0.0, eps=1e-5)
    c.train.update(steps=steps, decay_steps=0, ema_decay=ema, checkpoint_every=10000)
    # sample grids of `num` images every `every` steps (0 images: none) with score_sde's samplers: 1000 updates
    # (ancestral: the N - 1 = 999 transitions between DDPM's levels, then the denoising step)
    c.sample.update(method="pc" if continuous else "ancestral", steps=1000 if continuous else 999,
                    predictor="euler_maruyama" if vp_like else "reverse_diffusion", n_corrector=0 if vp_like else 1,
                    snr=0.16, denoise=True, num=64, every=50000)
    c.eval = ConfigDict({"bpd_examples": 10000, "batch_size": 100, "rtol": 1e-5, "atol": 1e-5})
    return c


def check_config(config: ConfigDict) -> None:
    """ValueError for a VE network whose log-sigma time embedding no longer matches ``config.sde``'s sigmas."""
    m, s = config.model, config.sde
    if s.name == "ve" and m.name == "ncsnpp" and m.get("embedding_type") == "fourier":
        want = ve_time_embedding(s.sigma_min, s.sigma_max)
        if any(abs(m[k] - v) > 1e-6 * max(1.0, abs(v)) for k, v in want.items()):
            raise ValueError(
                f"model.time_shift={m.time_shift}, model.time_scale={m.time_scale} embed log sigma(t) of another VE "
                f"SDE than sde.sigma_min={s.sigma_min}, sde.sigma_max={s.sigma_max}; set "
                f"--config.model.time_shift={want['time_shift']!r} --config.model.time_scale={want['time_scale']!r}.")


def sampler_options(sample: ConfigDict) -> dict:
    """``sj.sample`` keyword options of ``config.sample`` for its method."""
    if sample.method not in SAMPLER_KEYS:
        raise ValueError(f"unknown sample.method {sample.method!r}; choose one of {sorted(SAMPLER_KEYS)}.")
    return {"denoise": sample.denoise, **{k: sample[k] for k in SAMPLER_KEYS[sample.method]}}


def make_sampler(config: ConfigDict, model, sde):
    """``sample(params, key) -> (sample.num, H, W, C)`` images on the model scale (``sj.sample`` compiles once: the
    parameters are leaves of the score model, not constants)."""
    shape = (config.sample.num, *config.data.shape)
    options = sampler_options(config.sample)

    def sample(params, key):
        score = sj.score_fn(model.apply, params, sde, config.loss.parameterization)
        x, _ = sj.sample(score, sde, key, shape, method=config.sample.method, **options)
        return x

    return sample


def main(config: ConfigDict, workdir: str) -> None:
    check_config(config)
    images, labels = load_images(config.data.name, "train", config.data.dir or None, config.data.shape)
    conditional = config.model.get("num_classes") is not None
    batches = ImageBatches(images, labels if conditional else None, config.train.batch_size, seed=config.seed,
                           scale=config.data.scale, dequantize=config.data.dequantize, flip=config.data.flip)
    sde = sde_from_config(config.sde)
    model = model_from_config(config.model, sde)
    sampler = make_sampler(config, model, sde) if config.sample.num > 0 and not conditional else None

    def grid(step, state):
        if sampler is None or not (step % config.sample.every == 0 or step == config.train.steps):
            return
        x = sampler(state.ema_params, jax.random.key(config.sample.seed))
        rows = max(1, int(round(config.sample.num ** 0.5)))
        save_grid(from_model_scale(x, config.data.scale), rows, os.path.join(workdir, f"samples_{step}.png"))

    result = train(config, workdir, batches, batches(0), on_checkpoint=grid)
    if result.interrupted or jax.process_index() != 0:
        return
    common.plot_loss(read_metrics(workdir), os.path.join(workdir, "loss.png"))
    report = {"data": config.data.name, "preset": config.preset, "train_steps": int(result.state.step),
              "train_seconds": result.seconds}
    n = config.eval.bpd_examples
    if n:
        test_images, _ = load_images(config.data.name, "test", config.data.dir or None, config.data.shape)
        res = test_bpd(config, model, result.state.ema_params, sde, test_images[:n], jax.random.key(config.seed + 7))
        report.update(bpd=res.mean, bpd_stderr=res.stderr, n_examples=res.n_examples, nfe_mean=res.nfe_mean,
                      bpd_seconds=res.seconds)
        print(f"test bits/dim ({res.n_examples} images): {res.mean:.4f} ± {res.stderr:.4f}  (NFE {res.nfe_mean:.0f})")
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)


def preset_from_argv(argv: Sequence[str]) -> str:
    """The last ``--config.preset=NAME`` (or ``--config.preset NAME``) of ``argv``; the default preset if none.

    The preset is read before the flags are defined so that every other ``--config.KEY`` overrides its fields.
    """
    preset = DEFAULT_PRESET
    for i, arg in enumerate(argv):
        if arg.startswith("--config.preset="):
            preset = arg.split("=", 1)[1]
        elif arg == "--config.preset" and i + 1 < len(argv):
            preset = argv[i + 1]
    return preset


if __name__ == "__main__":
    try:
        _config = get_config(preset_from_argv(sys.argv[1:]))
    except ValueError as e:
        common.fail(str(e))
    common.define_flags(_config)
    common.run(main)
