"""Samplers against the truth: exact Gaussian-mixture scores, so every sampler must reproduce the mixture.

Accuracy is the sliced Wasserstein-1 distance to fresh mixture samples, compared with the noise floor
(the mean distance between independent mixture sample sets of the same size). An exact sampler sits at
about 1x the floor (independent sets fluctuate by ~30 %); a score scaled by 0.8 or 1.25 already lands at ~3x
(reverse SDE) to ~20x (PF-ODE), gross errors (score x 0.5, the PF-ODE without its 1/2) at 20-200x (see the
negative controls).
Every accuracy test also counts the score evaluations at run time and checks ``info["nfe"]``.

The samplers run on ``GaussianMixture.score_fn``, the closed form with one eigendecomposition per mixture
(no LAPACK call inside the sampling loop, which can deadlock XLA's CPU runtime in jaxlib 0.10.2);
``test_mixture_score_is_the_exact_score`` checks it against autodiff of the exact log-density.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_jax as sj
from tests.helpers import Counted, reference_and_floor
from sde_jax import sampling

B = 2000  # samples per run
RATIO = 2.5  # allowed sliced-W1 / noise floor
SW_KEY = jax.random.key(3)


def centred(mix: sj.GaussianMixture) -> sj.GaussianMixture:
    """The mixture shifted to mean zero. Samplers start from N(0, prior_std^2 I); under VE the true p_T keeps the
    data mean m, a mismatch the deterministic samplers carry through as a bias ~ m sigma_data / sigma_max."""
    return sj.GaussianMixture(mix.weights, mix.means - mix.weights @ mix.means, mix.covs)


SDES = {"vp": sj.VPSDE(), "subvp": sj.SubVPSDE(), "ve": sj.VESDE(sigma_max=10.0)}
MIXTURES = {
    2: centred(sj.isotropic_mixture([[-1.0, -0.5], [1.0, 0.5], [0.0, 1.2]], [0.25, 0.3, 0.2])),
    6: centred(sj.random_mixture(jax.random.key(5), 4, 6)),
}


# ------------------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=None)
def counted_score(dim: int, sde_name: str, scale: float = 1.0) -> Counted:
    """One object per (mixture, SDE, scale), so that ``sample``'s compilation cache is reused."""
    exact = MIXTURES[dim].score_fn(SDES[sde_name])
    return Counted(exact if scale == 1.0 else (lambda x, t: scale * exact(x, t)))


sliced_w1 = jax.jit(lambda x, y: sj.sliced_wasserstein(SW_KEY, x, y))


@pytest.fixture(scope="module")
def reference():
    """Per dimension: a reference sample set and the noise floor (mean over 8 independent sets)."""
    return {dim: reference_and_floor(mix, B, sliced_w1) for dim, mix in MIXTURES.items()}


def run_counted(dim, sde_name, method, options, scale=1.0, seed=0):
    fn = counted_score(dim, sde_name, scale)
    fn.calls = 0
    x, info = sj.sample(fn, SDES[sde_name], jax.random.key(seed), (B, dim), method=method, **options)
    x = jax.block_until_ready(x)
    jax.effects_barrier()
    return x, int(info["nfe"]), fn.calls


def ratio_to_floor(x, reference, dim):
    ref, floor = reference[dim]
    return float(sliced_w1(x, ref)) / floor


# ------------------------------------------------------------------------- accuracy against the truth
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("dim", list(MIXTURES))
def test_mixture_score_is_the_exact_score(dim, sde_name):
    mix, sde = MIXTURES[dim], SDES[sde_name]
    x = 2.0 * jax.random.normal(jax.random.key(11), (64, dim))
    t = jnp.linspace(sde.eps, sde.T, 64)  # one time per example
    ref = jax.vmap(lambda xi, ti: mix.diffuse(sde, ti).score(xi[None])[0])(x, t)  # grad of log p_t
    err = jnp.linalg.norm(mix.score_fn(sde)(x, t) - ref, axis=-1) / (1.0 + jnp.linalg.norm(ref, axis=-1))
    assert float(err.max()) < 1e-3


# (sde, method, options, expected nfe or None for adaptive). Every method x every SDE it supports, in 2-D.
CASES_2D = [
    ("vp", "sde", {"steps": 200}, 201),
    ("vp", "sde", {"steps": 100, "solver": "shark"}, 201),
    ("vp", "ode", {}, None),
    ("vp", "ode", {"solver": "heun", "steps": 50, "grid": "edm"}, 101),
    ("vp", "pc", {"steps": 200}, 401),
    ("vp", "ancestral", {"steps": 200}, 201),
    ("vp", "ddim", {"steps": 50}, 51),
    ("vp", "ddim", {"steps": 100, "eta": 1.0}, 101),
    ("subvp", "sde", {"steps": 100, "solver": "sra1"}, 201),
    ("subvp", "sde", {"steps": 200, "brownian": "tree"}, 201),
    ("subvp", "ode", {"solver": "dopri5"}, None),
    ("subvp", "pc", {"steps": 200, "predictor": "euler_maruyama"}, 401),
    ("subvp", "ddim", {"steps": 50, "eta": 0.5}, 51),
    ("subvp", "ancestral", {"steps": 200}, 201),
    ("ve", "sde", {"steps": 200}, 201),
    ("ve", "sde", {"steps": 100, "solver": "shark"}, 201),
    ("ve", "ode", {"solver": "euler", "steps": 250, "grid": "edm"}, 251),
    ("ve", "pc", {"steps": 200}, 401),
    ("ve", "ancestral", {"steps": 200}, 201),
    ("ve", "ddim", {"steps": 50, "grid": "logsnr"}, 51),
    ("vp", "ddim", {"steps": 50, "grid": "quadratic"}, 51),
]
# Every method and every SDE again in 6-D (random full covariances).
CASES_6D = [
    ("vp", "sde", {"steps": 200}, 201),
    ("ve", "sde", {"steps": 100, "solver": "sra1"}, 201),
    ("subvp", "ode", {}, None),
    ("ve", "ode", {}, None),
    ("vp", "pc", {"steps": 200}, 401),
    ("ve", "ancestral", {"steps": 200}, 201),
    ("vp", "ddim", {"steps": 50}, 51),
]


def _case_id(case):
    sde, method, opts, _ = case
    return "-".join([sde, method] + [f"{k}={v}" if k != "ts" else "ts" for k, v in opts.items()])


@pytest.mark.parametrize(
    "dim, case",
    [(2, c) for c in CASES_2D] + [(6, c) for c in CASES_6D],
    ids=[f"2d-{_case_id(c)}" for c in CASES_2D] + [f"6d-{_case_id(c)}" for c in CASES_6D],
)
def test_samples_match_mixture(reference, dim, case):
    sde_name, method, options, expected_nfe = case
    x, nfe, calls = run_counted(dim, sde_name, method, options)
    assert x.shape == (B, dim) and bool(jnp.all(jnp.isfinite(x)))
    assert nfe == calls, f"info['nfe']={nfe} but the score was evaluated {calls} times"
    if expected_nfe is not None:
        assert nfe == expected_nfe
    r = ratio_to_floor(x, reference, dim)
    print(f"W1/floor = {r:.2f}")
    assert r < RATIO, f"sliced W1 is {r:.2f}x the noise floor (allowed {RATIO}x)"


@pytest.mark.parametrize(
    "method, options, scale",
    [
        ("ode", {}, 0.5),  # score too small
        ("ode", {}, 2.0),  # the same as forgetting the 1/2 of the probability-flow drift
        ("sde", {"steps": 200}, 0.5),
        ("ddim", {"steps": 50}, 1.25),
    ],
)
def test_wrong_score_is_detected(reference, method, options, scale):
    """Negative control: the same test with a deliberately wrong score fails by a wide margin."""
    x, _, _ = run_counted(2, "vp", method, options, scale=scale)
    r = ratio_to_floor(x, reference, 2)
    print(f"W1/floor = {r:.2f}")
    assert r > 2 * RATIO


def test_pc_without_corrector_is_the_predictor_alone(reference):
    """n_corrector=0 runs only the predictor (nfe = steps + 1) and is still a correct sampler."""
    x, nfe, calls = run_counted(2, "ve", "pc", {"steps": 200, "n_corrector": 0})
    assert nfe == calls == 201
    assert ratio_to_floor(x, reference, 2) < RATIO


# ----------------------------------------------------------------------------------- PF-ODE round trip
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_encode_decode_round_trip(sde_name):
    sde = SDES[sde_name]
    mix = MIXTURES[2]
    score = counted_score(2, sde_name)
    x = mix.sample(jax.random.key(7), 256)
    z, info_e = sj.encode(score, sde, x, rtol=1e-5, atol=1e-5)
    x_back, info_d = sj.decode(score, sde, z, rtol=1e-5, atol=1e-5)
    err = float(jnp.max(jnp.abs(x_back - x)))
    assert err < 1e-3, f"max |decode(encode(x)) - x| = {err:.2e}"
    # the latent is a draw from (approximately) the prior N(0, prior_std^2 I)
    assert abs(float(jnp.std(z)) / sde.prior_std - 1.0) < 0.15
    assert int(info_e["nfe"]) > 7 and int(info_d["nfe"]) > 7


@pytest.mark.parametrize("sde_name", list(SDES))
def test_time_grids(sde_name):
    """Every grid: exact end points, strictly decreasing, reversible, and uniform in its own variable."""
    sde = SDES[sde_name]
    lo = sde.eps
    for grid in sampling.GRIDS:
        ts = np.asarray(sampling.time_grid(sde, 10, sde.T, lo, grid))
        assert ts.shape == (11,) and ts[0] == np.float32(sde.T) and ts[-1] == np.float32(lo)
        assert np.all(np.diff(ts) < 0), grid
        up = np.asarray(sampling.time_grid(sde, 10, lo, sde.T, grid))
        np.testing.assert_array_equal(up, ts[::-1])
    u = lambda grid: np.asarray(sampling.time_grid(sde, 10, sde.T, lo, grid), np.float64)
    np.testing.assert_allclose(np.diff(u("uniform")), -(sde.T - lo) / 10, rtol=1e-4)
    np.testing.assert_allclose(u("quadratic") - lo, (sde.T - lo) * np.linspace(1, 0, 11) ** 2, atol=1e-6)
    lam = np.asarray(sde.log_snr(jnp.asarray(u("logsnr"), jnp.float32)), np.float64)
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=2e-3)
    # EDM: s = sigma / alpha = exp(-lambda / 2) is equally spaced in s^(1/7)
    alpha, sigma = sde.alpha_sigma(jnp.asarray(u("edm"), jnp.float32))
    s7 = np.asarray(sigma / alpha, np.float64) ** (1 / 7)
    np.testing.assert_allclose(np.diff(s7), np.diff(s7)[0], rtol=2e-3)


def test_user_grid_equals_named_grid():
    """ts= runs exactly the grid it is given: the EDM grid passed as ts reproduces grid="edm"."""
    sde, score = SDES["vp"], counted_score(2, "vp")
    ts = np.asarray(sampling.time_grid(sde, 8, sde.T, sde.eps, "edm"))
    a, ia = sj.sample(score, sde, jax.random.key(0), (16, 2), method="ddim", steps=8, grid="edm")
    b, ib = sj.sample(score, sde, jax.random.key(0), (16, 2), method="ddim", ts=ts)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert int(ia["nfe"]) == int(ib["nfe"]) == 9


# ---------------------------------------------------------------------------------- jit and caching
def test_sample_compiles_once_and_is_deterministic():
    traces = [0]
    exact = MIXTURES[2].score_fn(SDES["vp"])

    def score(x, t):
        traces[0] += 1  # runs once per trace, never at run time
        return exact(x, t)

    sde = SDES["vp"]
    for method, opts in [("ddim", {"steps": 5}), ("ode", {"solver": "heun", "steps": 5})]:
        traces[0] = 0
        a, _ = sj.sample(score, sde, jax.random.key(0), (16, 2), method=method, **opts)
        first = traces[0]
        assert first > 0
        b, _ = sj.sample(score, sde, jax.random.key(0), (16, 2), method=method, **opts)
        c, _ = sj.sample(score, sde, jax.random.key(1), (16, 2), method=method, **opts)
        assert traces[0] == first, f"{method}: sample() retraced on the second call"
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)

    # sample also runs inside a caller's jit (the key traced, everything else static)
    traces[0] = 0
    fn = jax.jit(functools.partial(sj.sample, score, sde, shape=(16, 2), method="pc", steps=5))
    x1, info = fn(jax.random.key(0))
    n = traces[0]
    x2, _ = fn(jax.random.key(1))
    assert traces[0] == n and x1.shape == (16, 2) and int(info["nfe"]) == 11
    assert not np.allclose(x1, x2)


# ------------------------------------------------------------------------------------------ bad options
def _boom(x, t):
    raise AssertionError("the score must not be evaluated before the options are validated")


BAD = [
    ("vp", "flow", (8, 2), {}, "unknown sampling method"),
    ("vp", "sde", (2,), {}, "batch dimension"),
    ("vp", "ode", (), {}, "batch dimension"),
    ("vp", "sde", (8, 2), {"steps": 0}, "steps must be an integer >= 1"),
    ("vp", "pc", (8, 2), {"steps": 2.5}, "steps must be an integer >= 1"),
    ("vp", "ddim", (8, 2), {"steps": -3}, "steps must be an integer >= 1"),
    ("vp", "sde", (8, 2), {"solver": "rk4"}, "unknown SDE solver"),
    ("vp", "ode", (8, 2), {"solver": "rk4"}, "unknown ODE solver"),
    ("vp", "ode", (8, 2), {"solver": "euler"}, "has no error estimate"),
    ("ve", "pc", (8, 2), {"snr": 0.0}, "snr must be > 0"),
    ("vp", "pc", (8, 2), {"snr": -0.1}, "snr must be > 0"),
    ("vp", "pc", (8, 2), {"predictor": "ancestral"}, "unknown predictor"),
    ("vp", "pc", (8, 2), {"n_corrector": -1}, "n_corrector"),
    ("vp", "ancestral", (8, 2), {"steps": 1000}, "steps must be <= N - 1"),
    ("vp", "ddim", (8, 2), {"eta": 1.5}, "eta must lie in"),
    ("vp", "ode", (8, 2), {"stpes": 10}, "unknown option"),
    ("vp", "ode", (8, 2), {"rtol": 0.0}, "rtol must be a positive"),
    ("vp", "ode", (8, 2), {"grid": "cosine", "steps": 10}, "unknown time grid"),
    ("vp", "sde", (8, 2), {"eps": 0.0}, "eps must lie in"),
    ("vp", "sde", (8, 2), {"brownian": "fast"}, "unknown Brownian"),
    ("vp", "ddim", (8, 2), {"denoise": "yes"}, "denoise must be"),
    ("vp", "ode", (8, 2), {"steps": 10, "rtol": 1e-3}, "apply only to adaptive"),
    ("vp", "ode", (8, 2), {"grid": "edm"}, "apply only to fixed"),
    ("vp", "ddim", (8, 2), {"ts": [1.0, 0.5, 0.001], "steps": 2}, "ts fixes the time grid"),
    ("vp", "pc", (8, 2), {"ts": [1.0, 0.001, 0.5]}, "strictly decreasing"),
    ("vp", "sde", (8, 2), {"ts": [1.0]}, "at least 2 times"),
    ("vp", "ancestral", (8, 2), {"ts": [2.0, 0.5]}, "must lie in"),
    ("vp", "ddim", (8, 2), {"ts": [1.0, np.nan]}, "NaN"),
    ("vp", "ddim", (8, 2), {"ts": [1.0, 0.0]}, "denoising step"),
]


@pytest.mark.parametrize("sde_name, method, shape, options, match", BAD, ids=[f"{b[1]}-{b[4]}" for b in BAD])
def test_bad_options_raise_before_any_work(sde_name, method, shape, options, match):
    sde = SDES[sde_name]
    with pytest.raises(ValueError, match=match):
        sj.sample(_boom, sde, jax.random.key(0), shape, method=method, **options)
    # the same checks are static, so they also fire under jax.jit
    fn = jax.jit(functools.partial(sj.sample, _boom, sde, shape=shape, method=method, **options))
    with pytest.raises(ValueError, match=match):
        fn(jax.random.key(0))


def test_encode_decode_validate_too():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="batch dimension"):
        sj.encode(_boom, sde, jnp.zeros((2,)))
    with pytest.raises(ValueError, match="has no error estimate"):
        sj.decode(_boom, sde, jnp.zeros((4, 2)), solver="euler")
