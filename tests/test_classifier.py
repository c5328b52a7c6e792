"""The (noise-conditional) classifier: shapes, losses, guidance log-probabilities, features.

Parameters come from numpy (``random_params``), not from ``Module.init``: compiling JAX's random initialisers costs
seconds per parameter on this CPU, far more than the tests themselves.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_jax as sj
from sde_jax.classifier import classifier_loss, log_prob_fn, noisy_classifier_loss
from sde_jax.eval import features
from sde_jax.train.step import example_keys, init_train_state, make_optimizer, make_train_step
from sde_jax.nn import Classifier, build_model


def random_params(module, *args, seed=0):
    """Parameters shaped as ``module.init(key, *args)`` would make them, drawn N(0, 0.3^2) by numpy."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


# one small noise-conditional and one clean network on 8x8 images, shared by the tests below
NC, CLEAN = Classifier(num_classes=3, ch=4, noise_conditional=True), Classifier(num_classes=3, ch=4)
X = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8, 8, 1)), jnp.float32)
T = jnp.array([0.2, 0.5, 0.8])
NC_P, CLEAN_P = random_params(NC, X, T), random_params(CLEAN, X)
nc_apply, clean_apply = jax.jit(NC.apply), jax.jit(CLEAN.apply)


@pytest.mark.parametrize("hw,nc", [((28, 28), False), ((13, 17), True)])
def test_shapes_any_image_size(hw, nc):
    m = Classifier(num_classes=3, ch=4, noise_conditional=nc, feature_dim=7)
    x, t = jax.ShapeDtypeStruct((2, *hw, 1), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32)
    p = jax.eval_shape(m.init, jax.random.key(0), x, t)
    assert jax.eval_shape(m.apply, p, x, t).shape == (2, 3)
    assert jax.eval_shape(lambda p, x, t: features(m.apply, p, x, t), p, x, t).shape == (2, 7)
    default = Classifier(ch=4)  # feature_dim defaults to 4 ch
    assert jax.eval_shape(lambda x: default.init_with_output(jax.random.key(0), x, method="features")[0], x).shape \
        == (2, 16)


def test_noise_conditional_uses_t_and_needs_it():
    assert not np.allclose(nc_apply(NC_P, X, jnp.full(3, 0.1)), nc_apply(NC_P, X, jnp.full(3, 0.9)))
    with pytest.raises(ValueError, match="noise-conditional"):
        NC.apply(NC_P, X)
    np.testing.assert_array_equal(clean_apply(CLEAN_P, X, jnp.full(3, 0.1)), clean_apply(CLEAN_P, X, T))  # t ignored
    with pytest.raises(ValueError, match="NHWC"):
        CLEAN.apply(CLEAN_P, X[..., 0])


def test_build_model_and_feature_errors():
    assert isinstance(build_model("classifier", ch=4), Classifier)
    with pytest.raises(TypeError, match="method='features'"):
        features(lambda params, x, t: x, None, X)


def test_log_prob_fn_normalised_and_plugs_into_guidance():
    lp = log_prob_fn(nc_apply, NC_P)
    np.testing.assert_allclose(jnp.exp(lp(X, T)).sum(-1), 1.0, rtol=1e-5)
    y = jnp.array([0, 1, 2])
    guide = sj.classifier_guidance(lambda x, t: jnp.zeros_like(x), lp, y, scale=2.0)  # a pytree: a jit argument
    guided = eqx.filter_jit(lambda g, x, t: g(x, t))(guide, X, T)
    # grad_x of sum_i log p(y_i | x_i): each example's gradient is its own log p(y_i | x_i)'s
    want = jax.jit(jax.vmap(jax.grad(lambda xi, ti, yi: lp(xi[None], ti[None])[0, yi])))(X, T, y)
    np.testing.assert_allclose(guided, 2.0 * want, rtol=1e-4, atol=1e-6)


def test_clean_loss_is_cross_entropy():
    y = jnp.array([0, 2, 1])
    keys = example_keys(jax.random.key(2), 3)
    loss, aux = jax.jit(classifier_loss(clean_apply))(CLEAN_P, X, keys, y)
    logits = clean_apply(CLEAN_P, X)
    want = -jax.nn.log_softmax(logits)[jnp.arange(3), y]
    np.testing.assert_allclose(aux["per_example"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)
    assert float(aux["accuracy"]) == float(jnp.mean(jnp.argmax(logits, -1) == y))
    with pytest.raises(ValueError, match="needs labels"):
        classifier_loss(clean_apply)(CLEAN_P, X, keys, None)
    with pytest.raises(ValueError, match="integer labels"):
        classifier_loss(clean_apply)(CLEAN_P, X, keys, y.astype(jnp.float32))


def test_noisy_loss_noise_and_times_per_example():
    sde = sj.VPSDE()
    seen = {}

    def probe(params, xt, t):  # records x_t and t; uniform logits over 2 classes
        seen["xt"], seen["t"] = xt, t
        return jnp.zeros((xt.shape[0], 2))

    x0 = jnp.ones((64, 3, 3, 1))
    keys = example_keys(jax.random.key(0), 64)
    labels = jnp.zeros(64, jnp.int32)
    loss_fn = noisy_classifier_loss(probe, sde, eps=0.01)
    loss, aux = loss_fn(None, x0, keys, labels)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    t = np.asarray(aux["t"])
    assert t.min() >= 0.01 and t.max() <= 1.0 and t.std() > 0.2
    alpha, sigma = sde.alpha_sigma(aux["t"])
    z = (seen["xt"] - alpha[:, None, None, None] * x0) / sigma[:, None, None, None]  # x_t = alpha x0 + sigma z
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.1
    # example i's (t, z) come from key i only: reversing the batch reverses them
    xt = seen["xt"]
    loss_fn(None, x0, keys[::-1], labels)
    np.testing.assert_array_equal(seen["t"], aux["t"][::-1])
    np.testing.assert_array_equal(seen["xt"], xt[::-1])
    with pytest.raises(ValueError, match="eps must lie"):
        noisy_classifier_loss(probe, sde, eps=0.0)


def toy_data(rng, n, size=8):
    """Two classes: a bright left half (y = 0) or a bright right half (y = 1), values in [-1, 1]."""
    y = rng.integers(0, 2, n).astype(np.int32)
    left = (np.arange(size) < size // 2).astype(np.float32)
    col = np.where(y[:, None] == 0, left, 1.0 - left)
    return np.broadcast_to(2 * col[:, None, :, None] - 1, (n, size, size, 1)).astype(np.float32), y


def test_noisy_classifier_learns_separable_data():
    sde = sj.VPSDE()
    rng = np.random.default_rng(0)
    optimizer = make_optimizer(3e-3, warmup=0)
    state = init_train_state(NC_P, optimizer)  # 3 outputs; the data use classes 0 and 1
    step = jax.jit(make_train_step(noisy_classifier_loss(NC.apply, sde), optimizer))
    for i in range(150):
        xb, yb = toy_data(rng, 64)
        state, _ = step(state, {"x": xb, "y": yb}, jax.random.key(i))
    x, y = toy_data(rng, 512)
    z = rng.standard_normal(x.shape).astype(np.float32)

    def accuracy(t):
        alpha, sigma = sde.alpha_sigma(t)
        logits = nc_apply(state.params, alpha * x + sigma * z, jnp.full(512, t))
        return float(jnp.mean(jnp.argmax(logits, -1) == y))

    assert accuracy(sde.eps) > 0.97  # nearly clean: separable
    assert 0.35 < accuracy(sde.T) < 0.65  # alpha(T) ~ 0.007: pure noise carries no label
