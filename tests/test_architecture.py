"""The three interfaces at work: the score model is a jit argument (new weights never recompile, weights are never
XLA constants), and a new noise process defined only by its schedule runs through every sampler, the DSM loss and
the PF-ODE likelihood against closed-form Gaussian-mixture truth, without touching the library."""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_jax as sj
from tests.helpers import reference_and_floor
from sde_jax.eval import count_compiles
from sde_jax.losses import dsm_loss
from sde_jax.nn import ScoreMLP
from sde_jax.train.step import example_keys

VP = sj.VPSDE()
KEY = jax.random.key(0)


def mlp_params(model, seed: int):
    """Random parameters from numpy with the shapes of ``model.init`` (no initialiser is compiled)."""
    shapes = jax.eval_shape(model.init, KEY, jnp.zeros((1, 2)), jnp.zeros((1,)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape), s.dtype), shapes)


# ---------------------------------------------------------------------------- the score is an argument
TINY = ScoreMLP(width=16, depth=1, embed_dim=8)
RUNS = {
    "ode": lambda score: sj.sample(score, VP, KEY, (8, 2), method="ode", solver="euler", steps=4),
    "ddim": lambda score: sj.sample(score, VP, KEY, (8, 2), method="ddim", steps=4),
    "pc": lambda score: sj.sample(score, VP, KEY, (8, 2), method="pc", steps=4),
    "inpaint": lambda score: sj.inpaint(score, VP, KEY, jnp.ones((8, 2)), jnp.array([1.0, 0.0]), steps=4),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_new_weights_do_not_recompile(run):
    p1, p2 = mlp_params(TINY, 0), mlp_params(TINY, 1)
    x1, info = jax.block_until_ready(RUNS[run](sj.score_fn(TINY.apply, p1, VP, "eps")))
    with count_compiles() as compiles:
        x2, _ = jax.block_until_ready(RUNS[run](sj.score_fn(TINY.apply, p2, VP, "eps")))
    assert len(compiles) == 0, f"{run}: new parameters of the same shapes compiled {len(compiles)} program(s)"
    assert float(jnp.max(jnp.abs(x1 - x2))) > 1e-3  # ... and the new weights are used
    assert info["nfe"].dtype == jnp.int32


def test_guidance_weight_is_an_argument():
    s1, s2 = (sj.score_fn(TINY.apply, mlp_params(TINY, i), VP, "eps") for i in (0, 1))
    x1, _ = jax.block_until_ready(RUNS["ddim"](sj.classifier_free_guidance(s1, s2, 1.0)))
    with count_compiles() as compiles:
        x2, _ = jax.block_until_ready(RUNS["ddim"](sj.classifier_free_guidance(s1, s2, 3.0)))
    assert len(compiles) == 0 and float(jnp.max(jnp.abs(x1 - x2))) > 1e-3


def test_plain_function_is_static():
    """A plain score function is part of the compiled program: the same object reuses it, a new one traces again."""
    exact = sj.isotropic_mixture([[0.0, 0.0]], 1.0).score_fn(VP)
    traces = [0]

    def make():
        def score(x, t):
            traces[0] += 1  # runs at trace time only
            return exact(x, t)
        return score

    f = make()
    RUNS["ddim"](f)
    first = traces[0]
    RUNS["ddim"](f)
    assert traces[0] == first > 0
    RUNS["ddim"](make())
    assert traces[0] > first


def test_weights_are_not_constants_of_the_compiled_sampler():
    """Lowered with a 256-wide MLP (a 256 x 256 kernel = 65536 floats, ~0.5 MB as hex text), the sampler's program
    holds no parameter-sized constant; the same network closed over by a plain function does (the control)."""
    wide = ScoreMLP(width=256, depth=1, embed_dim=8)
    params = mlp_params(wide, 0)
    run = eqx.filter_jit(lambda score, key: sj.sample(score, VP, key, (4, 2), method="ddim", steps=2)[0])
    longest = lambda text: max(len(line) for line in text.splitlines())
    hlo = run.lower(sj.score_fn(wide.apply, params, VP, "eps"), KEY).as_text()
    assert longest(hlo) < 20_000 and len(hlo) < 200_000, (longest(hlo), len(hlo))
    model = sj.score_fn(wide.apply, params, VP, "eps")
    closed = run.lower(lambda x, t: model(x, t), KEY).as_text()
    assert longest(closed) > 4 * 65536


# -------------------------------------------------------------------- a new SDE stated by its schedule
class CosineSDE(sj.LinearSDE):
    """The cosine schedule of Nichol & Dhariwal (2021, eq. 17) as a linear SDE: with a = pi/2 (t + s) / (1 + s),
    b = pi/2 s / (1 + s),

        alpha(t) = cos(a) / cos(b),   sigma(t)^2 = 1 - alpha^2 = sin(a - b) sin(a + b) / cos(b)^2

    (the product form is precise near t = 0). T = 0.995 keeps alpha(T) = 0.008 > 0, so lambda stays finite."""

    T = 0.995

    def alpha_sigma(self, t):
        s = 0.008
        a, b = jnp.pi / 2 * (t + s) / (1 + s), jnp.pi / 2 * s / (1 + s)
        return jnp.cos(a) / jnp.cos(b), jnp.sqrt(jnp.sin(a - b) * jnp.sin(a + b)) / jnp.cos(b)


COS = CosineSDE()
# sharp, well-separated modes (std 0.1, spread 1.5), centred: broad mixtures hide sampler error
SHARP = sj.isotropic_mixture([[-1.5, -0.5], [1.5, -0.5], [0.0, 1.0]], 0.1)
B = 2000
RATIO = 2.5  # allowed sliced W1 / noise floor, as in tests/test_sampling.py
sliced_w1 = jax.jit(lambda x, y: sj.sliced_wasserstein(jax.random.key(3), x, y))


@pytest.fixture(scope="module")
def reference():
    """A reference set of the sharp mixture and the noise floor (mean sliced W1 of 8 independent sets to it)."""
    return reference_and_floor(SHARP, B, sliced_w1)


COSINE_CASES = [
    ("ode", {}, None),
    ("ode", {"solver": "euler", "steps": 100, "grid": "logsnr"}, 101),
    ("sde", {"steps": 200}, 201),
    ("pc", {"steps": 100}, 201),
    ("ancestral", {"steps": 200}, 201),
    ("ddim", {"steps": 50}, 51),
]


@pytest.mark.parametrize("method, options, nfe", COSINE_CASES, ids=[f"{m}-{o}" for m, o, _ in COSINE_CASES])
def test_cosine_sde_samples_the_mixture(reference, method, options, nfe):
    ref, floor = reference
    x, info = sj.sample(SHARP.score_fn(COS), COS, KEY, (B, 2), method=method, **options)
    assert nfe is None or int(info["nfe"]) == nfe
    r = float(sliced_w1(x, ref)) / floor
    print(f"W1/floor = {r:.2f}")
    assert r < RATIO, f"sliced W1 is {r:.2f}x the noise floor (allowed {RATIO}x)"


def test_cosine_sampler_test_has_power(reference):
    """The VP SDE's exact score run under the cosine SDE is the wrong score: the same check fails clearly."""
    ref, floor = reference
    x, _ = sj.sample(SHARP.score_fn(VP), COS, KEY, (B, 2), method="ddim", steps=50)
    assert float(sliced_w1(x, ref)) / floor > 2 * RATIO


def loss_slope(loss, x0, keys):
    """dL/dc at c = 1 for the score c * s*: zero in expectation iff s* minimises the loss."""
    per = jax.vmap(lambda x, k: jax.grad(lambda c: loss(c, x[None], k[None])[0])(1.0))(x0, keys)
    return float(per.mean()), float(per.std() / np.sqrt(per.shape[0]))


@pytest.mark.parametrize("weighting, importance", [("score_matching", False), ("likelihood", True)])
def test_cosine_sde_exact_score_minimises_dsm(weighting, importance):
    """As tests/test_losses.py: the exact score is the DSM minimiser (importance sampling: ``likelihood_time``)."""
    mix = sj.random_mixture(jax.random.key(0), 3, 2)
    exact = mix.score_fn(COS)
    x0, keys = mix.sample(jax.random.key(1), 2000), example_keys(jax.random.key(2), 2000)
    for c_true, should_vanish in ((1.0, True), (0.7, False)):
        loss = dsm_loss(lambda c, x, t: c_true * c * exact(x, t), COS, "score", weighting=weighting,
                        importance_sampling=importance)
        slope, se = loss_slope(jax.jit(loss), x0, keys)
        assert (abs(slope) < 4 * se) == should_vanish, (c_true, slope, se)


def test_cosine_sde_likelihood_is_exact():
    """PF-ODE log-likelihood (exact divergence) against log p_eps of the sharp mixture. It is centred, so the N(0, I)
    prior differs from the true p_T only at order alpha(T)^2 (~1e-4 nats here)."""
    x = SHARP.sample(jax.random.key(7), 32)
    logp, _ = sj.log_likelihood(SHARP.score_fn(COS), COS, x, jax.random.key(0), divergence="exact", eps=1e-5)
    truth = SHARP.log_prob_t(COS, x, 1e-5)
    np.testing.assert_array_less(np.abs(np.asarray(logp - truth)), 2e-2)
