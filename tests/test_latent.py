"""Latent diffusion: the bound of ``sde_jax.latent`` against the closed-form likelihood of probabilistic PCA (exact
encoder, decoder and latent score), the VAE's distributions and network, its loss, and both experiments end to end
on a slice of the real MNIST files (``experiments.vae`` -> ``experiments.latent``) with the scale / fingerprint
checks between them."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_jax as sj
from sde_jax import latent
from sde_jax.eval import latent as vae_tools
from sde_jax.losses import vae_loss
from sde_jax.nn import build_model
from sde_jax.nn.autoencoder import latent_shape
from sde_jax.train.step import init_train_state, make_optimizer, make_train_step
from tests.conftest import MNIST_DIR, NEEDS_MNIST


# ------------------------------------------------------------------------------------------ the bound, closed form
class PPCA:
    """x = W z + mu + sigma eps, z ~ N(0, I_k), W = U diag(s) with orthonormal U (so the exact posterior
    q(z | x) = N(M^-1 W^T (x - mu), sigma^2 M^-1), M = W^T W + sigma^2 I, is diagonal), and its exact pieces."""

    D, K, SIGMA = 6, 2, 0.3

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        u, _ = np.linalg.qr(rng.standard_normal((self.D, self.K)))
        self.s = np.array([1.5, 0.7])
        self.w = u * self.s
        self.mu = rng.standard_normal(self.D)
        self.m_diag = self.s**2 + self.SIGMA**2  # M = W^T W + sigma^2 I = diag(s^2 + sigma^2)
        self.rng = rng

    def sample(self, n: int) -> np.ndarray:
        z = self.rng.standard_normal((n, self.K))
        return (z @ self.w.T + self.mu + self.SIGMA * self.rng.standard_normal((n, self.D))).astype(np.float32)

    def nll(self, x: np.ndarray) -> np.ndarray:
        """-log N(x; mu, W W^T + sigma^2 I) in float64."""
        cov = self.w @ self.w.T + self.SIGMA**2 * np.eye(self.D)
        d = np.asarray(x, np.float64) - self.mu
        maha = np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d)
        return 0.5 * (maha + np.linalg.slogdet(cov)[1] + self.D * math.log(2 * math.pi))

    def encode(self, x):
        w, mu = jnp.asarray(self.w, jnp.float32), jnp.asarray(self.mu, jnp.float32)
        mean = ((x - mu) @ w) / jnp.asarray(self.m_diag, jnp.float32)
        logvar = jnp.log(jnp.asarray(self.SIGMA**2 / self.m_diag, jnp.float32))
        return mean, jnp.broadcast_to(logvar, mean.shape)

    def decoder_nll(self, x, z):
        r = x - z @ jnp.asarray(self.w.T, jnp.float32) - jnp.asarray(self.mu, jnp.float32)
        return 0.5 * jnp.sum(r**2 / self.SIGMA**2 + math.log(2 * math.pi * self.SIGMA**2), axis=-1)


C = 0.5  # the latent scale the exact score is built for: u = C z ~ N(0, C^2 I)
TOL = 2e-3  # nats: solver error at rtol = atol = 1e-6 with the exact divergence (measured ~4e-5)


@pytest.fixture(scope="module")
def ppca():
    model = PPCA()
    sde = sj.VPSDE()
    u_marginal = sj.GaussianMixture(jnp.ones(1), jnp.zeros((1, PPCA.K)), C**2 * jnp.eye(PPCA.K)[None])
    x = jnp.asarray(model.sample(8))

    def bound(scale, entropy="sample"):
        return latent.latent_bound(x, jax.random.key(0), encode=model.encode, decoder_nll=model.decoder_nll,
                                   score=score, sde=sde, scale=scale, entropy=entropy, divergence="exact",
                                   rtol=1e-6, atol=1e-6)

    score = u_marginal.score_fn(sde)  # one function object: every bound below reuses one compiled solve
    return model, x, bound


def test_bound_equals_the_ppca_likelihood(ppca):
    """With the exact posterior as encoder, log p(x | z) + log p(z) - log q(z | x) = log p(x) for every z, so one
    draw gives the exact -log p(x) up to the PF-ODE solve of log p_u(C z) + d_z log C."""
    model, x, bound = ppca
    terms, info = bound(C)
    true = model.nll(np.asarray(x))
    np.testing.assert_allclose(np.asarray(info["nats"]), true, atol=TOL)
    bits = PPCA.D * math.log(2)
    np.testing.assert_allclose(np.asarray(terms["total"]) * bits, np.asarray(info["nats"]), rtol=1e-6)
    total = terms["reconstruction"] + terms["neg_entropy"] + terms["prior"]
    np.testing.assert_allclose(np.asarray(total), np.asarray(terms["total"]), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(float(info["log_jacobian"]), PPCA.K * math.log(C), rtol=1e-6)
    assert int(info["nfe"]) > 0 and all(v.shape == (8,) for v in terms.values())
    # "analytic": the same draws (same key) for the other terms, -H[q] in closed form for the entropy term
    analytic, _ = bound(C, entropy="analytic")
    np.testing.assert_allclose(np.asarray(analytic["prior"]), np.asarray(terms["prior"]), rtol=1e-6)
    want = -0.5 * PPCA.K * math.log(2 * math.pi * math.e) - 0.5 * np.sum(np.log(PPCA.SIGMA**2 / model.m_diag))
    np.testing.assert_allclose(np.asarray(analytic["neg_entropy"]) * bits, want, rtol=1e-5)


def test_a_wrong_scale_or_a_dropped_jacobian_is_far_off(ppca):
    """The score of u = C z with latents scaled by 2C is still a proper density (a looser bound: above the truth on
    average), and dropping the Jacobian d_z log C of u = C z is not one (off by |d_z log C| = 1.39 nats)."""
    model, x, bound = ppca
    true = model.nll(np.asarray(x))
    _, wrong = bound(2 * C)
    err = np.asarray(wrong["nats"]) - true
    assert np.mean(err) > 100 * TOL and np.max(np.abs(err)) > 500 * TOL
    _, info = bound(C)
    no_jacobian = np.asarray(info["nats"] + info["log_jacobian"])  # -log p_u(C z) in place of -log p_z(z)
    np.testing.assert_allclose(no_jacobian - true, PPCA.K * math.log(C), atol=TOL)
    assert np.all(np.abs(no_jacobian - true) > 500 * TOL)


def test_bound_rejects_bad_scale_and_shapes(ppca):
    model, x, _ = ppca
    kw = dict(decoder_nll=model.decoder_nll, score=lambda u, t: -u, sde=sj.VPSDE())
    for bad in (None, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="latent scale must be a finite number > 0"):
            latent.latent_bound(x, jax.random.key(0), encode=model.encode, scale=bad, **kw)
    with pytest.raises(ValueError, match="encode\\(x\\) must return"):
        latent.latent_bound(x, jax.random.key(0), encode=lambda v: (v[:, :2], v[:, :3]), scale=1.0, **kw)
    with pytest.raises(ValueError, match="NaN or Inf"):
        latent.latent_bound(x, jax.random.key(0), encode=lambda v: (v[:, :2] * jnp.nan, v[:, :2]), scale=1.0, **kw)
    with pytest.raises(ValueError, match="unknown entropy"):
        latent.latent_bound(x, jax.random.key(0), encode=model.encode, scale=1.0, entropy="exact", **kw)


# ------------------------------------------------------------------------------------------ distributions
def test_discretized_logistic_sums_to_one_and_matches_cdf_differences():
    rng = np.random.default_rng(0)
    loc = rng.uniform(-1.5, 1.5, (64, 1)).astype(np.float32)
    log_scale = rng.uniform(-7.0, 1.0, (64, 1)).astype(np.float32)
    k = jnp.arange(256)[None, :]
    logp = latent.discretized_logistic_logp(k, jnp.asarray(loc), jnp.asarray(log_scale))
    assert bool(jnp.all(jnp.isfinite(logp)))
    np.testing.assert_allclose(np.asarray(jnp.sum(jnp.exp(logp), axis=1)), 1.0, atol=2e-5)
    # against F(upper edge) - F(lower edge) of the logistic in float64, open at the two ends
    edges = np.concatenate([[-np.inf], 2 * np.arange(1, 256) / 256 - 1, [np.inf]])
    from scipy.special import expit

    cdf = expit((edges[None, :] - loc.astype(np.float64)) / np.exp(log_scale.astype(np.float64)))
    want = np.diff(cdf, axis=1)
    p = np.exp(np.asarray(logp, np.float64))
    np.testing.assert_allclose(p, want, atol=1e-6)
    big = want > 1e-3
    np.testing.assert_allclose(p[big], want[big], rtol=1e-4)
    # x on [-1, 1] maps to its bin; a dequantised value stays in it
    x = jnp.asarray([-1.0, -1 + 1 / 256, 1 - 1e-7, 1.0, 2 * 37.9 / 256 - 1])
    assert latent.to_bins(x).tolist() == [0, 0, 255, 255, 37]
    with pytest.raises(ValueError, match="integer bins"):
        latent.discretized_logistic_logp(x, x, x)


def test_gaussian_kl_logp_and_entropy_against_closed_forms():
    rng = np.random.default_rng(1)
    mean = rng.standard_normal((3, 5)).astype(np.float32)
    logvar = rng.uniform(-2, 1, (3, 5)).astype(np.float32)
    kl = np.asarray(latent.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
    for b in range(3):  # KL(N(m, S) || N(0, I)) = 1/2 [tr S + m^T m - d - log det S] with the full matrix S
        cov = np.diag(np.exp(logvar[b].astype(np.float64)))
        want = 0.5 * (np.trace(cov) + mean[b] @ mean[b] - 5 - np.linalg.slogdet(cov)[1])
        np.testing.assert_allclose(kl[b], want, rtol=1e-5)
    z = rng.standard_normal((3, 5)).astype(np.float32)
    from scipy.stats import multivariate_normal

    want = [multivariate_normal(mean[b], np.diag(np.exp(logvar[b]))).logpdf(z[b]) for b in range(3)]
    np.testing.assert_allclose(np.asarray(latent.gaussian_logp(jnp.asarray(z), jnp.asarray(mean),
                                                               jnp.asarray(logvar))), want, rtol=1e-5)
    want = [multivariate_normal(mean[b], np.diag(np.exp(logvar[b]))).entropy() for b in range(3)]
    np.testing.assert_allclose(np.asarray(latent.gaussian_entropy(jnp.asarray(logvar))), want, rtol=1e-5)
    # the KL as E_q[log q - log p] by Monte Carlo, with draws from reparameterize
    draws = jax.vmap(lambda k: latent.reparameterize(k, jnp.asarray(mean), jnp.asarray(logvar)))(
        jax.random.split(jax.random.key(0), 20000))
    log_q = jax.vmap(lambda zz: latent.gaussian_logp(zz, jnp.asarray(mean), jnp.asarray(logvar)))(draws)
    log_p = jax.vmap(lambda zz: latent.gaussian_logp(zz, jnp.zeros_like(zz), jnp.zeros_like(zz)))(draws)
    np.testing.assert_allclose(np.asarray(jnp.mean(log_q - log_p, axis=0)), kl, atol=0.05)


def test_latent_scale_and_fingerprint():
    z = np.random.default_rng(2).normal(0.3, 4.0, (100, 7, 7, 4))
    assert latent.latent_scale(z) == pytest.approx(1 / np.std(z))
    with pytest.raises(ValueError, match="zero spread"):
        latent.latent_scale(np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        latent.latent_scale(np.array([1.0, np.nan]))
    params = {"a": np.arange(3, dtype=np.float32), "b": {"c": np.ones((2, 2), np.float32)}}
    f = latent.params_fingerprint(params)
    assert f == latent.params_fingerprint(jax.tree.map(jnp.asarray, params)) and len(f) == 64
    changed = {"a": params["a"] + np.float32(1e-6), "b": params["b"]}
    renamed = {"x": params["a"], "b": params["b"]}
    assert len({f, latent.params_fingerprint(changed), latent.params_fingerprint(renamed)}) == 3


def test_latent_batches_scale_draws_and_order():
    """u = c (m + e^(v/2) eps): the batch order of ImageBatches (epoch permutations), fresh eps per step, rows of one
    global batch, labels following their latents; a pure function of the step."""
    from sde_jax.data.pipeline import EpochOrder, LatentBatches

    n = 10
    mean = np.arange(n, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    labels = np.arange(n, dtype=np.int32) + 100
    b = LatentBatches(mean, np.full_like(mean, -60.0), labels, 4, scale=0.5, seed=1)  # std e^-30: u = c m
    batch = b(2)
    idx = EpochOrder(n, 4, 1)(2)
    np.testing.assert_allclose(batch["x"][:, 0, 0, 0], 0.5 * idx, atol=1e-6)
    assert batch["y"].tolist() == (idx + 100).tolist() and batch["x"].dtype == np.float32
    assert sorted(np.concatenate([EpochOrder(n, 5, 1)(s) for s in (0, 1)]).tolist()) == list(range(n))
    noisy = LatentBatches(mean, np.zeros_like(mean), None, 4, scale=2.0, seed=1)
    np.testing.assert_array_equal(noisy(3), noisy(3))
    np.testing.assert_array_equal(noisy(3, slice(2, 4)), noisy(3)[2:4])
    eps = noisy(3) / 2.0 - mean[EpochOrder(n, 4, 1)(3)]
    assert 0.5 < np.std(eps) < 2.0 and not np.allclose(noisy(3) / 2.0 - mean[EpochOrder(n, 4, 1)(3)],
                                                       noisy(13) / 2.0 - mean[EpochOrder(n, 4, 1)(13)])
    with pytest.raises(ValueError, match="latent scale"):
        LatentBatches(mean, mean, None, 4, scale=0.0)
    with pytest.raises(ValueError, match="equal shapes"):
        LatentBatches(mean, mean[:, :1], None, 4, scale=1.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        LatentBatches(mean * np.nan, mean, None, 4, scale=1.0)


# ------------------------------------------------------------------------------------------ the VAE network
@pytest.mark.parametrize("kwargs,image,want", [
    ({}, (28, 28, 1), (7, 7, 4)),  # the default: 2x2 patches + one stride-2 level
    ({"patch_size": 1, "ch_mult": (1, 2, 2)}, (28, 28, 1), (7, 7, 4)),  # two stride-2 convolutions
    ({"latent_channels": 3, "ch_mult": (1, 2, 2)}, (32, 32, 3), (4, 4, 3)),
])
def test_vae_shapes(kwargs, image, want):
    model = build_model("vae", ch=8, out_channels=image[-1], **kwargs)
    x = jax.ShapeDtypeStruct((2, *image), jnp.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, jnp.ones((2,))), x)  # as the loop inits
    mean, logvar = jax.eval_shape(lambda p, x: model.apply(p, x, method="encode"), params, x)
    assert mean.shape == logvar.shape == (2, *want)
    m = model
    assert latent_shape(image, m.ch_mult, m.latent_channels, m.patch_size) == want
    loc, log_scale = jax.eval_shape(lambda p, z: model.apply(p, z, method="decode"), params, mean)
    assert loc.shape == log_scale.shape == (2, *image)


def test_vae_shape_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        latent_shape((30, 30, 1), (1, 2), 4, patch_size=2)
    model = build_model("vae", ch=8)
    with pytest.raises(ValueError, match="multiple of 4"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 30, 30, 1), jnp.float32))
    with pytest.raises(ValueError, match="expects NHWC images"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32))


def test_a_few_vae_steps_lower_the_loss():
    """20 Adam steps on one batch of 8 MNIST-like images (the same noise every step) lower the loss: bits/dim of
    the reconstruction plus kl_weight times the KL."""
    rng = np.random.default_rng(3)
    k = np.zeros((8, 28, 28, 1), np.uint8)
    k[:, 8:20, 10:18] = rng.integers(150, 256, (8, 12, 8, 1))
    x = jnp.asarray((2 * k.astype(np.float32) + 1) / 256 - 1)
    model = build_model("vae", ch=8, ch_mult=(1,), num_res_blocks=0)  # 14x14x4 latents: few ops to compile
    opt = make_optimizer(3e-3, warmup=0, grad_clip=1.0)
    state = init_train_state(jax.jit(model.init)(jax.random.key(0), x), opt)
    step = jax.jit(make_train_step(vae_loss(model.apply, kl_weight=0.01), opt, 0.9))
    losses = []
    for _ in range(20):
        state, metrics = step(state, x, jax.random.key(1))  # metrics: the loss before this step's update
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    with pytest.raises(ValueError, match="kl_weight"):
        vae_loss(model.apply, kl_weight=-1.0)


# ------------------------------------------------------------------------------------------ the experiments
SLICE = {"train": 128, "test": 64}


@pytest.fixture(scope="module")
def mnist_slice():
    """The first 128 training and 64 test images of the real MNIST files, as ``load_images`` returns them."""
    if not os.path.isdir(MNIST_DIR):
        pytest.skip(f"MNIST IDX files not found at {MNIST_DIR}")
    from sde_jax.data.pipeline import load_images

    out = {}
    for split, n in SLICE.items():
        images, labels = load_images("mnist", split, MNIST_DIR)
        out[split] = (images[:n], labels[:n])
    return lambda name, split, data_dir=None, shape=None: out[split]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_slice):
    """(workdir, config) of ``experiments.vae.main``: a tiny VAE, 4 steps on the MNIST slice."""
    from experiments import vae

    c = vae.get_config()
    c.data.dir = MNIST_DIR
    c.model.update(ch=8, num_res_blocks=0)
    c.train.update(steps=4, batch_size=16, warmup=1, decay_steps=0, log_every=2, checkpoint_every=2)
    c.eval.update(batch_size=64, grid_rows=1, grid_cols=4)
    workdir = str(tmp_path_factory.mktemp("vae"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vae, "load_images", mnist_slice)
        vae.main(c, workdir)
    return workdir, c


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, vae_run, mnist_slice, mnist_classifier):
    """(workdir, config) of ``experiments.latent.main`` on the tiny VAE: a tiny U-Net, 2 steps, a sample grid, the
    bound of 4 test images and the classifier evaluation of 10 samples."""
    from experiments import latent as latent_exp

    c = latent_exp.get_config()
    c.vae_dir = vae_run[0]
    c.model.update(ch=8, ch_mult=(1,), num_res_blocks=0)
    c.train.update(steps=2, batch_size=8, warmup=1, decay_steps=0, log_every=1, checkpoint_every=2)
    c.sample.update(per_class=1, steps=3)
    c.eval.update(bpd_examples=4, batch_size=10, rtol=1e-2, atol=1e-2, classifier_dir=mnist_classifier[0],
                  fd_samples=10)
    workdir = str(tmp_path_factory.mktemp("latent"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(latent_exp, "load_images", mnist_slice)
        latent_exp.main(c, workdir)
    return workdir, c


@NEEDS_MNIST
def test_vae_experiment_records_scale_fingerprint_and_reconstructions(vae_run):
    from sde_jax.train import restore

    workdir, _ = vae_run
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    for name in ("reconstructions_2.png", "reconstructions_4.png", "loss.png"):
        with open(os.path.join(workdir, name), "rb") as f:
            assert f.read(4) == b"\x89PNG", name
    record = json.load(open(os.path.join(workdir, vae_tools.RECORD_FILE)))
    report = json.load(open(os.path.join(workdir, "eval.json")))
    assert record["latent_shape"] == report["latent_shape"] == [7, 7, 4] and record["step"] == 4
    assert record["scale"] == pytest.approx(1 / record["latent_std"]) and record["scale_examples"] == SLICE["train"]
    assert record["fingerprint"] == latent.params_fingerprint(restore(workdir).params)
    assert report["n_examples"] == SLICE["test"] and 0 < report["recon_bpd"] < 10 and report["kl_bpd"] >= 0
    assert report["mse_8bit"] > 0 and np.isfinite(report["psnr_db"])
    vae = vae_tools.load_vae(workdir)
    assert vae.latent_shape == (7, 7, 4) and vae.scale == record["scale"] and vae.directory == workdir
    images = vae.images(jnp.zeros((2, 7, 7, 4)))
    assert images.shape == (2, 28, 28, 1) and images.dtype == np.uint8


@NEEDS_MNIST
def test_latent_experiment_trains_samples_and_bounds(latent_run, vae_run):
    from experiments import latent as latent_exp

    workdir, _ = latent_run
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    for name in ("samples_2.png", "loss.png"):
        with open(os.path.join(workdir, name), "rb") as f:
            assert f.read(4) == b"\x89PNG", name
    report = json.load(open(os.path.join(workdir, "eval.json")))
    vae = vae_tools.load_vae(vae_run[0])
    assert report["vae"]["fingerprint"] == vae.fingerprint and report["vae"]["scale"] == vae.scale
    assert report["n_examples"] == 4 and report["nfe_mean"] > 0 and report["train_steps"] == 2
    terms = report["bpd_terms"]
    assert report["bpd"] == terms["total"] == pytest.approx(terms["reconstruction"] + terms["neg_entropy"]
                                                             + terms["prior"], rel=1e-5)
    assert terms["reconstruction"] > 0 and np.isfinite(report["bpd_stderr"])
    assert 0.0 <= report["sample_accuracy"] <= 1.0 and report["fd_classifier"] >= 0
    r, frozen = latent_exp.load_latent_model(workdir)  # the score model and the VAE it was trained on
    assert tuple(r.config.data.shape) == (7, 7, 4) and frozen.fingerprint == vae.fingerprint
    assert r.config.vae.fingerprint == vae.fingerprint and r.config.data.name == "mnist"


@NEEDS_MNIST
def test_latent_refuses_a_vae_without_scale_or_with_other_weights(vae_run, latent_run, tmp_path, monkeypatch):
    from experiments import latent as latent_exp

    vae_dir, (workdir, config) = vae_run[0], latent_run
    vae = vae_tools.load_vae(vae_dir)
    with pytest.raises(ValueError, match="no VAE given"):
        latent_exp.main(latent_exp.get_config(), str(tmp_path / "run"))
    # no latent.json: the VAE never finished (no scale)
    bare = str(tmp_path / "bare")
    shutil.copytree(vae_dir, bare)
    os.remove(os.path.join(bare, vae_tools.RECORD_FILE))
    config.vae_dir = bare
    with pytest.raises(FileNotFoundError, match="has no latent scale"):
        latent_exp.main(config, str(tmp_path / "run"))
    # a record without a usable scale
    record = json.load(open(os.path.join(vae_dir, vae_tools.RECORD_FILE)))
    json.dump({**record, "scale": None}, open(os.path.join(bare, vae_tools.RECORD_FILE), "w"))
    with pytest.raises(ValueError, match="latent scale must be a finite number > 0"):
        vae_tools.load_vae(bare)
    # weights that are not the ones the scale was computed with (the VAE trained on after writing it)
    json.dump({**record, "fingerprint": "0" * 64}, open(os.path.join(bare, vae_tools.RECORD_FILE), "w"))
    with pytest.raises(ValueError, match="not the ones its latent scale was computed with"):
        vae_tools.load_vae(bare)
    # a latent run resumed, or read, with another VAE or another scale: refused before any work
    other = dataclasses.replace(vae, fingerprint="f" * 64)
    with pytest.raises(ValueError, match="was trained on the latents of VAE weights"):
        latent_exp.check_workdir(workdir, other)
    with pytest.raises(ValueError, match="latent scale"):
        latent_exp.check_workdir(workdir, dataclasses.replace(vae, scale=2 * vae.scale))
    monkeypatch.setattr(latent_exp, "load_vae", lambda d: other)
    config.vae_dir = vae_dir
    with pytest.raises(ValueError, match="was trained on the latents of VAE weights"):
        latent_exp.main(config, workdir)
    with pytest.raises(ValueError, match="was trained on the latents of VAE weights"):
        latent_exp.load_latent_model(workdir)
    with pytest.raises(ValueError, match="records no VAE"):
        latent_exp.check_vae(None, vae, "somewhere")
