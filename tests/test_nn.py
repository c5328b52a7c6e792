"""Networks: shapes, time embeddings, zero-initialised outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax.nn import GaussianFourierProjection, ScoreMLP, UNet, build_model, sinusoidal_embedding
from sde_jax.nn.unet import depth_to_space, space_to_depth


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(jnp.array([0.0, 0.5]), 8)
    assert emb.shape == (2, 8)
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    freqs = np.exp(-np.log(10_000) * np.arange(4) / 3)
    np.testing.assert_allclose(emb[1, :4], np.sin(500.0 * freqs), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="even dim"):
        sinusoidal_embedding(jnp.zeros(2), 7)


def test_fourier_features_are_fixed():
    m = GaussianFourierProjection(16, scale=16.0)
    p = m.init(jax.random.key(0), jnp.zeros(3))
    g = jax.grad(lambda p: m.apply(p, jnp.array([0.1, 0.2, 0.3])).sum())(p)
    assert float(jnp.abs(g["params"]["W"]).max()) == 0.0  # W is not trained (stop_gradient)
    assert m.apply(p, jnp.zeros(3)).shape == (3, 16)


@pytest.mark.parametrize("embed", ["fourier", "sinusoidal"])
def test_mlp(embed):
    m = ScoreMLP(width=32, depth=2, embed=embed, embed_dim=16)
    x, t = jnp.ones((5, 3)), jnp.linspace(0, 1, 5)
    p = m.init(jax.random.key(0), x, t)
    np.testing.assert_array_equal(m.apply(p, x, t), 0.0)  # zero-initialised output layer
    p = jax.tree.map(lambda a: a + 0.1, p)
    out = m.apply(p, x, t)
    assert out.shape == x.shape and float(jnp.std(out)) > 0
    assert not np.allclose(m.apply(p, x, t * 0.5), out)  # depends on t


@pytest.mark.parametrize("hw", [16])
def test_unet_shapes_and_gradient(hw):
    m = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(hw // 2,))
    x = jax.random.normal(jax.random.key(0), (2, hw, hw, 1))
    t = jnp.array([0.1, 0.9])
    p = jax.jit(m.init)(jax.random.key(1), x, t)  # compiled: eager Flax runs op by op, far slower on a CPU
    loss = lambda p: (lambda out: (jnp.sum(out**2) + jnp.sum(out * x), out))(m.apply(p, x, t))
    g, out = jax.jit(jax.grad(loss, has_aux=True))(p)
    assert out.shape == x.shape
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(g))
    with pytest.raises(ValueError, match="NHWC"):
        m.apply(p, x[..., 0], t)


def test_space_to_depth_is_a_blockwise_reshape_and_inverts():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    z = space_to_depth(x, 2)
    assert z.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(z[1, 1, 2].reshape(2, 2, 3), x[1, 2:4, 4:6])  # one 2x2 block, channels last
    np.testing.assert_array_equal(depth_to_space(z, 2), x)


def test_patched_class_conditional_unet():
    m = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(2,), patch_size=2, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
    t = jnp.array([0.1, 0.5, 0.9])
    p = jax.jit(m.init)(jax.random.key(1), x, t)  # no labels: the null label's embedding is created too
    # (y=None meaning the null label is ConditioningEmbedding's, tested in test_nn_ncsnpp.py)
    rng = np.random.default_rng(2)  # numpy: a jitted random.normal per leaf shape costs seconds of compile each
    p = jax.tree.map(lambda a: a + 0.05 * rng.standard_normal(a.shape, np.float32), p)
    apply = jax.jit(m.apply)
    out = {y: apply(p, x, t, jnp.full((3,), y, jnp.int32)) for y in range(4)}  # one compilation
    assert out[0].shape == x.shape
    assert not np.allclose(out[0], out[1])  # depends on the label
    with pytest.raises(ValueError, match="patch_size=2"):
        m.apply(p, jnp.zeros((1, 7, 7, 1)), t[:1])
    with pytest.raises(ValueError, match="unconditional"):
        UNet(ch=8, ch_mult=(1,), attn_resolutions=()).init(jax.random.key(0), x, t, jnp.zeros((3,), jnp.int32))


def test_mlp_x_damping_scales_each_positional_feature_by_its_surviving_signal():
    """x_damping multiplies sin / cos(w x) by exp(-w^2 sigma_t^2 / 2), sigma_t from the SDE (VP: 1 - exp(-B(t))),
    which is E_eps[sin(w x_t)] / sin(w alpha_t x_0) (Monte Carlo): the damped network equals the undamped one whose
    first-layer rows for the features are scaled by that factor; without the SDE it is an error."""
    import sde_jax as sj
    from sde_jax.config import model_from_config

    sde, levels = sj.VPSDE(), 3
    cfg = dict(name="mlp", width=16, depth=1, embed_dim=8, x_levels=levels, x_scale=4.0)
    damped, plain = model_from_config({**cfg, "x_damping": True}, sde), model_from_config(cfg)
    x = jax.random.normal(jax.random.key(0), (4, 2))
    params = damped.init(jax.random.key(1), x, jnp.full(4, 0.5))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    w = np.pi * 2.0 ** np.arange(levels) / 4.0
    for t in (0.02, 0.3):
        B = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2
        alpha, sigma = np.exp(-B / 2), np.sqrt(1 - np.exp(-B))
        factor = np.exp(-0.5 * (w * sigma) ** 2)
        eps = np.random.default_rng(0).standard_normal(200_000)
        mc = np.mean(np.sin(w[:, None] * (alpha * 0.7 + sigma * eps)), axis=1) / np.sin(w * alpha * 0.7)
        np.testing.assert_allclose(factor, mc, atol=0.02)
        rows = np.concatenate([np.ones(2), np.tile(factor, 2), np.tile(factor, 2)])  # [x, sin (d, L), cos (d, L)]
        scaled = jax.tree.map(lambda p: p, params)
        scaled["params"]["Dense_0"]["kernel"] = params["params"]["Dense_0"]["kernel"] * rows[:, None]
        np.testing.assert_allclose(damped.apply(params, x, jnp.full(4, t)), plain.apply(scaled, x, jnp.full(4, t)),
                                   rtol=1e-5, atol=1e-6)
    assert factor[-1] < 0.1 and factor[0] > 0.5  # at t = 0.3 the finest feature is gone, the coarsest is not
    with pytest.raises(ValueError, match="x_damping needs the noise process"):
        model_from_config({**cfg, "x_damping": True})


def test_build_model():
    assert isinstance(build_model("mlp", width=8), ScoreMLP)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")
