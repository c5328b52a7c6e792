"""experiments.cifar10: every preset's config against score_sde's numbers, one training step of each at tiny width,
dropout on in training, and the whole ``main`` (train, grid, bits/dim) on random data without tensorflow-datasets."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cifar10
from sde_jax.config import loss_from_config, model_from_config, optimizer_from_config, sde_from_config
from sde_jax.train.step import init_params, init_train_state, make_train_step

# score_sde configs/ (yang-song/score_sde): preset -> (sde, continuous, ema_rate, n_iters, reduce_mean, centered,
# model.name, num_res_blocks, fir, progressive_input, embedding, sampler (method, predictor, corrector steps))
REFERENCE = {
    "ddpm": ("vp", False, 0.9999, 1300001, True, True, "ddpm", 2, None, None, None, ("ancestral", None, None)),
    "ddpmpp_continuous_vp": ("vp", True, 0.9999, 1300001, True, True, "ncsnpp", 4, False, "none", "positional",
                             ("pc", "euler_maruyama", 0)),
    "ddpmpp_continuous_subvp": ("subvp", True, 0.9999, 1300001, True, True, "ncsnpp", 4, False, "none", "positional",
                                ("pc", "euler_maruyama", 0)),
    "ddpmpp_deep_continuous_vp": ("vp", True, 0.9999, 950001, True, True, "ncsnpp", 8, False, "none", "positional",
                                  ("pc", "euler_maruyama", 0)),
    "ddpmpp_deep_continuous_subvp": ("subvp", True, 0.9999, 950001, True, True, "ncsnpp", 8, False, "none",
                                     "positional", ("pc", "euler_maruyama", 0)),
    "ncsnpp_continuous_ve": ("ve", True, 0.999, 1300001, False, False, "ncsnpp", 4, True, "residual", "fourier",
                             ("pc", "reverse_diffusion", 1)),
    "ncsnpp_deep_continuous_ve": ("ve", True, 0.999, 950001, False, False, "ncsnpp", 8, True, "residual", "fourier",
                                  ("pc", "reverse_diffusion", 1)),
}


def test_every_preset_is_covered():
    assert set(cifar10.PRESETS) == set(REFERENCE)
    with pytest.raises(ValueError, match="unknown CIFAR-10 preset 'vp'"):
        cifar10.get_config("vp")


@pytest.mark.parametrize("preset", list(REFERENCE))
def test_config_matches_score_sde(preset):
    sde, continuous, ema, n_iters, reduce_mean, centered, net, blocks, fir, prog_in, emb, sampler = REFERENCE[preset]
    c = cifar10.get_config(preset)
    assert c.preset == preset
    # configs/default_cifar10_configs.py
    assert (c.train.batch_size, c.train.lr, c.train.warmup, c.train.grad_clip) == (128, 2e-4, 5000, 1.0)
    assert c.train.decay_steps == 0 and c.seed == 42
    assert (c.data.name, tuple(c.data.shape), c.data.flip, c.data.dequantize) == ("cifar10", (32, 32, 3), True, False)
    assert (c.sde.beta_min, c.sde.beta_max, c.sde.sigma_min, c.sde.sigma_max, c.sde.N) == (0.1, 20.0, 0.01, 50.0, 1000)
    assert c.model.dropout == 0.1 and c.model.nf == 128 and tuple(c.model.ch_mult) == (1, 2, 2, 2)
    assert tuple(c.model.attn_resolutions) == (16,) and c.model.resamp_with_conv
    assert c.loss.weighting == "score_matching" and not c.loss.importance_sampling and c.loss.p_uncond == 0.0
    assert c.sample.steps == (1000 if continuous else 999) and c.sample.denoise and c.sample.snr == 0.16
    # the preset's own file
    assert c.sde.name == sde and c.loss.kind == ("dsm" if continuous else "discrete")
    assert c.train.ema_decay == ema and c.train.steps == n_iters and c.loss.reduce_mean == reduce_mean
    assert c.loss.eps == 1e-5  # score_sde trains from t = 1e-5 (losses.dsm_loss eps)
    assert c.data.scale == ("minus_one_one" if centered else "zero_one")
    assert c.model.name == net and c.model.num_res_blocks == blocks
    assert c.loss.parameterization == ("scaled_score" if sde == "ve" else "eps")  # scale_by_sigma
    if net == "ncsnpp":
        assert (c.model.fir, c.model.progressive_input, c.model.embedding_type) == (fir, prog_in, emb)
        assert (c.model.skip_rescale, c.model.resblock_type, c.model.init_scale) == (True, "biggan", 0.0)
    method, predictor, n_corrector = sampler
    assert c.sample.method == method
    if method == "pc":
        assert (c.sample.predictor, c.sample.n_corrector) == (predictor, n_corrector)
    cifar10.check_config(c)


def _tiny(preset: str, ch_mult=(1, 2)):
    """The preset at width 8 with one block per level (attention at the lowest resolution of 32x32 input)."""
    c = cifar10.get_config(preset)
    c.model.update(nf=8, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(32 // 2 ** (len(ch_mult) - 1),))
    return c


def _random_draws(jaxpr) -> int:
    """How many ``random_bits`` operations ``jaxpr`` runs (inside nested jaxprs, e.g. ``jax.random.bernoulli``'s
    own jit, once per call site)."""

    def count(jaxpr) -> int:
        jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == "random_bits"
            for v in eqn.params.values():
                for sub in v if isinstance(v, (tuple, list)) else (v,):
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        n += count(sub)
        return n

    return count(jaxpr)


def test_deep_presets_differ_only_in_depth_and_iterations():
    for shallow, deep in [("ddpmpp_continuous_vp", "ddpmpp_deep_continuous_vp"),
                          ("ddpmpp_continuous_subvp", "ddpmpp_deep_continuous_subvp"),
                          ("ncsnpp_continuous_ve", "ncsnpp_deep_continuous_ve")]:
        a, b = cifar10.get_config(shallow).to_dict(), cifar10.get_config(deep).to_dict()
        assert (a["model"].pop("num_res_blocks"), b["model"].pop("num_res_blocks")) == (4, 8)
        assert (a["train"].pop("steps"), b["train"].pop("steps")) == (1300001, 950001)
        assert (a.pop("preset"), b.pop("preset")) == (shallow, deep)
        assert a == b


@pytest.mark.parametrize("preset", [p for p in REFERENCE if "deep" not in p])  # deep ones: the test above
def test_train_step_of_every_preset_traces_with_dropout(preset):
    """The preset's whole train step (network, loss, optimiser, EMA) at width 8 traced on a 32x32 batch (abstract
    evaluation: every config, keyword and shape error shows; nothing is compiled), and its loss draws one dropout
    mask per residual block: the same network with dropout 0 makes exactly that many fewer random draws."""
    c = _tiny(preset)
    model, sde = model_from_config(c.model), sde_from_config(c.sde)
    x = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
    opt = optimizer_from_config(c.train)
    state = jax.eval_shape(lambda x: init_train_state(init_params(model, jax.random.key(0), x), opt), x)

    def step_jaxpr(model_cfg):
        net = model_from_config(model_cfg)
        step = make_train_step(loss_from_config(c.loss, net.apply, sde, model_cfg), opt, c.train.ema_decay)
        return jax.make_jaxpr(step, return_shape=True)(state, x, jax.random.key(0))

    jaxpr, (new, metrics) = step_jaxpr(c.model)
    assert jax.tree.structure(new) == jax.tree.structure(state) and metrics["loss"].shape == ()
    jaxpr0, _ = step_jaxpr({**c.model.to_dict(), "dropout": 0.0})
    blocks = 2 * 1 + 2 * 2 + 2  # two levels: 1 down and 2 up blocks each, and 2 in the middle
    blocks += 2 if c.model.name == "ncsnpp" else 0  # BigGAN's resampling blocks (1 down, 1 up)
    assert _random_draws(jaxpr) - _random_draws(jaxpr0) == blocks


def test_pc_sampler_of_the_ve_preset_traces():
    """Reverse-diffusion predictor + Langevin corrector with score_sde's options, traced (not compiled)."""
    c = _tiny("ncsnpp_continuous_ve")
    c.sample.num = 3
    assert cifar10.sampler_options(c.sample) == {"denoise": True, "steps": 1000, "predictor": "reverse_diffusion",
                                                 "snr": 0.16, "n_corrector": 1}
    model, sde = model_from_config(c.model), sde_from_config(c.sde)
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    out = jax.eval_shape(cifar10.make_sampler(c, model, sde), params, jax.random.key(0))
    assert out.shape == (3, 32, 32, 3)


def test_ve_time_embedding_must_follow_sigmas():
    c = cifar10.get_config("ncsnpp_continuous_ve")
    c.sde.sigma_max = 378.0
    with pytest.raises(ValueError, match="model.time_scale"):
        cifar10.check_config(c)
    c.model.update(cifar10.ve_time_embedding(0.01, 378.0))
    cifar10.check_config(c)


def test_preset_from_argv():
    assert cifar10.preset_from_argv([]) == cifar10.DEFAULT_PRESET
    assert cifar10.preset_from_argv(["--workdir", "w", "--config.preset=ddpm"]) == "ddpm"
    assert cifar10.preset_from_argv(["--config.preset", "ncsnpp_continuous_ve", "--config.seed=1"]) == \
        "ncsnpp_continuous_ve"
    assert cifar10.sampler_options(cifar10.get_config("ddpm").sample) == {"denoise": True, "steps": 999}


def test_command_line_preset_errors_are_one_line():
    """A preset decides which keys exist: DDPM has no ``fir``; an unknown preset ends with one line, exit 2."""
    import subprocess
    import sys

    from experiments.common import check_config_overrides

    with pytest.raises(ValueError, match="unknown config key 'model.fir'"):
        check_config_overrides(cifar10.get_config("ddpm"), ["--config.model.fir=True"])
    check_config_overrides(cifar10.get_config("ncsnpp_continuous_ve"), ["--config.model.fir=False"])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "experiments.cifar10", "--workdir", "unused", "--config.preset=vp"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown CIFAR-10 preset 'vp'; choose one of " + ", ".join(cifar10.PRESETS) + "."]


@pytest.mark.slow
def test_main_end_to_end_on_random_data(tmp_path, monkeypatch):
    """``main`` of the DDPM preset (discrete loss, ancestral sampler) at width 8: 2 steps, a sample grid, loss plot
    and eval.json, with ``load_images`` replaced by random uint8 data (no tensorflow-datasets). Bits/dim are off:
    compiling the PF-ODE likelihood costs minutes of CPU here, and ``experiments.mnist.test_bpd`` is MNIST's."""
    rng = np.random.default_rng(0)
    data = {s: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32))
            for s, n in (("train", 16), ("test", 4))}
    monkeypatch.setattr(cifar10, "load_images", lambda name, split, data_dir=None, shape=None: data[split])
    c = _tiny("ddpm", ch_mult=(1,))
    c.train.update(steps=2, batch_size=4, checkpoint_every=2, log_every=1)
    c.sample.update(num=4, steps=3, every=2)
    c.eval.bpd_examples = 0
    cifar10.main(c, str(tmp_path))
    assert os.path.exists(tmp_path / "samples_2.png") and os.path.exists(tmp_path / "loss.png")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["preset"] == "ddpm" and report["train_steps"] == 2
    assert "bpd" not in report
