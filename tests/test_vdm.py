"""VDM: the ELBO of discrete data against its closed form, the learned schedule's gradients (ELBO for the end points,
variance for the shape) and their effect, device-split invariance, Fourier features, a learned schedule through
train() and restore()."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sde_jax as sj
from sde_jax import vdm
from sde_jax.data.images import to_model_scale
from sde_jax.losses import vdm_loss
from sde_jax.nn.unet import fourier_features
from sde_jax.train.step import example_keys

K = 8  # bins per dimension of the toy discrete data
CENTRES = np.asarray(vdm.bin_centres(K))


class PointMassScore(eqx.Module):
    """The exact score of data sum_k w_k delta(x - mu_k) under ``sde``: a pytree (one compiled evaluation serves
    every schedule), no linear algebra:

        s(z, t) = -sum_k p_t(k | z) (z - alpha_t mu_k) / sigma_t^2,
        p_t(k | z) prop. to w_k N(z; alpha_t mu_k, sigma_t^2 I).
    """

    logw: jax.Array
    means: jax.Array
    sde: sj.LinearSDE

    def __call__(self, z, t):
        alpha, sigma = self.sde.alpha_sigma(jnp.broadcast_to(t, z.shape[:1]))
        d = z[:, None, :] - alpha[:, None, None] * self.means
        var = sigma[:, None] ** 2
        post = jax.nn.softmax(self.logw - 0.5 * jnp.sum(d**2, -1) / var, axis=-1)
        return -jnp.einsum("bk,bkd->bd", post, d) / var


def linear_schedule(gamma_min: float, gamma_max: float) -> sj.LearnedVDMSDE:
    """VDM's linear gamma with the end points as leaves (the monotone network's nonlinear part switched off:
    softplus(-40) ~ 4e-18), so one compiled evaluation serves every gamma_min."""
    s = sj.LearnedVDMSDE.init(jax.random.key(0), gamma_min, gamma_max, width=1)
    return eqx.tree_at(lambda s: s.w3, s, jnp.full((1,), -40.0, jnp.float32))


def point_mass_data(seed: int = 0):
    """2-D data on the K x K grid of bin centres with random cell probabilities pi; the NLL of a cell is
    -log2 pi(cell) / 2 bits/dim."""
    pi = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(seed), (K * K,))), np.float64)
    cells = np.stack(np.meshgrid(np.arange(K), np.arange(K), indexing="ij"), -1).reshape(-1, 2)
    return pi, cells


def test_elbo_of_discrete_data_with_exact_score_bounds_the_nll_and_tightens():
    """With the exact score, E_x[-ELBO(x)] - H(x) = E KL(q(x | z_0) || p(x | z_0)) + the prior's mismatch >= 0
    (x ~ pi, the expectation over cells taken exactly): it shrinks as gamma_min falls and is ~0 once
    sigma_0 / alpha_0 << the bin width."""
    pi, cells = point_mass_data()
    entropy = float(-(pi * np.log2(pi)).sum()) / 2
    reps = 256
    x = np.repeat(cells, reps, axis=0).astype(np.int32)
    means = jnp.asarray(CENTRES[cells], jnp.float32)
    gaps, terms = [], []
    for gamma_min in (-2.0, -5.0, -10.0):
        score = PointMassScore(jnp.log(jnp.asarray(pi, jnp.float32)), means, linear_schedule(gamma_min, 8.0))
        out = vdm.vdm_elbo_bpd(score, x, jax.random.key(1), num_bins=K, n_t=64, batch_size=x.shape[0])
        per_cell = out["bpd"].reshape(K * K, reps)
        se = float(np.sqrt(pi**2 @ (per_cell.var(1, ddof=1) / reps)))
        gaps.append((float(pi @ per_cell.mean(1)) - entropy, se))
        terms.append({k: float(v.mean()) for k, v in out.items()})
    (g2, se2), (g5, se5), (g10, se10) = gaps
    assert g2 > g5 + 4 * math.hypot(se2, se5) and g5 > g10 + 4 * math.hypot(se5, se10), gaps
    assert abs(g10) < 4 * se10 and se10 < 0.015, gaps  # tight to the Monte Carlo error
    # a sharper decoder costs less reconstruction and more diffusion
    assert terms[2]["reconstruction"] < 1e-3 < terms[0]["reconstruction"]
    assert terms[2]["diffusion"] > terms[0]["diffusion"]


def test_windowed_decoder_is_vdms_decoder_when_narrow_and_an_upper_bound_when_wide():
    """The decoder's normaliser over 2W + 1 bins plus a tail bound equals VDM's softmax over all 256 bins for a
    narrow decoder (gamma_0 = -13.3, -10) and never falls below it for wide ones (-8, -4): the bound stays valid."""
    x0 = jnp.asarray(vdm.bin_centres(256)[np.random.default_rng(0).choice([0, 1, 128, 254, 255], (8, 50))])
    eps0 = jax.random.normal(jax.random.key(0), x0.shape)

    def full(z0, a0, s0):  # VDM's EncDec.logprob: all K logits
        logits = -0.5 * ((z0 / a0)[..., None] - vdm.bin_centres(256)) ** 2 * (a0 / s0) ** 2
        k = jnp.floor((x0 + 1.0) * 128).astype(jnp.int32)
        return jnp.sum(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, k[..., None], -1)[..., 0], -1)

    @jax.jit
    def both(gamma0):
        a0, s0 = jnp.sqrt(jax.nn.sigmoid(-gamma0)), jnp.sqrt(jax.nn.sigmoid(gamma0))
        z0 = a0 * x0 + s0 * eps0
        return vdm.decoder_nll(x0, z0, a0, s0, 256), full(z0, a0, s0)

    for gamma0 in (-13.3, -10.0, -8.0, -4.0):
        got, want = both(gamma0)
        if gamma0 <= -10.0:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        else:  # a valid bound: the normaliser is over-counted, never under-counted (slack < 0.01 nats/dim at -8)
            assert np.all(np.asarray(got) >= np.asarray(want) - 1e-3), (gamma0, got - want)
            assert gamma0 != -8.0 or np.all(np.asarray(got) - np.asarray(want) < 0.01 * x0.shape[1])


def test_loss_terms_agree_with_the_evaluation():
    """vdm_loss (training: one t per example, antithetic) and vdm_elbo_bpd (evaluation) estimate the same terms."""
    pi, cells = point_mass_data()
    sde = sj.VDMSDE(gamma_min=-6.0, gamma_max=6.0)
    exact = PointMassScore(jnp.log(jnp.asarray(pi, jnp.float32)), jnp.asarray(CENTRES[cells], jnp.float32), sde)
    x = np.repeat(cells, 32, axis=0).astype(np.int32)
    x0 = jnp.asarray(to_model_scale(x, "minus_one_one", K))
    loss = vdm_loss(lambda p, z, t: p(z, t), sde, "score", num_bins=K)
    _, aux = jax.jit(loss)(exact, x0, example_keys(jax.random.key(3), x.shape[0]))
    ev = vdm.vdm_elbo_bpd(exact, x, jax.random.key(4), num_bins=K, n_t=4, batch_size=x.shape[0])
    np.testing.assert_allclose(aux["prior"], ev["prior"], rtol=1e-5)
    for name in ("reconstruction", "diffusion"):
        a, b = np.asarray(aux[name]), ev[name]
        se = math.sqrt(a.var() / a.size + b.var() / b.size)
        assert abs(a.mean() - b.mean()) < 4 * se, (name, a.mean(), b.mean(), se)


# ----------------------------------------------------------------------------------- the learned schedule
S2 = 0.25  # data N(0, S2 I) in 2-D for the schedule tests: E[eps | z] in closed form


def gaussian_eps(z, tau, gamma_min: float = -10.0, gamma_max: float = 6.0):
    """E[eps | z_t] for x ~ N(0, S2 I) at log-SNR lambda = -(gamma_min + tau (gamma_max - gamma_min)), a denoiser
    conditioned on the normalised log-SNR tau (vdm.LogSNRTime): sigma z / (alpha^2 S2 + sigma^2)."""
    lam = -(gamma_min + tau * (gamma_max - gamma_min))
    a2, s2 = jax.nn.sigmoid(lam), jax.nn.sigmoid(-lam)
    return (jnp.sqrt(s2) / (a2 * S2 + s2))[:, None] * z


def gaussian_data(key, n: int):
    return math.sqrt(S2) * jax.random.normal(key, (n, 2))


def test_variance_gradient_is_the_elbo_gradient_for_end_points_and_the_second_moment_for_the_shape():
    """Against plain autodiff, in float64 (in float32 the shape gradient, a sum of nearly cancelling terms, is
    only good to ~1%)."""
    with jax.enable_x64(True):
        schedule = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                sj.LearnedVDMSDE.init(jax.random.key(1), -10.0, 6.0, width=8))
        x0 = gaussian_data(jax.random.key(2), 16)
        t = jax.random.uniform(jax.random.key(3), (16,), jnp.float64)
        eps0, eps = jax.random.normal(jax.random.key(4), (2, 16, 2), jnp.float64)
        time = vdm.LogSNRTime(None, 10.0, -6.0).time

        def terms_fn(scale, sv):  # a one-parameter "network": scale * the exact denoiser
            eps_hat = lambda z, v: scale * gaussian_eps(z, time(v.lam))
            return vdm.elbo_terms(eps_hat, sv, x0, eps0, eps, 256, 1.0)

        total = lambda terms: jnp.mean(terms["prior"] + terms["reconstruction"] + terms["diffusion"])
        got = jax.jit(jax.grad(lambda a, s: total(vdm.with_variance_gradient(terms_fn, a, s, t)), (0, 1)))(
            0.9, schedule)

        def plain(a, s):  # [the bound, the mean squared diffusion term] by ordinary autodiff
            terms = terms_fn(a, vdm.schedule_at(s, t))
            return jnp.stack([total(terms), jnp.mean(terms["diffusion"] ** 2)])

        jac_a, jac_s = jax.jit(jax.jacrev(plain, (0, 1)))(0.9, schedule)  # row 0: the bound, row 1: E[L_diff^2]
    np.testing.assert_allclose(got[0], jac_a[0], rtol=1e-10)
    for name in vdm.ENDPOINTS:
        np.testing.assert_allclose(getattr(got[1], name), getattr(jac_s, name)[0], rtol=1e-10)
    for name in ("w1", "b1", "w2", "b2", "w3"):
        want = np.asarray(getattr(jac_s, name)[1])
        np.testing.assert_allclose(getattr(got[1], name), want, rtol=1e-8, atol=1e-14)
        assert np.max(np.abs(want)) > 1e-8
        assert not np.allclose(getattr(jac_s, name)[0], want, rtol=0.1)  # the two gradients differ


def bad_schedule(width: int = 16):
    """A learned schedule with most of its log-SNR range in a narrow window of t (a steep sigmoid step)."""
    s = sj.LearnedVDMSDE.init(jax.random.key(0), -10.0, 6.0, width)
    full = lambda v: jnp.full((width,), v, jnp.float32)
    return eqx.tree_at(lambda s: (s.w2, s.b2, s.w3), s, (full(10.0), full(-5.0), full(10.0)))


def test_variance_minimising_update_lowers_the_variance_and_keeps_the_mean_end_points_and_monotonicity():
    """Adam steps on the shape parameters alone (the variance gradient) from a steep schedule: on a fixed batch
    the variance of the one-sample diffusion term over (t, eps) falls, its mean (the bound) stays, as VDM's
    invariance says for a denoiser conditioned on the log-SNR; gamma(0), gamma(1) are the end-point leaves and
    gamma increases."""
    init = bad_schedule()
    loss = vdm_loss(lambda p, z, tau: gaussian_eps(z, tau), init, "eps", antithetic=False)
    ends = lambda p: (p["schedule"].gamma_min, p["schedule"].gamma_max)

    @jax.jit
    def grad_and_terms(params, x, keys):  # gradient for the shape only; the per-example terms
        g, aux = jax.grad(loss, has_aux=True)(params, x, keys)
        return eqx.tree_at(ends, g, (jnp.zeros(()), jnp.zeros(()))), aux["diffusion"]

    x_fixed = jnp.repeat(gaussian_data(jax.random.key(1), 16), 64, axis=0)  # 16 points x 64 draws of (t, eps)

    def moments(params):
        d = np.asarray(grad_and_terms(params, x_fixed, example_keys(jax.random.key(2), 1024))[1]).reshape(16, 64)
        return d.mean(), d.var(axis=1, ddof=1).mean(), d.std() / math.sqrt(d.size)

    opt = optax.adam(0.1)
    params = {"net": {}, "schedule": init}
    state = opt.init(params)
    for i in range(60):
        x = gaussian_data(jax.random.fold_in(jax.random.key(5), i), 1024)
        g, _ = grad_and_terms(params, x, example_keys(jax.random.fold_in(jax.random.key(6), i), 1024))
        updates, state = opt.update(g, state)
        params = optax.apply_updates(params, updates)
    (m0, v0, se0), (m1, v1, se1) = moments({"net": {}, "schedule": init}), moments(params)
    assert v1 < 0.5 * v0, (v0, v1)
    assert abs(m1 - m0) < 4 * math.hypot(se0, se1), (m0, m1, se0, se1)
    trained = params["schedule"]
    assert float(jnp.max(jnp.abs(trained.w2 - init.w2))) > 0.1
    gamma = np.asarray(trained.gamma(jnp.linspace(0.0, 1.0, 1001)))
    np.testing.assert_allclose(gamma[[0, -1]], [-10.0, 6.0], rtol=1e-5)
    assert np.all(np.diff(gamma) > 0)


# ------------------------------------------------------------------------------------------ mechanics
def test_antithetic_times_are_the_same_on_one_device_and_on_a_split_batch():
    """Groups of `group` examples take their shift from their own first key: a batch split into halves that are
    multiples of the group (as over devices) draws the same times and gives the same loss."""
    sde = sj.VDMSDE(gamma_min=-6.0, gamma_max=6.0)
    loss = jax.jit(vdm_loss(lambda p, z, t: p * z, sde, num_bins=K, group=8))
    x0 = jnp.asarray(CENTRES[np.random.default_rng(0).integers(0, K, (32, 2))])
    keys = example_keys(jax.random.key(1), 32)
    whole, aux = loss(0.5, x0, keys)
    halves = [loss(0.5, x0[s], keys[s]) for s in (slice(0, 16), slice(16, 32))]
    np.testing.assert_array_equal(np.concatenate([h[1]["t"] for h in halves]), aux["t"])
    np.testing.assert_allclose(np.mean([h[0] for h in halves]), whole, rtol=1e-6)
    t = np.asarray(aux["t"]).reshape(4, 8)  # each group has one time in each stratum of width 1/8
    assert all(sorted(np.floor(row * 8).astype(int)) == list(range(8)) for row in t)
    with pytest.raises(ValueError, match="multiple of the group size"):
        loss(0.5, x0[:12], keys[:12])


def test_bad_inputs_raise_before_work():
    with pytest.raises(ValueError, match="finite log-SNR"):
        vdm_loss(lambda p, x, t: x, sj.VPSDE())
    with pytest.raises(ValueError, match="num_bins"):
        vdm_loss(lambda p, x, t: x, sj.VDMSDE(), num_bins=1)
    with pytest.raises(ValueError, match="integer data"):
        vdm.vdm_elbo_bpd(lambda x, t: x, np.zeros((2, 3), np.float32), jax.random.key(0), sde=sj.VDMSDE())
    with pytest.raises(ValueError, match=r"lie in \{0, ..., 255\}"):
        vdm.vdm_elbo_bpd(lambda x, t: x, np.full((2, 3), 256), jax.random.key(0), sde=sj.VDMSDE())
    from sde_jax.config import base_config, loss_from_config, sde_from_config

    c = base_config()
    c.sde.update(name="vdm_learned", gamma_min=-13.3, gamma_max=5.0, width=8)
    with pytest.raises(ValueError, match="trains only with loss.kind='vdm'"):
        loss_from_config(c.loss, lambda p, x, t: x, sde_from_config(c.sde))


def test_unet_fourier_features_are_extra_input_channels():
    from sde_jax.nn import build_model

    x, t = jnp.zeros((2, 8, 8, 1)), jnp.ones(2)
    plain, fourier = (build_model("unet", ch=8, ch_mult=(1,), attn_resolutions=(), patch_size=2, fourier_features=f)
                      for f in ((), (6, 7)))
    p0, p1 = (jax.eval_shape(m.init, jax.random.key(0), x, t) for m in (plain, fourier))  # shapes only
    assert p1["params"]["Conv_0"]["kernel"].shape[2] == 5 * p0["params"]["Conv_0"]["kernel"].shape[2]
    assert jax.eval_shape(fourier.apply, p1, x, t).shape == x.shape
    feats = fourier_features(jnp.full((1, 1, 1, 1), 0.3), (1, 2))
    np.testing.assert_allclose(feats.ravel(), np.concatenate([np.sin(2 * np.pi * np.array([2, 4]) * 0.3),
                                                              np.cos(2 * np.pi * np.array([2, 4]) * 0.3)]), atol=1e-6)


def test_a_learned_schedule_trains_and_comes_back_from_its_checkpoint(tmp_path):
    """train() keeps the schedule in the parameters and moves its end points (the ELBO's gradient) and shape; it
    keeps gamma(0), gamma(1) at the end-point leaves and gamma increasing; the result and restore(workdir) give a
    ScoreModel whose sde is the trained (EMA) schedule, and the restored score equals the trained one."""
    from ml_collections import ConfigDict

    from sde_jax.config import base_config
    from sde_jax.train import restore, train

    c = base_config()
    c.data = ConfigDict({"shape": (2,)})
    c.sde = ConfigDict({"name": "vdm_learned", "gamma_min": -8.0, "gamma_max": 5.0, "width": 8})
    c.model = ConfigDict({"name": "mlp", "width": 16, "depth": 1, "embed_dim": 8})
    c.loss.update(kind="vdm", num_bins=K)
    c.train.update(steps=2, batch_size=16, warmup=0, lr=1e-2, log_every=1, checkpoint_every=2)
    batch_fn = lambda step, rows: CENTRES[np.random.default_rng(step).integers(0, K, (16, 2))][rows]
    result = train(c, str(tmp_path), batch_fn, batch_fn(0, slice(None)), progress=False)
    score = result.score_fn()
    init, trained = result.init_sde, score.sde
    assert isinstance(trained, sj.LearnedVDMSDE) and trained is not init
    assert abs(float(trained.gamma_min) + 8.0) > 1e-3 and abs(float(trained.gamma_max) - 5.0) > 1e-3
    assert float(jnp.max(jnp.abs(trained.w2 - init.w2))) > 1e-4
    for s in (trained, result.state.params["schedule"]):
        gamma = np.asarray(s.gamma(jnp.linspace(0.0, 1.0, 1001)))
        np.testing.assert_allclose(gamma[[0, -1]], [s.gamma_min, s.gamma_max], rtol=1e-5)
        assert np.all(np.diff(gamma) > 0)
    restored = restore(str(tmp_path))
    assert isinstance(restored.sde, sj.LearnedVDMSDE)
    np.testing.assert_allclose(restored.sde.gamma_min, trained.gamma_min, rtol=1e-6)
    x, t = jnp.linspace(-1.0, 1.0, 8).reshape(4, 2), jnp.full((4,), 0.3)
    evaluate = eqx.filter_jit(lambda s: s(x, t))  # one compiled evaluation for both score models
    np.testing.assert_allclose(evaluate(restored.score_fn()), evaluate(score), rtol=1e-5, atol=1e-6)
    # the one-file export of the EMA weights (what the repo commits) restores to the same model
    from sde_jax.train.checkpoint import export_weights
    export_weights(str(tmp_path), str(tmp_path / "export"), "python -m ...")
    exported = restore(str(tmp_path / "export"))
    assert exported.step == restored.step and isinstance(exported.sde, sj.LearnedVDMSDE)
    np.testing.assert_allclose(evaluate(exported.score_fn()), evaluate(score), rtol=1e-5, atol=1e-6)
    c.model.width = 8  # weights that do not belong to the config: a clear error
    from sde_jax.train.checkpoint import save_config
    save_config(str(tmp_path / "export"), c)
    with pytest.raises(ValueError, match="shape|parameters"):
        restore(str(tmp_path / "export"))


def test_damped_fourier_features_keep_the_signal_and_drop_the_noise():
    """fourier_damping is E_eps[sin(w z)] / sin(w alpha x) for z = alpha x + sigma eps (Monte Carlo), read from the
    network's normalised-gamma time; the U-Net multiplies each channel's sin and cos features by it."""
    from sde_jax.nn import build_model
    from sde_jax.nn.unet import fourier_damping

    g0, g1 = -13.3, 5.0
    t = jnp.array([0.0, 0.2, 0.9])
    d = np.asarray(fourier_damping(t, (g0, g1), (6, 7)))
    sigma = np.sqrt(1 / (1 + np.exp(-(g0 + np.asarray(t) * (g1 - g0)))))
    eps = np.random.default_rng(0).standard_normal(400_000)
    w = 2 * np.pi * 2.0 ** np.array([6, 7])
    mc = np.array([[np.mean(np.cos(wn * s * eps)) for wn in w] for s in sigma])  # E cos(w sigma eps)
    np.testing.assert_allclose(d, mc, atol=5e-3)
    assert 0.5 < d[0, 1] < 0.6 and d[1].max() < 0.01 and d[2].max() < 1e-30  # on at gamma_min, off above
    # in the U-Net: at high noise the features are switched off, so the network is the one without them (its
    # first layer's weights on the features dropped); at gamma_min they are on
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 2)) * 0.01
    kw = dict(ch=8, ch_mult=(1,), attn_resolutions=(), patch_size=2)
    net = build_model("unet", fourier_features=(6, 7), fourier_damping=(g0, g1), **kw)
    params = net.init(jax.random.key(1), x, jnp.zeros(2))
    leaves, tree = jax.tree.flatten(params)  # the output layer starts at zero: perturb every weight
    params = tree.unflatten([p + 0.1 * jax.random.normal(jax.random.key(i), p.shape) for i, p in enumerate(leaves)])
    plain = build_model("unet", **kw)
    kernel = params["params"]["Conv_0"]["kernel"].reshape(3, 3, 4, 10, 8)[:, :, :, :2]  # (patch, [x, feats], out)
    plain_params = {"params": {**params["params"], "Conv_0": {**params["params"]["Conv_0"],
                                                              "kernel": kernel.reshape(3, 3, 8, 8)}}}
    out = lambda tt: net.apply(params, x, jnp.full(2, tt))
    ref = lambda tt: plain.apply(plain_params, x, jnp.full(2, tt))
    np.testing.assert_allclose(out(0.9), ref(0.9), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(out(0.0) - ref(0.0)).max()) > 0.1


@pytest.mark.parametrize("t_split", [1e-5, 0.5])
def test_pf_ode_bound_of_a_discrete_distribution_is_its_nll(t_split):
    """2-D data on 4 bins per dimension; the "data" density at the bin centres is a mixture of narrow Gaussians
    (std 1e-4, below the schedule's sigma_0 ~ 1.3e-3) whose exact score drives the PF-ODE and the diffusion term:
    the bound must be -log P(x) to within the kernels' overlap, the solver's error and (split at 0.5) the Monte
    Carlo error of the diffusion term below the split, which is tight for the exact score. gamma_max = 12 makes
    p_T the model's N(0, I) prior to ~1e-5 nats (at VDM's 5 the prior mismatch alone is ~0.06 nats here)."""
    sde = sj.VDMSDE(gamma_max=12.0)
    centres = (2 * np.arange(4) + 1) / 4 - 1
    pts = np.stack(np.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2)
    probs = np.random.default_rng(3).dirichlet(np.ones(16))
    gmm = sj.gmm.isotropic_mixture(pts, 1e-4, probs)
    reps = 256 if t_split > 0.01 else 16  # the diffusion term below a split is the noisy part
    idx = np.repeat(np.array([0, 5, 9, 15]), reps)
    cells = np.stack([idx // 4, idx % 4], -1)  # integer data (N, 2)
    out = vdm.pf_ode_bpd(gmm.score_fn(sde), cells, jax.random.key(0), sde=sde, t_split=t_split, num_bins=4,
                         n_t=64, batch_size=len(idx), divergence="exact", rtol=1e-6, atol=1e-6)
    nats = (out["bpd"] * 2 * math.log(2)).reshape(4, reps)
    se = nats.std(1, ddof=1) / math.sqrt(reps)
    err = nats.mean(1) + np.log(probs[idx[::reps]])
    assert np.all(np.abs(err) < 4 * se + 0.01) and se.max() < (0.12 if t_split > 0.01 else 0.01), (err, se)
    pooled_se = math.sqrt(float(np.sum(se**2))) / 4
    assert abs(err.mean()) < 4 * pooled_se + 0.005 and pooled_se < 0.06, (err, pooled_se)
    np.testing.assert_allclose(out["bpd"], out["reconstruction"] + out["diffusion"] + out["ode"], rtol=1e-6)
    assert (out["diffusion"].mean() > 0.1) == (t_split > 0.01)  # the split puts real mass below s


def test_mnist_likelihood_refuses_damping_that_does_not_match_the_schedule():
    from experiments import mnist_likelihood as ml

    c = ml.get_config()
    ml.check_config(c)  # the default: damped with the schedule's own end points
    c.sde.gamma_min = -14.0
    with pytest.raises(ValueError, match="fourier_damping"):
        ml.check_config(c)
    c.model.fourier_damping = ()
    ml.check_config(c)  # undamped is allowed
