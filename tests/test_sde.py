"""SDEs: marginals against simulation, drift/diffusion against marginals, discretisations, priors, errors."""

import math

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np
import pytest
from scipy import stats

import sde_jax as sj

SDES = [sj.VPSDE(), sj.SubVPSDE(), sj.VESDE(sigma_min=0.05, sigma_max=5.0), sj.VDMSDE()]
IDS = ["vp", "subvp", "ve", "vdm"]


def simulate_forward(sde, x0, key, t1, steps=2000):
    """Euler–Maruyama of the forward SDE with diffrax from 0 to t1, all samples as one state."""
    drift = diffrax.ODETerm(lambda t, y, args: sde.drift(y, t))
    bm = diffrax.UnsafeBrownianPath(shape=x0.shape, key=key)
    noise = diffrax.ControlTerm(
        lambda t, y, args: lineax.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion(t))), bm)
    sol = diffrax.diffeqsolve(diffrax.MultiTerm(drift, noise), diffrax.Euler(), 0.0, t1, t1 / steps, x0,
                              saveat=diffrax.SaveAt(t1=True), max_steps=steps + 1, adjoint=diffrax.ForwardMode())
    return sol.ys[0]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("t1", [0.3, 1.0])
def test_marginal_matches_simulation(sde, t1):
    n, x0 = 6000, jnp.array([1.5, -0.5])
    k0, k1 = jax.random.split(jax.random.key(0))
    start = jnp.broadcast_to(x0, (n, 2))
    if isinstance(sde, sj.VESDE):  # the VE convention: the state at t = 0 carries N(0, sigma_min^2)
        start = start + sde.sigma_min * jax.random.normal(k0, (n, 2))
    xt = np.asarray(simulate_forward(sde, start, k1, t1))
    mean, std = sde.marginal(x0[None], jnp.array([t1]))
    mean, var = np.asarray(mean[0]), float(std[0]) ** 2
    se_mean = math.sqrt(var / n)
    np.testing.assert_allclose(xt.mean(0), mean, atol=5 * se_mean + 1e-3 * np.abs(mean).max())
    # sample variance: standard error var * sqrt(2 / n); Euler bias O(dt) is far below it
    np.testing.assert_allclose(xt.var(0), var, rtol=5 * math.sqrt(2 / n) + 5e-3)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_drift_and_diffusion_consistent_with_marginal(sde):
    """d log alpha / dt = f(t) and d sigma^2 / dt = 2 f(t) sigma^2 + g(t)^2 (linear SDE moment equations)."""
    ts = jnp.linspace(0.02, 1.0, 50)
    alpha = lambda t: sde.alpha_sigma(t)[0]
    var = lambda t: sde.alpha_sigma(t)[1] ** 2
    dlog_alpha = jax.vmap(jax.grad(lambda t: jnp.log(alpha(t))))(ts)
    dvar = jax.vmap(jax.grad(var))(ts)
    f = sde.drift(jnp.ones((50, 1)), ts)[:, 0]
    g2 = sde.diffusion(ts) ** 2
    np.testing.assert_allclose(dlog_alpha, f, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dvar, 2 * f * var(ts) + g2, rtol=2e-3, atol=1e-4)


def test_vp_discretize_is_ddpm():
    sde = sj.VPSDE(N=1000)
    betas = np.linspace(0.1 / 1000, 20.0 / 1000, 1000)
    i = np.array([0, 1, 500, 999])
    t = i / 999.0
    x = jnp.arange(8.0).reshape(4, 2)
    f, G = sde.discretize(x, jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(G, np.sqrt(betas[i]), rtol=2e-4)  # sigma_i^2 - a^2 sigma_{i-1}^2 in float32
    np.testing.assert_allclose(f, (np.sqrt(1 - betas[i])[:, None] - 1) * np.asarray(x), rtol=1e-4, atol=1e-7)
    # DDPM's alpha-bar is the SDE's alpha(t)^2 up to O(1/N)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(sde.discrete_alphas_cumprod, abar, rtol=1e-4)
    log_alpha2 = 2 * np.log(np.asarray(sde.alpha_sigma(jnp.asarray(t, jnp.float32))[0]))
    np.testing.assert_allclose(np.log(abar[i]), log_alpha2, rtol=0.01, atol=1e-3)


def test_ve_discretize_is_smld():
    sde = sj.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 1000))
    i = np.array([0, 1, 500, 999])
    t = jnp.asarray(i / 999.0, jnp.float32)
    _, G = sde.discretize(jnp.ones((4, 3)), t)
    prev = np.where(i == 0, 0.0, sigmas[np.maximum(i - 1, 0)])
    np.testing.assert_allclose(G, np.sqrt(sigmas[i] ** 2 - prev**2), rtol=1e-4)
    np.testing.assert_allclose(sde.alpha_sigma(t)[1], sigmas[i], rtol=1e-4)  # sigma(t_i) = sigma_i exactly


def test_subvp_discretize_is_the_exact_transition_between_levels():
    """Without a classical chain, the levels are the schedule at t_i and a step is the exact Gaussian transition."""
    sde = sj.SubVPSDE(N=100)
    x, i = jnp.ones((2, 2)), np.array([20, 70])
    f, G = sde.discretize(x, jnp.asarray(i / 99.0, jnp.float32))
    a, std = sde.transition(i / 99.0 - 1 / 99.0, i / 99.0)
    np.testing.assert_allclose(f, (np.asarray(a)[:, None] - 1) * np.asarray(x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(G, std, rtol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_log_snr_closed_forms_and_inverse(sde):
    """lambda = log(alpha^2 / sigma^2); the closed-form inverse agrees with the interface's bisection."""
    t = jnp.linspace(1e-3, 1.0, 40)
    alpha, sigma = sde.alpha_sigma(t)
    lam = sde.log_snr(t)
    np.testing.assert_allclose(lam, 2 * np.log(np.asarray(alpha) / np.asarray(sigma)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sde.t_from_log_snr(lam), t, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sj.LinearSDE.t_from_log_snr(sde, lam), t, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_schedule_defaults_match_the_closed_forms(sde):
    """The interface derives f and g from alpha_sigma alone (autodiff); they equal the papers' closed forms."""
    t = jnp.linspace(0.02, 1.0, 30)
    np.testing.assert_allclose(sj.LinearSDE.drift_coef(sde, t), sde.drift_coef(t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sj.LinearSDE.diffusion(sde, t), sde.diffusion(t), rtol=1e-4)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_prior(sde):
    z = sde.prior_sample(jax.random.key(3), (20000, 3))
    np.testing.assert_allclose(np.std(np.asarray(z)), sde.prior_std, rtol=0.02)
    x = np.asarray(z[:5]).astype(np.float64)
    ref = stats.multivariate_normal(np.zeros(3), sde.prior_std**2 * np.eye(3)).logpdf(x)
    np.testing.assert_allclose(sde.prior_logp(z[:5]), ref, rtol=1e-5)
    assert sde.prior_logp(jnp.zeros((4, 2, 2, 1))).shape == (4,)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_pure_and_jittable(sde):
    x, t = jnp.ones((3, 2)), jnp.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(jax.jit(sde.drift)(x, t), sde.drift(x, t), rtol=1e-6)
    jitted = jax.jit(lambda s, x, t: s.marginal(x, t))(sde, x, t)
    np.testing.assert_allclose(jitted[1], sde.marginal(x, t)[1], rtol=1e-6)
    assert hash(sde) == hash(type(sde)(**{f: getattr(sde, f) for f in sde.__dataclass_fields__}))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sj.VPSDE(beta_min=30.0, beta_max=20.0), "beta_min=30.0 > beta_max=20.0"),
        (lambda: sj.VPSDE(beta_min=-1.0), "must be > 0"),
        (lambda: sj.SubVPSDE(beta_min=5.0, beta_max=1.0), "swap them"),
        (lambda: sj.VESDE(sigma_min=0.0), "sigma_min must be > 0"),
        (lambda: sj.VESDE(sigma_min=1.0, sigma_max=0.5), "must exceed sigma_min"),
        (lambda: sj.VPSDE(eps=0.0), r"eps must lie in \(0, T"),
        (lambda: sj.VPSDE(N=1), "N .* must be an integer >= 2"),
        (lambda: sj.VPSDE().drift(jnp.ones((3, 2)), jnp.ones((4,))), r"t has shape \(4,\) but x has shape \(3, 2\)"),
        (lambda: sj.VPSDE().drift(jnp.ones((3, 2)), 1.5), r"t must lie in \[0, T=1.0\]"),
        (lambda: sj.VESDE().marginal(jnp.ones((2, 2)), jnp.array([-0.1, 0.5])), r"t must lie in \[0, T"),
        (lambda: sj.VPSDE().diffusion(jnp.array([jnp.nan])), "NaN or Inf"),
        (lambda: sj.VPSDE().drift(jnp.ones((2, 2)), jnp.ones((2, 1))), "scalar or have shape"),
        (lambda: sj.get_sde("vpp"), "unknown SDE 'vpp'"),
        (lambda: sj.VPSDE().prior_logp(jnp.float32(1.0)), "expects a batch"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_vdm_schedule_is_its_log_snr():
    """VDM: alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma), lambda = -gamma; f and g from the interface."""
    sde = sj.VDMSDE(gamma_min=-10.0, gamma_max=6.0)
    t = jnp.linspace(0.0, 1.0, 11)
    alpha, sigma = sde.alpha_sigma(t)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(sde.log_snr(t), 10.0 - 16.0 * t, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, atol=1e-6)
    # VP-type SDE: f = -1/2 d gamma/dt sigma^2, g^2 = d gamma/dt sigma^2 (= beta(t) of the VP family)
    np.testing.assert_allclose(sde.diffusion(t) ** 2, 16.0 * sigma**2, rtol=1e-4)
    np.testing.assert_allclose(sde.drift_coef(t), -0.5 * 16.0 * sigma**2, rtol=1e-4)


def test_learned_schedule_is_a_pytree_with_trainable_leaves():
    """A schedule with trainable parameters fits the interface: monotone, exact endpoints, jit and grad through it."""
    sde = sj.LearnedVDMSDE.init(jax.random.key(0), -13.3, 5.0, width=64)
    t = jnp.linspace(0.0, 1.0, 101)
    lam = np.asarray(jax.jit(lambda s, t: s.log_snr(t))(sde, t))
    assert np.all(np.diff(lam) < 0)
    np.testing.assert_allclose(lam[[0, -1]], [13.3, -5.0], rtol=1e-5)
    inverse = jax.jit(lambda s, lam: s.t_from_log_snr(lam))(sde, lam[10:90])  # the interface's bisection
    np.testing.assert_allclose(inverse, t[10:90], atol=1e-4)
    x0 = jnp.ones((4, 3))

    def loss(s):  # gradients reach every leaf, endpoints included
        return jnp.sum(s.marginal_sample(jax.random.key(1), x0, t[20:24]) ** 2) + jnp.sum(s.diffusion(t[20:24]))

    grads = jax.jit(jax.grad(loss))(sde)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads.gamma_max)) > 0 and float(jnp.sum(jnp.abs(grads.w2))) > 0
