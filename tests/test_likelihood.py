"""Likelihood: PF-ODE log-density, Hutchinson, ELBO, bits/dim and data-set evaluation, against closed forms;
compilation: one program per score structure, new weights of a ScoreModel reuse it.

Gaussian mixtures give the exact score and the exact log p_t under every linear SDE (sde_jax.gmm), so every
number here is checked against truth. Mixtures are centred with scale ~1 so the N(0, I) prior mismatch at T is
negligible (the N(0, I) prior at T differs from the true marginal by ~1e-2 nats for data far from
the origin); VE uses sigma_max = 50 >> data scale.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import sde_jax as sj
from sde_jax.eval import count_compiles
from sde_jax import likelihood as lik
from sde_jax.elbo import gaussian_kl_to_prior
from sde_jax.nn import ScoreMLP

EPS = 1e-5
SDES = {"vp": sj.VPSDE(), "subvp": sj.SubVPSDE(), "ve": sj.VESDE(sigma_min=0.01, sigma_max=50.0)}


def centred(mix: sj.GaussianMixture) -> sj.GaussianMixture:
    mean = jnp.sum(mix.weights[:, None] * mix.means, axis=0)
    return sj.GaussianMixture(mix.weights, mix.means - mean, mix.covs)


@pytest.fixture(scope="module")
def mixtures():
    mix2 = centred(sj.isotropic_mixture([[0.6, 0.5], [-0.5, -0.3], [0.2, -0.7]], [0.3, 0.25, 0.35]))
    mix8 = centred(sj.random_mixture(jax.random.key(8), 4, 8, spread=0.5, scale=0.4))
    return {2: mix2, 8: mix8}


@pytest.fixture(scope="module")
def score_fns(mixtures):
    """One score_fn object per (dim, sde): jitted solves are cached on it across tests."""
    return {(d, name): mix.score_fn(sde) for d, mix in mixtures.items() for name, sde in SDES.items()}


def gaussian_score(sde, c=0.5):
    """Exact score of N(0, c^2 I) data under ``sde``: s(x, t) = -x / (alpha_t^2 c^2 + sigma_t^2)."""

    def fn(x, t):
        alpha, sigma = sde.alpha_sigma(t)
        return -x / sj.sde.batch_broadcast(alpha**2 * c**2 + sigma**2, x)

    return fn


@pytest.fixture(scope="module")
def cheap():
    """A cheap-to-compile exact score (2-D Gaussian data, VP) for tests of mechanics, not accuracy."""
    sde = SDES["vp"]
    x = 0.5 * jax.random.normal(jax.random.key(31), (10, 2))
    truth = sj.isotropic_mixture([[0.0, 0.0]], 0.5).diffuse(sde, EPS).log_prob(x)
    return gaussian_score(sde), sde, x, truth


@pytest.fixture(scope="module")
def data(mixtures):
    return {d: mix.sample(jax.random.key(100 + d), 256) for d, mix in mixtures.items()}


# ------------------------------------------------------------------------------ closed-form checks
@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("name", list(SDES))
def test_exact_divergence_matches_closed_form(mixtures, score_fns, data, dim, name):
    sde, mix = SDES[name], mixtures[dim]
    x = data[dim][:32]
    logp, info = sj.log_likelihood(score_fns[dim, name], sde, x, jax.random.key(0), divergence="exact", eps=EPS)
    truth = mix.diffuse(sde, EPS).log_prob(x)
    assert logp.shape == (32,) and info["z"].shape == x.shape
    np.testing.assert_array_less(np.abs(np.asarray(logp - truth)), 1e-2)
    # The latent is the PF-ODE image at T: close to prior scale, and log p = prior + divergence integral.
    np.testing.assert_allclose(info["prior_logp"] + info["delta_logp"], logp, rtol=1e-6, atol=1e-5)
    assert int(info["nfe"]) > 10


def _drift_without_half(sde, score_fn, x, t):
    return sde.drift(x, t) - sj.sde.batch_broadcast(sde.diffusion(t) ** 2, x) * score_fn(x, t)


def _negated_divergence(fn, x, probes=None, _orig=lik.value_and_divergence):
    value, div = _orig(fn, x, probes)
    return value, -div


@pytest.mark.parametrize("patch", [("probability_flow_drift", _drift_without_half),
                                   ("value_and_divergence", _negated_divergence)], ids=["no_half", "div_sign"])
def test_closed_form_check_catches_wrong_implementations(monkeypatch, cheap, patch):
    """The 1e-2 tolerance of the closed-form checks is tight enough to fail on the classic likelihood bugs."""
    sf, sde, x, truth = cheap
    monkeypatch.setattr(lik, *patch)
    fresh = lambda y, t: sf(y, t)  # a new static argument, so the solve is traced again with the patched pieces
    logp, _ = sj.log_likelihood(fresh, sde, x, jax.random.key(0), divergence="exact")
    assert np.abs(np.asarray(logp - truth)).mean() > 0.3


def test_nfe_counts_network_evaluations(cheap):
    """info['nfe'] equals the number of score evaluations actually made (one fused jvp per stage)."""
    exact, sde, x, _ = cheap
    calls = []

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    for solver in ("tsit5", "dopri5", "heun"):  # FSAL (+1 once) and not
        calls.clear()
        _, info = sj.log_likelihood(counting_score, sde, x, jax.random.key(0), solver=solver)
        jax.block_until_ready(info["nfe"])
        assert info["nfe"].dtype == jnp.int32
        assert int(info["nfe"]) == len(calls), (solver, int(info["nfe"]), len(calls))


def test_second_call_does_not_recompile(cheap):
    sf, sde, x, _ = cheap
    sj.log_likelihood(sf, sde, x, jax.random.key(0))[0].block_until_ready()
    x2, key2 = x + 0.1, jax.random.key(1)  # made outside the count: the addition compiles a program of its own
    with count_compiles() as compiles:
        # new data values, key, eps and tolerances: all traced, so no new compilation
        sj.log_likelihood(sf, sde, x2, key2, eps=2e-5, rtol=1e-4, atol=1e-4)[0].block_until_ready()
    assert compiles == []


def test_new_weights_of_a_score_model_do_not_recompile():
    """A ScoreModel is an argument of the compiled solve: new parameters of the same shapes reuse the program
    (so they are not baked in as constants) and change the answer."""
    sde = SDES["vp"]
    net = ScoreMLP(width=16, depth=1, embed_dim=8)
    x = 0.5 * jax.random.normal(jax.random.key(0), (4, 2))
    params = net.init(jax.random.key(1), x, jnp.ones((4,)))
    first, second = (sj.score_fn(net.apply, jax.tree.map(lambda p: p + 0.05 * i, params), sde) for i in (0, 1))
    key = jax.random.key(2)
    kw = dict(rtol=1e-3, atol=1e-3)
    with count_compiles() as compiles:
        lp1, _ = sj.log_likelihood(first, sde, x, key, **kw)
    assert compiles  # the listener sees compilations
    with count_compiles() as compiles:
        lp2, _ = sj.log_likelihood(second, sde, x, key, **kw)
        jax.block_until_ready(lp2)
    assert compiles == []
    assert float(jnp.max(jnp.abs(lp1 - lp2))) > 1e-3


def test_composes_with_an_outer_jit(cheap):
    """Inside a caller's jit the data checks that need concrete values are skipped; the result is the same."""
    _, sde, x, truth = cheap

    @jax.jit
    def logp_fn(c, y, key):
        return sj.log_likelihood(gaussian_score(sde, c), sde, y, key, divergence="exact")[0]

    np.testing.assert_allclose(logp_fn(0.5, x, jax.random.key(0)), truth, atol=1e-2)
    other = logp_fn(0.7, x, jax.random.key(0))  # new "parameters": same compiled program, different model
    assert logp_fn._cache_size() == 1
    assert float(jnp.mean(jnp.abs(other - truth))) > 0.1


# --------------------------------------------------------------------------------------- Hutchinson
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(score_fns, mixtures, data, noise):
    """Mean over 256 examples x 1 probe of (estimate - truth) is within 4 standard errors of zero."""
    sde, mix = SDES["vp"], mixtures[8]
    x = data[8]
    truth = np.asarray(mix.diffuse(sde, EPS).log_prob(x))
    est, _ = sj.log_likelihood(score_fns[8, "vp"], sde, x, jax.random.key(7), noise=noise)
    err = np.asarray(est) - truth
    se = err.std(ddof=1) / math.sqrt(err.size)
    assert abs(err.mean()) < 4 * se + 2e-3, (err.mean(), se)
    assert err.std() > 0.05  # it is an estimator: single-probe errors are not negligible


def test_more_probes_reduce_variance(score_fns, mixtures, data):
    sde, mix = SDES["vp"], mixtures[8]
    x = data[8]  # same shapes and key as test_hutchinson_is_unbiased: the 1-probe solve is reused
    truth = np.asarray(mix.diffuse(sde, EPS).log_prob(x))
    sd = {}
    for p in (1, 8):
        est, _ = sj.log_likelihood(score_fns[8, "vp"], sde, x, jax.random.key(11), n_probes=p)
        sd[p] = float(np.std(np.asarray(est) - truth))
        assert abs(np.mean(np.asarray(est) - truth)) < 4 * sd[p] / math.sqrt(x.shape[0]) + 2e-3
    assert sd[8] < 0.55 * sd[1], sd  # ~1/sqrt(8) = 0.35


# -------------------------------------------------------------------------------------- validation
def test_invalid_inputs_raise_before_work(cheap):
    sf, sde, x, _ = cheap
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="NaN"):
        sj.log_likelihood(sf, sde, x.at[1, 0].set(jnp.nan), key)
    with pytest.raises(ValueError, match="batch"):
        sj.log_likelihood(sf, sde, x[0], key)
    for eps in (0.0, -1e-3, 1.0, 2.0, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            sj.log_likelihood(sf, sde, x, key, eps=eps)
    with pytest.raises(ValueError, match="divergence"):
        sj.log_likelihood(sf, sde, x, key, divergence="trace")
    with pytest.raises(ValueError, match="noise"):
        sj.log_likelihood(sf, sde, x, key, noise="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        sj.log_likelihood(sf, sde, x, key, n_probes=0)
    with pytest.raises(ValueError, match="solver"):
        sj.log_likelihood(sf, sde, x, key, solver="kvaerno5")
    with pytest.raises(ValueError, match="error estimate"):
        sj.log_likelihood(sf, sde, x, key, solver="euler")
    with pytest.raises(ValueError, match="norm"):
        sj.log_likelihood(sf, sde, x, key, norm="max")
    with pytest.raises(ValueError, match="floating"):
        sj.log_likelihood(sf, sde, jnp.zeros((4, 2), jnp.int32), key)
    with pytest.raises(ValueError, match="NaN"):
        sj.elbo(sf, sde, x.at[0, 1].set(jnp.inf), key)
    with pytest.raises(ValueError, match="form"):
        sj.elbo(sf, sde, x, key, form="sliced")


# ---------------------------------------------------------------------------------------------- ELBO
def test_prior_kl_closed_form():
    sde = SDES["vp"]
    x = jnp.array([[0.5, -1.0, 2.0]])
    alpha, sigma = sde.alpha_sigma(1.0)
    z = jax.random.normal(jax.random.key(0), (100_000, 3))
    xt = alpha * x + sigma * z
    entropy = 1.5 * math.log(2 * math.pi * math.e * float(sigma) ** 2)
    mc = -float(jnp.mean(sde.prior_logp(xt))) - entropy
    np.testing.assert_allclose(float(gaussian_kl_to_prior(sde, x)[0]), mc, atol=1e-2)


@pytest.mark.parametrize("name,form", [("vp", "dsm"), ("subvp", "ism"), ("ve", "dsm")])
def test_elbo_bounds_nll_with_exact_score(score_fns, mixtures, data, name, form):
    """With the exact score the bound is tight: E[-elbo] - E[-log p_data] is >= 0 within MC error and small.

    Measured gaps (nats per example, 2-D, 256 examples, n_t = 128): vp/dsm 0.06 +- 0.09, subvp/ism 0.06 +- 0.11,
    ve/dsm 0.06 +- 0.06 (mean +- standard error over examples): within 1 standard error of zero.
    """
    sde, mix = SDES[name], mixtures[2]
    x = data[2]
    elbo, info = sj.elbo(score_fns[2, name], sde, x, jax.random.key(5), n_t=128, form=form,
                         divergence="exact")
    gap = -np.asarray(elbo) + np.asarray(mix.log_prob(x))  # per-example bound minus the true NLL of clean data
    se = gap.std(ddof=1) / math.sqrt(gap.size)
    assert gap.mean() > -3 * se, (gap.mean(), se)
    assert gap.mean() < 3 * se + 0.02, (gap.mean(), se)
    assert se < 0.2
    # Terms: the KL to the prior is tiny for centred data, the decoder term is strongly negative at small eps.
    assert float(jnp.max(info["prior_kl"])) < 0.05 and float(jnp.max(info["decoder"])) < -5.0


def test_elbo_with_wrong_score_stays_above_entropy(mixtures, data):
    """Gibbs: for any score, E_data[-elbo] >= E_data[-log p_data]. A 30%-too-small score is measurably worse."""
    sde, mix = SDES["vp"], mixtures[2]
    exact = mix.score_fn(sde)
    x = data[2]
    elbo, _ = sj.elbo(lambda y, t: 0.7 * exact(y, t), sde, x, jax.random.key(6), n_t=128)
    gap = -np.asarray(elbo) + np.asarray(mix.log_prob(x))
    se = gap.std(ddof=1) / math.sqrt(gap.size)
    assert gap.mean() > 5 * se and gap.mean() > 0.3, (gap.mean(), se)  # measured: 0.93 +- 0.10 nats


# ------------------------------------------------------------------------------------- bits per dim
def test_bits_per_dim_offsets():
    lp = jnp.array([0.0, -10.0])
    np.testing.assert_allclose(sj.bits_per_dim(lp[:1], (1,), data_range=(0.0, 1.0)), [8.0])
    np.testing.assert_allclose(sj.bits_per_dim(lp[:1], (1,), data_range=(-1.0, 1.0)), [7.0])
    np.testing.assert_allclose(sj.bits_per_dim(lp[:1], (3, 2), num_bins=32, data_range=(0.0, 1.0)), [5.0])
    # the same discrete data: log p on [-1, 1] = log p on [0, 1] - D log 2 (x = 2y - 1), bpd identical
    d = 6
    b01 = sj.bits_per_dim(lp, (2, 3), data_range=(0.0, 1.0))
    bpm = sj.bits_per_dim(lp - d * math.log(2.0), (2, 3), data_range=(-1.0, 1.0))
    np.testing.assert_allclose(b01, bpm, rtol=1e-6)
    np.testing.assert_allclose(sj.bits_per_dim(lp[1:], (2, 3), data_range=(0, 1)), [10 / (6 * math.log(2)) + 8])


def test_dequantize_scales_and_validates():
    k = jnp.array([[0, 255], [17, 128]])
    x = sj.dequantize(jax.random.key(0), k, n_dequant=3, data_range=(-1.0, 1.0))
    assert x.shape == (3, 2, 2)
    lo = -1 + 2 * k / 256
    assert bool(jnp.all((x >= lo) & (x < lo + 2 / 256)))
    with pytest.raises(ValueError, match="integers"):
        sj.dequantize(jax.random.key(0), k / 255.0)
    with pytest.raises(ValueError, match="integers"):
        sj.dequantize(jax.random.key(0), k + 1)


def _discrete_gaussian_bpd(k, mean, std, num_bins, lo, hi):
    """Exact -log2 P(k) / D for k ~ discretised N(mean, std^2 I) on the model scale, bins [x_k, x_k+1)."""
    edges = lo + (hi - lo) * jnp.arange(num_bins + 1) / num_bins
    cdf = norm.cdf((edges - mean) / std)
    cdf = cdf.at[0].set(0.0).at[-1].set(1.0)  # tails into the edge bins
    p = cdf[k + 1] - cdf[k]
    return -jnp.sum(jnp.log(p), axis=-1) / (k.shape[-1] * math.log(2.0))


@pytest.fixture(scope="module")
def discrete_gaussian_data():
    """Integer data in {0..255}^2 from a Gaussian with mean 127.5 and std 12 pixel levels, discretised."""
    y = 127.5 + 12.0 * jax.random.normal(jax.random.key(21), (100, 2))
    return jnp.clip(jnp.floor(y), 0, 255).astype(jnp.int32)


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_bpd_of_discretised_gaussian(discrete_gaussian_data, data_range):
    """Dequantized PF-ODE bpd >= exact discrete bpd, and nearly equal for a wide Gaussian (gap < 0.01 bpd)."""
    lo, hi = data_range
    k = discrete_gaussian_data
    mean, std = lo + (hi - lo) * 128.0 / 256, (hi - lo) * 12.0 / 256
    mix = sj.isotropic_mixture([[mean, mean]], std)
    sde = SDES["vp"]
    sf, p_T = mix.score_fn(sde), mix.diffuse(sde, sde.T)

    def batch_fn(x, key):
        """PF-ODE log-likelihood with the exact marginal at T in place of the N(0, I) prior, which would differ
        by up to 1e-2 nats per example for data centred at 0.5."""
        logp, info = sj.log_likelihood(sf, sde, x, key, divergence="exact")
        return p_T.log_prob(info["z"]) + info["delta_logp"], info

    res = sj.evaluate_bpd(batch_fn, np.asarray(k), jax.random.key(4), data_range=data_range, n_dequant=2,
                          batch_size=32, progress=False)
    assert res.n_examples == 100 and res.values.shape == (100,)
    # the model at eps is N(alpha mean, alpha^2 std^2 + sigma^2): discretise exactly that density
    alpha, sigma = sde.alpha_sigma(EPS)
    exact = np.asarray(_discrete_gaussian_bpd(k, alpha * mean, jnp.sqrt((alpha * std) ** 2 + sigma**2), 256, lo, hi))
    diff = res.values - exact
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert diff.mean() > -3 * se, (diff.mean(), se)
    assert diff.mean() < 0.01, diff.mean()
    test_bpd_of_discretised_gaussian.results[data_range] = res.values


test_bpd_of_discretised_gaussian.results = {}


def test_bpd_same_on_both_scalings(discrete_gaussian_data):
    """The same integer data and dequantization noise, modelled on [-1, 1] and on [0, 1]: same bits/dim."""
    res = test_bpd_of_discretised_gaussian.results
    if len(res) < 2:
        pytest.skip("needs both parametrisations of test_bpd_of_discretised_gaussian")
    a, b = res[(-1.0, 1.0)], res[(0.0, 1.0)]
    np.testing.assert_allclose(a, b, atol=3e-3)  # per example: ODE error, largest for outliers (~12 bpd)
    assert abs(a.mean() - b.mean()) < 5e-4


# -------------------------------------------------------------------------------- padding and masking
def test_padding_masks_exactly(mixtures):
    """A batch function independent of batch composition gives identical values however the data is batched."""
    mix = mixtures[2]
    shapes = []

    @jax.jit
    def exact_logp(x):
        return mix.log_prob(x)

    def batch_fn(x, key):
        shapes.append(x.shape)
        return exact_logp(x), {"nfe": 1}

    x = np.asarray(mix.sample(jax.random.key(1), 10))
    full = -np.asarray(exact_logp(x))
    res = sj.evaluate_nll(batch_fn, x, jax.random.key(0), batch_size=4, progress=False)
    assert res.n_examples == 10 and res.values.shape == (10,)
    np.testing.assert_array_equal(res.values, full)
    assert set(shapes) == {(4, 2)}
    np.testing.assert_allclose(res.mean, full.mean(), rtol=1e-6)
    np.testing.assert_allclose(res.stderr, full.std(ddof=1) / math.sqrt(10), rtol=1e-5)
    # an iterable of uneven batches gives the same values
    res_it = sj.evaluate_nll(batch_fn, [x[:3], x[3:9], x[9:]], jax.random.key(0), batch_size=4, progress=False)
    np.testing.assert_array_equal(res_it.values, full)


def test_padding_with_ode_solver(cheap):
    """10 examples in padded batches of 4 vs. one unpadded batch of 10: same values up to the ODE tolerance.

    Not bit-identical: adaptive step sizes are shared by a batch, so its composition changes the steps.
    """
    sf, sde, x, truth = cheap
    x = np.asarray(x)
    batch_fn = functools.partial(sj.log_likelihood, sf, sde, divergence="exact")
    res = sj.evaluate_nll(batch_fn, x, jax.random.key(0), batch_size=4, progress=False)
    whole, _ = batch_fn(jnp.asarray(x), jax.random.key(0))
    assert res.values.shape == (10,)
    np.testing.assert_allclose(res.values, -np.asarray(whole), atol=2e-3)
    np.testing.assert_allclose(res.values, -np.asarray(truth), atol=1e-2)


def test_log_density_is_error_controlled_in_image_dimensions():
    """D = 784 Gaussian data at the scale of dequantisation noise (std 0.01): stiff near eps, like images. The
    step-size norm must control the log-density itself: with diffrax's plain RMS norm over (x, logp) the logp
    terms weigh 1/(D+1) and rtol = atol = 1e-3 is off by 0.048 nats/dim here; the joint norm gives 0.0044."""
    sde, d, c = SDES["vp"], 784, 0.01
    x = c * jax.random.normal(jax.random.key(0), (8, d))
    truth = sj.isotropic_mixture([[0.0] * d], c).diffuse(sde, EPS).log_prob(x)
    score = gaussian_score(sde, c)
    err = {}
    for norm in ("joint", "rms"):  # Rademacher probes are exact for a diagonal Jacobian
        logp, _ = sj.log_likelihood(score, sde, x, jax.random.key(1), eps=EPS, rtol=1e-3, atol=1e-3, norm=norm)
        err[norm] = float(jnp.max(jnp.abs(logp - truth))) / d
    assert err["joint"] < 0.01 and err["rms"] > 0.02, err


def test_map_padded_keeps_one_shape_and_drops_the_padding():
    """The one padding helper behind evaluate_nll / evaluate_bpd and the classifier's embed / predict."""
    from sde_jax.eval import map_padded, pad_rows

    shapes = []

    def fn(a, b):
        shapes.append((a.shape, b.shape))
        return a.sum(axis=1) + b

    a, b = np.arange(14.0).reshape(7, 2), np.arange(7.0)
    np.testing.assert_array_equal(map_padded(fn, (a, b), 3), a.sum(axis=1) + b)
    assert set(shapes) == {((3, 2), (3,))}
    np.testing.assert_array_equal(pad_rows(jnp.arange(2), 4), [0, 1, 1, 1])
    with pytest.raises(ValueError, match="length"):
        map_padded(fn, (a, b[:5]), 3)
