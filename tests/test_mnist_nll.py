"""``benchmarks.mnist_nll``: the baseline fits (per-pixel categorical, EM mixture of categoricals) on small integer
data sets whose answer is known, the PF-ODE kernel-dequantisation bound on a discrete 2-D distribution with its
exact score, the report table, and the baselines on a subset of the real MNIST files."""

import math

import jax
import numpy as np
import pytest

import sde_jax as sj
from benchmarks import mnist_nll as mn
from tests.conftest import MNIST_DIR, NEEDS_MNIST


def test_categorical_is_the_smoothed_frequency():
    x = np.array([[0, 1], [0, 2], [1, 2]])
    logp = mn.fit_categorical(x, alpha=0.5, num_values=3)
    np.testing.assert_allclose(np.exp(logp), np.array([[2.5, 1.5, 0.5], [0.5, 1.5, 2.5]]) / 4.5)
    want = -(logp[0, x[:, 0]] + logp[1, x[:, 1]]) / (2 * math.log(2))
    np.testing.assert_allclose(mn.categorical_bpd(logp, x), want)


def test_categorical_recovers_frequencies_and_rejects_bad_values():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), size=5)  # (D, V)
    x = np.stack([rng.choice(6, 20_000, p=p) for p in probs], axis=1)
    np.testing.assert_allclose(np.exp(mn.fit_categorical(x, 0.01, num_values=6)), probs, atol=0.015)
    with pytest.raises(ValueError, match="pixel values"):
        mn.flat_pixels(np.array([[0, 6]]), 6)
    with pytest.raises(ValueError, match="integer"):
        mn.flat_pixels(np.zeros((2, 3), np.float32))


def test_sparse_component_loglik_matches_a_gather():
    rng = np.random.default_rng(1)
    logp = np.log(rng.dirichlet(np.ones(5), size=(3, 7)))  # (K, D, V)
    x = rng.choice(5, size=(40, 7), p=[0.6, 0.1, 0.1, 0.1, 0.1])  # zeros dominate, as in MNIST
    got = mn.component_loglik(logp, mn.sparse_one_hot(x, 5))
    want = np.stack([logp[k, np.arange(7), x].sum(1) for k in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # a one-component mixture is the categorical
    np.testing.assert_allclose(mn.mixture_bpd(np.zeros(1), logp[:1], x), mn.categorical_bpd(logp[0], x))


def test_em_recovers_two_separated_components():
    rng = np.random.default_rng(2)
    d, v = 30, 4
    comps = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    weights = np.array([0.3, 0.7])

    def draw(n):
        z = rng.choice(2, n, p=weights)
        return np.stack([rng.choice(v, d, p=comps[k]) for k in z]), z

    train, _ = draw(4000)
    test, _ = draw(2000)
    em = mn.fit_mixture(train, 2, alpha=0.01, num_values=v, seed=0, max_iter=50, tol=1e-7)
    order = np.argsort(em["log_pi"])
    np.testing.assert_allclose(np.exp(em["log_pi"][order]), weights, atol=0.03)
    np.testing.assert_allclose(np.exp(em["logp"][order]).mean(1), comps, atol=0.02)
    hist = np.array(em["history"])
    assert np.all(np.diff(hist) <= 1e-6), hist  # EM (MAP, tiny alpha) does not get worse
    # held out: the mixture beats the single categorical and matches the true model's entropy
    true_bpd = -np.log(weights @ np.stack([np.prod(comps[k][test], axis=1) for k in range(2)])) / (d * math.log(2))
    mix = mn.mixture_bpd(em["log_pi"], em["logp"], test).mean()
    cat = mn.categorical_bpd(mn.fit_categorical(train, 0.01, v), test).mean()
    assert mix < cat - 0.2
    assert abs(mix - true_bpd.mean()) < 0.01


def test_uniform_dequant_floor_is_the_cross_entropy_of_a_bump():
    sde = sj.VDMSDE()
    alpha, sigma = (float(a) for a in sde.alpha_sigma(1e-5))
    s = sigma / alpha * 128
    u = (np.arange(200_000) + 0.5) / 200_000 - 0.5  # midpoint rule on one bin
    numeric = np.mean(0.5 * np.log(2 * np.pi * s * s) + u * u / (2 * s * s)) / math.log(2)
    assert mn.uniform_dequant_floor_bpd(sde, 1e-5) == pytest.approx(numeric, rel=1e-6)
    assert 0.85 < numeric < 1.0  # gamma_min = -13.3: about 0.9 bits/dim


def test_readme_section_renders_every_row():
    base = {"n": 10000, "bpd_stderr": 0.004, "nfe": None, "train_seconds": 20.0, "eval_seconds": 0.2,
            "device": "cpu"}
    rows = [{**base, "model": "per-pixel categorical", "bpd": 1.689, "train_steps": None,
             "details": {"alpha": 0.3}},
            {**base, "model": "mixture of 20 per-pixel categoricals (EM)", "bpd": 1.545, "train_steps": 35,
             "details": {"alpha": 0.1, "em_iterations": 35, "em_tol": 1e-4, "em_max_iter": 100}},
            {**base, "model": "VDM (this repo), PF-ODE, uniform dequantisation", "bpd": 2.1, "n": 1000,
             "nfe": 250.4, "train_steps": 12000, "train_seconds": 7200.0,
             "details": {"uniform_dequant_floor_bpd": 0.92}}]
    rec = {"rows": rows, "command": "python -m benchmarks.mnist_nll --data_dir D", "load_avg_1min": 2.0,
           "model": {"workdir": "/runs/x", "n_params": 940000, "train_steps": 12000, "gamma_min": -13.3,
                     "gamma_max": 5.0}}
    text = mn.readme_section([("mnist_nll", rec)])
    assert "| per-pixel categorical | 10000 | 1.689 +- 0.004 |" in text
    assert "35 EM iterations" in text and "| 250 |" in text and "120 min" in text and "floor ~0.92" in text
    assert "`python -m benchmarks.mnist_nll --data_dir D`" in text


@NEEDS_MNIST
def test_baselines_on_a_subset_of_mnist():
    from sde_jax.data.pipeline import load_images

    train, _ = load_images("mnist", "train", MNIST_DIR)
    test, _ = load_images("mnist", "test", MNIST_DIR)
    # 20,000 images: on a few thousand a mixture over-fits and loses to the single categorical
    rows = mn.baselines(train[:20_000], test[:1000], n_components=4, n_valid=2000, em_iters=5)
    cat, mix = rows
    assert cat["n"] == mix["n"] == 1000 and cat["details"]["alpha"] in mn.ALPHAS
    assert 1.6 < cat["bpd"] < 1.9 and 0 < cat["bpd_stderr"] < 0.02  # the full data give 1.69
    assert mix["bpd"] < cat["bpd"] - 0.02 and mix["train_steps"] <= 5
