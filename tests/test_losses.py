"""Denoising score matching: minimiser is the exact score; a small MLP recovers it; train-step mechanics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

import sde_jax as sj
from sde_jax.losses import discrete_loss, dsm_loss
from sde_jax.train.step import example_keys, init_train_state, make_optimizer, make_train_step
from sde_jax.nn import ScoreMLP

SDES = [sj.VPSDE(), sj.SubVPSDE(), sj.VESDE(sigma_min=0.05, sigma_max=5.0)]
IDS = ["vp", "subvp", "ve"]
GAUSS = sj.GaussianMixture(jnp.ones(1), jnp.array([[1.0, -0.5]]), jnp.array([[[0.5, 0.2], [0.2, 0.3]]]))


def scaled_exact(mix, sde):
    """model_apply(c, x, t) = c * exact score, read with parameterization "score"."""
    exact = mix.score_fn(sde)
    return lambda c, x, t: c * exact(x, t)


def loss_slope(loss, x0, keys):
    """dL/dc at c = 1 for the score c * s*: zero in expectation iff s* minimises the loss."""
    per = jax.vmap(lambda x, k: jax.grad(lambda c: loss(c, x[None], k[None])[0])(1.0))(x0, keys)
    return float(per.mean()), float(per.std() / np.sqrt(per.shape[0]))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("weighting,importance", [("score_matching", False), ("likelihood", False),
                                                   ("likelihood", True)])
def test_exact_score_minimises_dsm(sde, weighting, importance):
    mix = sj.random_mixture(jax.random.key(0), 3, 2)
    loss = dsm_loss(scaled_exact(mix, sde), sde, "score", weighting=weighting, importance_sampling=importance)
    x0 = mix.sample(jax.random.key(1), 4000)
    slope, se = loss_slope(jax.jit(loss), x0, example_keys(jax.random.key(2), 4000))
    assert abs(slope) < 4 * se, (slope, se)
    if weighting == "likelihood" and not importance:
        return  # g^2-weighted DSM without importance sampling is too noisy for the power check below
    # the test has power: a score off by a factor 0.7 has a clearly non-zero slope
    exact = scaled_exact(mix, sde)
    wrong = dsm_loss(lambda c, x, t: exact(0.7 * c, x, t), sde, "score", weighting=weighting,
                     importance_sampling=importance)
    slope_w, se_w = loss_slope(jax.jit(wrong), x0, example_keys(jax.random.key(2), 4000))
    assert abs(slope_w) > 4 * se_w, (slope_w, se_w)


@pytest.mark.parametrize("sde", [sj.VPSDE(N=100), sj.VESDE(sigma_min=0.05, sigma_max=5.0, N=100), sj.SubVPSDE(N=100)],
                         ids=["ddpm", "smld", "subvp"])
def test_discrete_loss_minimised_by_discrete_score(sde):
    """DDPM / SMLD losses (and sub-VP's sampled schedule) are minimised by the score of q(x_i | x_0) at t_i."""
    mix = sj.random_mixture(jax.random.key(0), 2, 2)
    if isinstance(sde, sj.SubVPSDE):
        a, s = sde.alpha_sigma(jnp.arange(sde.N) / (sde.N - 1))
    elif isinstance(sde, sj.VPSDE):
        a, s = jnp.sqrt(sde.discrete_alphas_cumprod), jnp.sqrt(1 - sde.discrete_alphas_cumprod)
    else:
        a, s = jnp.ones(sde.N), sde.discrete_sigmas

    def exact_discrete(c, x, t):
        i = jnp.round(t * (sde.N - 1)).astype(jnp.int32)
        one = lambda xi, ii: sj.GaussianMixture(mix.weights, a[ii] * mix.means,
                                                a[ii] ** 2 * mix.covs + s[ii] ** 2 * jnp.eye(2)).score(xi[None])[0]
        return c * jax.vmap(one)(x, i)

    loss = jax.jit(discrete_loss(exact_discrete, sde, "score"))
    x0 = mix.sample(jax.random.key(1), 4000)
    slope, se = loss_slope(loss, x0, example_keys(jax.random.key(2), 4000))
    assert abs(slope) < 4 * se, (slope, se)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_importance_time_has_density_g2_over_sigma2(sde):
    eps = 1e-3
    t = np.sort(np.asarray(sde.likelihood_time(jax.random.uniform(jax.random.key(0), (20000,)), eps)[0]))
    assert t.min() >= eps and t.max() <= sde.T
    grid = np.geomspace(eps, 1.0, 200_001)
    w = np.asarray(sde.diffusion(jnp.asarray(grid)) ** 2 / sde.alpha_sigma(jnp.asarray(grid))[1] ** 2, np.float64)
    cdf = integrate.cumulative_trapezoid(w, grid, initial=0.0)
    cdf /= cdf[-1]
    for q in [0.1, 0.5, 0.9]:
        tq = t[int(q * len(t))]
        assert abs(np.interp(tq, grid, cdf) - q) < 0.015, (q, tq)


@pytest.fixture(scope="module")
def fitted_scores():
    """A small MLP trained with continuous DSM on Gaussian data N(m, S), one per SDE."""
    out = {}
    for sde, name in zip(SDES, IDS):
        model = ScoreMLP(width=64, depth=2, embed_dim=32)
        params = model.init(jax.random.key(0), jnp.ones((1, 2)), jnp.ones(1))
        opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 100, 3000, 1e-5))
        step = make_train_step(dsm_loss(model.apply, sde, "eps"), opt, ema_decay=0.99)

        @jax.jit
        def run(state, key):
            def body(state, k):
                kd, ks = jax.random.split(k)
                return step(state, GAUSS.sample(kd, 512), ks)[0], None
            return jax.lax.scan(body, state, jax.random.split(key, 500))[0]

        state = init_train_state(params, opt)
        for i in range(6):
            state = run(state, jax.random.fold_in(jax.random.key(1), i))
        out[name] = (sde, sj.score_fn(model.apply, state.ema_params, sde, "eps"))
    return out


@pytest.mark.parametrize("name", IDS)
def test_mlp_recovers_gaussian_score(fitted_scores, name):
    sde, learned = fitted_scores[name]
    exact = GAUSS.score_fn(sde)

    @jax.jit
    def rel_error(t):
        xt = GAUSS.diffuse(sde, t).sample(jax.random.key(5), 2000)
        tt = jnp.full((2000,), t)
        return jnp.sqrt(jnp.sum((learned(xt, tt) - exact(xt, tt)) ** 2) / jnp.sum(exact(xt, tt) ** 2))

    for t in np.linspace(0.1, 1.0, 10):
        rel = rel_error(t)
        assert rel < 0.10, f"{name}: relative L2 error {float(rel):.3f} at t={t:.2f}"


def test_train_step_ema_and_warmup():
    params = {"w": jnp.array([1.0, 2.0])}
    loss = lambda p, x, keys: (jnp.sum(p["w"] * x.mean(0)), {})
    opt = make_optimizer(0.1, warmup=10, grad_clip=0.0)
    step = jax.jit(make_train_step(loss, opt, ema_decay=0.9))
    state = init_train_state(params, opt)
    s1, m1 = step(state, jnp.ones((4, 2)), jax.random.key(0))
    # warm-up: lr at step 0 is 0, so the first update leaves params unchanged
    np.testing.assert_allclose(s1.params["w"], [1.0, 2.0])
    s2, _ = step(s1, jnp.ones((4, 2)), jax.random.key(1))
    assert np.all(np.asarray(s2.params["w"]) < [1.0, 2.0])
    d = min(0.9, 2.0 / 11.0)  # warmed-up decay at step 1
    np.testing.assert_allclose(s2.ema_params["w"], d * np.asarray(s1.ema_params["w"]) + (1 - d) * np.asarray(s2.params["w"]), rtol=1e-6)
    assert int(s2.step) == 2 and bool(m1["finite"])


def test_grad_clip_and_nonfinite_skip():
    loss = lambda p, x, keys: (jnp.sum(p * x.mean(0)), {})
    opt = make_optimizer(1.0, warmup=0, grad_clip=1.0)
    step = jax.jit(make_train_step(loss, opt, ema_decay=0.0, skip_nonfinite=True))
    state = init_train_state(jnp.zeros(2), opt)
    new, m = step(state, jnp.full((2, 2), 100.0), jax.random.key(0))
    assert float(m["grad_norm"]) > 100 and bool(m["finite"])
    bad, m = step(state, jnp.full((2, 2), jnp.nan), jax.random.key(0))
    assert not bool(m["finite"])
    np.testing.assert_array_equal(bad.params, state.params)
    assert int(bad.step) == 1


def test_example_keys_depend_on_global_index_only():
    key = jax.random.key(0)
    full = jax.random.key_data(example_keys(key, 8))
    half = jax.random.key_data(example_keys(key, 4, offset=4))
    np.testing.assert_array_equal(full[4:], half)


def _labelled_net(calls: list):
    """A fake network whose output is params * (y + 1) (so the loss sees the labels); records its kwargs."""

    def apply(params, x, t, y=None, train=False, rngs=None):
        calls.append({"train": train, "rngs": rngs, "y": y})
        return params * jnp.ones_like(x) * (y.astype(x.dtype) + 1.0)[:, None]

    return apply


def test_label_dropout_is_per_example_and_uses_the_null_label():
    calls = []
    sde, x = sj.VPSDE(), jnp.ones((8, 3))
    keys = example_keys(jax.random.key(0), 8)
    y, null = jnp.arange(8, dtype=jnp.int32) % 3, jnp.full((8,), 5, jnp.int32)
    plain = dsm_loss(_labelled_net(calls), sde)
    always = dsm_loss(_labelled_net(calls), sde, p_uncond=1.0, null_label=5)
    never = dsm_loss(_labelled_net(calls), sde, p_uncond=0.0, null_label=5)
    np.testing.assert_allclose(always(0.3, x, keys, y)[0], plain(0.3, x, keys, null)[0], rtol=1e-6)
    np.testing.assert_allclose(never(0.3, x, keys, y)[0], plain(0.3, x, keys, y)[0], rtol=1e-6)
    assert not np.isclose(float(plain(0.3, x, keys, y)[0]), float(plain(0.3, x, keys, null)[0]))
    # half of the labels dropped, decided by each example's own key: a device holding examples 4..7 agrees
    half = dsm_loss(_labelled_net(calls), sde, p_uncond=0.5, null_label=5)
    full = half(0.3, x, keys, y)[1]["per_example"]
    part = half(0.3, x[4:], example_keys(jax.random.key(0), 4, offset=4), y[4:])[1]["per_example"]
    np.testing.assert_allclose(full[4:], part, rtol=1e-6)
    assert calls[-1]["train"] is False and calls[-1]["rngs"] is None
    with pytest.raises(ValueError, match="null label"):
        dsm_loss(_labelled_net(calls), sde, p_uncond=0.1)(0.3, x, keys, y)


def test_dropout_runs_the_network_in_training_mode_with_a_key():
    calls = []
    loss = discrete_loss(_labelled_net(calls), sj.VPSDE(N=10), dropout=True)
    keys = example_keys(jax.random.key(0), 4)
    loss(0.3, jnp.ones((4, 2)), keys, jnp.zeros((4,), jnp.int32))
    assert calls[-1]["train"] is True and set(calls[-1]["rngs"]) == {"dropout"}


def test_train_step_passes_labels_of_a_dict_batch():
    seen = []

    def loss(p, x, keys, y=None):
        seen.append(y)
        return jnp.sum(p * x.mean(0)) + 0.0 * jnp.sum(y), {}

    opt = make_optimizer(0.1, warmup=0, grad_clip=0.0)
    state = init_train_state(jnp.zeros(2), opt)
    make_train_step(loss, opt)(state, {"x": jnp.ones((4, 2)), "y": jnp.arange(4)}, jax.random.key(0))
    np.testing.assert_array_equal(seen[-1], np.arange(4))


def test_loss_errors():
    f = lambda p, x, t: x
    with pytest.raises(ValueError, match="unknown weighting"):
        dsm_loss(f, sj.VPSDE(), weighting="sigma")
    with pytest.raises(ValueError, match="importance_sampling only"):
        dsm_loss(f, sj.VPSDE(), importance_sampling=True)
    loss = dsm_loss(f, sj.VPSDE())
    with pytest.raises(ValueError, match="one key per example"):
        loss(None, jnp.ones((4, 2)), example_keys(jax.random.key(0), 3))
