"""The fast samplers (DPM-Solver++ 2M / 3M / 2M SDE, UniPC, EDM's Heun) against the truth.

* Order of convergence: with the exact score of a Gaussian mixture, the terminal-state error against a tight
  adaptive solve of the same probability-flow ODE from the same x_T to the same end time, at 16 ... 128 steps, in
  float64 (the third-order errors reach 1e-7). The fitted log-log slopes match theory, and two deliberately broken
  variants (2M without its history term; 3M with the reference code's halved second-derivative term) lose order.
* Accuracy and ``info["nfe"]`` (counted at run time) on a sharp, well-separated mixture under VP, sub-VP, VE and a
  schedule stated only by ``alpha_sigma`` (the cosine SDE of tests/test_architecture.py).
* Composition with classifier-free guidance (a pytree score), and option checks before any tracing.
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
from sde_jax.sampling import multistep
from tests.test_architecture import CosineSDE

# ------------------------------------------------------------------------------------- order of convergence
CONV_STEPS = (16, 32, 64, 128)
CONV_EPS = 1e-2  # end time of every solve (the reference too)
SLOPE_TOL = 0.3


def _dpmpp_3m_reference_code(x, ms, w, key=None):
    """DPM-Solver++(3M) as in Lu et al.'s reference code and diffusers: D2 = (D1_0 - D1_1) / (r0 + r1), half the
    Taylor term of :func:`multistep.dpmpp_3m_update` (a wrong coefficient: the slope must drop)."""
    return multistep.dpmpp_3m_update(x, ms, w, key) - _half_d2_term(ms, w)


def _half_d2_term(ms, w):
    """The difference of the two 3M variants: -alpha_n ((e^-h - 1 + h) / h^2 - 1/2) (D1_0 - D1_1) / (r0 + r1)."""
    h, h0, h1 = w.lam_n - w.lams[0], w.lams[0] - w.lams[1], w.lams[1] - w.lams[2]
    r0, r1 = h0 / h, h1 / h
    d = ((ms[0] - ms[1]) / r0 - (ms[1] - ms[2]) / r1) / (r0 + r1)
    return -w.alpha_n * ((jnp.expm1(-h) + h) / h**2 - 0.5) * d


def _multistep(updates, lower_order_final=False):
    def run(score, sde, key, x, *, steps, eps):
        ts = sampling.time_grid(sde, steps, sde.T, eps, "logsnr").astype(x.dtype)
        return multistep.multistep_loop(score, sde, key, x, ts, updates, lower_order_final=lower_order_final)
    return run


def _sampler(fn, **options):
    return lambda score, sde, key, x, *, steps, eps: fn(score, sde, key, x, steps=steps, eps=eps, **options)


# name -> (sampler(score, sde, key, x, steps=, eps=), expected order). lower_order_final=False: at >= 15 steps it is
# off anyway; the warm-up steps stay (their error is negligible at high noise).
CONVERGENCE = {
    "ddim": (_sampler(sampling.sample_ddim), 1),
    "ode euler": (_sampler(sampling.sample_ode, solver="euler"), 1),
    "heun": (_sampler(sampling.sample_heun), 2),
    "dpmpp_2m": (_sampler(sampling.sample_dpmpp_2m, lower_order_final=False), 2),
    "dpmpp_3m": (_sampler(sampling.sample_dpmpp_3m, lower_order_final=False), 3),
    "unipc order=2": (_sampler(sampling.sample_unipc, order=2, lower_order_final=False), 3),  # UniC: p + 1
    "unipc order=3": (_sampler(sampling.sample_unipc, order=3, lower_order_final=False), 4),
}
BROKEN = {  # name -> (sampler, the order the correct method has)
    "dpmpp_2m without the history term": (_multistep((multistep.dpmpp_1_update, multistep.dpmpp_1_update)), 2),
    "dpmpp_3m with the reference code's D2": (_multistep(
        (multistep.dpmpp_1_update, multistep.dpmpp_2m_update, _dpmpp_3m_reference_code)), 3),
}


@functools.lru_cache(maxsize=None)
def _convergence_problem():
    """(score, sde, x_T, reference x at CONV_EPS) in float64: a mild two-component mixture (std 0.5), VP."""
    mix = sj.GaussianMixture(jnp.array([0.5, 0.5], jnp.float64), jnp.array([[-1.0, 0.0], [1.0, 0.5]], jnp.float64),
                             jnp.array([0.25 * np.eye(2)] * 2, jnp.float64))
    sde = sj.VPSDE()
    score = mix.score_fn(sde)
    x = jax.random.normal(jax.random.key(0), (32, 2), jnp.float64)
    ends = jnp.asarray([sde.T, CONV_EPS], jnp.float32).astype(jnp.float64)  # the float32 end points of the grids
    solve = jax.jit(lambda x: sampling.pf_ode_solve(score, sde, x, ends, adaptive=True, rtol=1e-11, atol=1e-11,
                                                    max_steps=20_000)[0])
    return score, sde, x, solve(x)


@functools.lru_cache(maxsize=None)
def convergence_slope(name: str) -> tuple[float, np.ndarray]:
    """(fitted slope of log RMS error against log steps, the errors) of sampler ``name`` (one compile for all)."""
    fn = {**CONVERGENCE, **BROKEN}[name][0]
    with jax.enable_x64(True):
        score, sde, x, ref = _convergence_problem()
        run = jax.jit(lambda x: [jnp.sqrt(jnp.mean((fn(score, sde, jax.random.key(1), x, steps=n, eps=CONV_EPS)[0]
                                                    - ref) ** 2)) for n in CONV_STEPS])
        errs = np.array([float(e) for e in run(x)])
    return -float(np.polyfit(np.log(CONV_STEPS), np.log(errs), 1)[0]), errs


@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_order_of_convergence(name):
    slope, errs = convergence_slope(name)
    order = CONVERGENCE[name][1]
    print(f"{name}: slope {slope:.2f} (theory {order}), errors {errs}")
    assert np.all(np.diff(errs) < 0), errs
    if name == "unipc order=3":  # order 4 in theory; 3.7 over 16..128 steps (its warm-up is lower order)
        assert 3.4 < slope < order + SLOPE_TOL, slope
    else:
        assert abs(slope - order) < SLOPE_TOL, (slope, order)


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_variant_loses_order(name):
    """Negative control: the same fit catches a wrong coefficient (a slope at least one order lower, less 0.2)."""
    slope, errs = convergence_slope(name)
    order = BROKEN[name][1]
    print(f"{name}: slope {slope:.2f} (correct method: {order}), errors {errs}")
    assert slope < order - 0.8, slope


# ------------------------------------------------------------------------------- pieces of the update rules
def test_step_orders_warm_up_and_lower_order_final():
    np.testing.assert_array_equal(multistep.step_orders(3, 5, True), [1, 2, 3, 2, 1])
    np.testing.assert_array_equal(multistep.step_orders(3, 5, False), [1, 2, 3, 3, 3])
    np.testing.assert_array_equal(multistep.step_orders(2, 1, True), [1])
    np.testing.assert_array_equal(multistep.step_orders(3, 15, True), [1, 2] + [3] * 13)  # only below 15 steps


def test_vandermonde_solve_and_unip2_is_dpmpp_2m():
    nodes, rhs = [-0.7, -1.9, 1.0], [0.3, -0.2, 0.45]
    rho = np.array([float(r) for r in multistep.solve_vandermonde(nodes, rhs)])
    np.testing.assert_allclose(np.vander(nodes, increasing=True).T @ rho, rhs, rtol=1e-6)
    # UniP-2 with B(h) = e^h - 1 and rho = 1/2 is DPM-Solver++(2M) (Zhao et al. 2023, Sec. 3.3)
    x, m0, m1, m2 = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    w = multistep.Window(*np.float32([0.8, 0.7, 0.5, 0.9]), np.float32([0.6, 0.35, 0.1]))
    unip = jax.jit(functools.partial(multistep.unipc_predict_update, order=2, variant="bh2"))
    np.testing.assert_allclose(unip(x, (m0, m1, m2), w), jax.jit(multistep.dpmpp_2m_update)(x, (m0, m1, m2), w),
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- accuracy and counted NFE
SHARP = sj.isotropic_mixture([[-1.5, -0.5], [1.5, -0.5], [0.0, 1.0]], 0.1)  # centred, sharp, well separated
B = 2000
RATIO = 2.5  # allowed sliced W1 / noise floor, as in tests/test_sampling.py
sliced_w1 = jax.jit(lambda x, y: sj.sliced_wasserstein(jax.random.key(3), x, y))
SDES = {"vp": sj.VPSDE(), "subvp": sj.SubVPSDE(), "ve": sj.VESDE(sigma_max=10.0), "cosine": CosineSDE()}


@pytest.fixture(scope="module")
def reference():
    return reference_and_floor(SHARP, B, sliced_w1)


# (sde, method, options, expected nfe incl. the denoising step): every method, every SDE at least once
CASES = [
    ("vp", "dpmpp_2m", {"steps": 20}, 21),
    ("vp", "unipc", {"steps": 15, "order": 3}, 16),
    ("vp", "dpmpp_2m_sde", {"steps": 40}, 41),
    ("subvp", "dpmpp_3m", {"steps": 20, "grid": "edm"}, 21),
    ("ve", "unipc", {"steps": 12, "variant": "bh1"}, 13),
    ("ve", "heun", {"steps": 15, "s_churn": 10.0, "s_tmax": 5.0}, 31),
    ("cosine", "dpmpp_3m", {"steps": 12}, 13),
    ("cosine", "heun", {"steps": 15, "s_churn": 5.0}, 31),
]


@pytest.mark.parametrize("sde_name, method, options, nfe", CASES,
                         ids=[f"{s}-{m}-" + "-".join(f"{k}={v}" for k, v in o.items()) for s, m, o, _ in CASES])
def test_samples_match_sharp_mixture(reference, sde_name, method, options, nfe):
    ref, floor = reference
    sde = SDES[sde_name]
    score = Counted(SHARP.score_fn(sde))
    x, info = sj.sample(score, sde, jax.random.key(0), (B, 2), method=method, **options)
    x = jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(info["nfe"]) == score.calls == nfe, (int(info["nfe"]), score.calls, nfe)
    r = float(sliced_w1(x, ref)) / floor
    print(f"W1/floor = {r:.2f}")
    assert bool(jnp.all(jnp.isfinite(x))) and r < RATIO, f"sliced W1 is {r:.2f}x the noise floor (allowed {RATIO}x)"


def test_dpmpp_2m_with_classifier_free_guidance():
    """A guidance transform (a pytree score) runs through DPM-Solver++(2M) at 10 evaluations: the result is the
    sampler run on (1 + w) s(x | y) - w s(x) written out, and w = 0 samples the conditional (one mode)."""
    sde = SDES["vp"]
    cond, uncond = SHARP.component(0).score_fn(sde), SHARP.score_fn(sde)
    run = lambda score: sj.sample(score, sde, jax.random.key(0), (256, 2), method="dpmpp_2m", steps=9)
    x, info = run(sj.classifier_free_guidance(cond, uncond, 1.0))
    y, _ = run(lambda x, t: 2.0 * cond(x, t) - uncond(x, t))
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
    assert int(info["nfe"]) == 10
    x0, _ = run(sj.classifier_free_guidance(cond, uncond, 0.0))
    assert float(jnp.max(jnp.linalg.norm(x0 - SHARP.means[0], axis=-1))) < 0.6


# ------------------------------------------------------------------------------------------ bad options
def _boom(x, t):
    raise AssertionError("the score must not be evaluated before the options are validated")


BAD = [
    ("dpmpp_2m", {"steps": 0}, "steps must be an integer >= 1"),
    ("heun", {"steps": 2.5}, "steps must be an integer >= 1"),
    ("dpmpp_3m", {"ts": [1.0, 0.5, 0.5, 0.1]}, "strictly decreasing"),
    ("unipc", {"ts": [0.001, 0.5, 1.0]}, "strictly decreasing"),
    ("dpmpp_2m_sde", {"ts": [1.0, 0.5, 0.0], "denoise": False}, "must end above 0"),
    ("unipc", {"order": 4}, "order must be one of"),
    ("unipc", {"order": 0}, "order must be one of"),
    ("dpmpp_2m", {"order": 3}, "unknown option"),
    ("unipc", {"variant": "bh3"}, "unknown UniPC B"),
    ("dpmpp_3m", {"lower_order_final": 1}, "lower_order_final must be"),
    ("dpmpp_2m", {"grid": "karras"}, "unknown time grid"),
    ("heun", {"s_churn": -1.0}, "s_churn must be"),
    ("heun", {"s_churn": float("nan")}, "s_churn must be"),
    ("heun", {"s_churn": 10.0, "s_noise": 0.0}, "s_noise must be"),
    ("heun", {"s_churn": 10.0, "s_tmin": -0.5}, "s_tmin must be"),
    ("heun", {"s_churn": 10.0, "s_tmin": 2.0, "s_tmax": 1.0}, "must not exceed"),
    ("heun", {"s_tmax": 5.0}, "apply only to EDM's stochastic sampler"),
]


@pytest.mark.parametrize("method, options, match", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_options_raise_before_any_work(method, options, match):
    sde = SDES["vp"]
    with pytest.raises(ValueError, match=match):
        sj.sample(_boom, sde, jax.random.key(0), (8, 2), method=method, **options)
    fn = jax.jit(functools.partial(sj.sample, _boom, sde, shape=(8, 2), method=method, **options))
    with pytest.raises(ValueError, match=match):
        fn(jax.random.key(0))
