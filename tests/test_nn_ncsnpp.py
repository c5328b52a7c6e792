"""DDPM / DDPM++ / NCSN++ networks: reference parameter counts, tiny-width forward/backward, class conditioning,
mixed precision, FIR resampling.

Cheap on CPU: parameter counts come from ``jax.eval_shape`` (tracing, no compilation, no memory), and the few
compiled functions use XLA's fastest CPU compile settings (compile time, not run time, dominates tiny networks).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax.nn import DDPM, NCSNpp, ResnetBlockDDPMpp, build_model, cifar10_preset, cifar10_presets
from sde_jax.nn import resample
from sde_jax.nn.layers import FIRConv, num_groups
from sde_jax.nn.presets import NAMES, PARAMETERIZATION, REFERENCE_PARAM_COUNTS, ve_time_embedding
from sde_jax.sde import VESDE

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_jit(f):
    return jax.jit(f, compiler_options=FAST_COMPILE)


def n_params(tree) -> int:
    return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


def finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(a, np.float32)))) for a in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts of the CIFAR-10 presets (score_sde: DDPM 35.22M, DDPM++ 61.80M / 106.63M, NCSN++ 62.76M / 107.59M)


@pytest.mark.parametrize("name", NAMES)
def test_cifar10_parameter_counts_match_reference(name):
    model = build_model(**cifar10_preset(name))
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, t)
    count = n_params(shapes)
    # Equal to the reference to its printed precision (0.01M), far inside the 1% asked for.
    assert abs(count - REFERENCE_PARAM_COUNTS[name]) <= 5e3, f"{name}: {count:,} parameters"


def test_presets_are_complete_and_overridable():
    presets = cifar10_presets()
    assert tuple(presets) == NAMES and set(PARAMETERIZATION) == set(NAMES)
    assert presets["ncsnpp_continuous"]["fir"] and presets["ncsnpp_continuous"]["progressive_input"] == "residual"
    assert presets["ddpmpp_deep_continuous"]["num_res_blocks"] == 8
    assert isinstance(build_model(**cifar10_preset("ddpm")), DDPM)
    assert cifar10_preset("ncsnpp_continuous", nf=16)["nf"] == 16
    with pytest.raises(ValueError, match="no field"):
        cifar10_preset("ddpm", fir=True)  # DDPM has no FIR option
    with pytest.raises(ValueError, match="unknown CIFAR-10 preset"):
        cifar10_preset("ncsn")


def test_ve_time_embedding_is_log_sigma():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    m = ve_time_embedding(sde.sigma_min, sde.sigma_max)
    t = np.linspace(0.0, 1.0, 7)
    np.testing.assert_allclose(m["time_shift"] + m["time_scale"] * t, np.log(np.asarray(sde.sigma(t))), rtol=1e-5)
    assert cifar10_preset("ncsnpp_continuous")["time_shift"] == pytest.approx(math.log(0.01))


# ---------------------------------------------------------------------------------------------------------------
# Tiny forward / backward of each architecture: the preset with nf=8, one block per level and two levels
# (16x16 input, attention at 16x16 as in the preset); block type, resampling, FIR, skip rescaling, input pyramid and
# time embedding are the preset's. The deep presets differ from their shallow ones only in num_res_blocks; the
# full-size forward of all five is traced (shapes checked) by the parameter-count test.


@pytest.mark.parametrize("name", ["ddpm", "ddpmpp_continuous", "ncsnpp_continuous"])
def test_preset_forward_backward_tiny(name):
    model = build_model(**cifar10_preset(name, nf=8, num_res_blocks=1, ch_mult=(1, 2)))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    t = jnp.array([0.02, 0.9])

    @fast_jit
    def run(key):
        params = model.init(key, x, t)

        def loss(p):
            out = model.apply(p, x, t)
            return jnp.mean((out - x) ** 2), out

        return jax.grad(loss, has_aux=True)(params)

    grads, out = run(jax.random.key(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert finite(out) and finite(grads)
    assert float(jnp.max(jnp.abs(out))) < 1e-3  # init_scale=0: the output layer starts (numerically) at zero
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0


def test_progressive_variants_shapes():
    """Every progressive / resampling option wires up (shape-checked by tracing, no compilation)."""
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((2,), jnp.float32)
    base = dict(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
    variants = [
        dict(progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
        dict(progressive="residual", progressive_input="residual", fir=True),
        dict(progressive="output_skip", progressive_input="input_skip", fir=True, resblock_type="ddpm"),
        dict(progressive="residual", resblock_type="ddpm", resamp_with_conv=False, embedding_type="fourier"),
    ]
    for v in variants:
        model = NCSNpp(**base, **v)
        params = jax.eval_shape(model.init, jax.random.key(0), x, t)
        out = jax.eval_shape(model.apply, params, x, t)
        assert out.shape == x.shape, v
    with pytest.raises(ValueError, match="progressive_input"):
        jax.eval_shape(NCSNpp(**base, progressive_input="skip").init, jax.random.key(0), x, t)
    with pytest.raises(ValueError, match="multiples of 4"):
        NCSNpp(**base).init(jax.random.key(0), jnp.zeros((1, 10, 10, 3)), jnp.zeros(1))


# ---------------------------------------------------------------------------------------------------------------
# Class conditioning and mixed precision


def test_class_conditioning():
    model = NCSNpp(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), num_classes=10, init_scale=1.0)
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(0), (1, 8, 8, 3)), (4, 8, 8, 3))  # one image, 4 times
    t = jnp.full((4,), 0.5)

    @fast_jit
    def run(key):
        params = model.init(key, x, t)
        return model.apply(params, x, t, jnp.array([3, 7, 10, 10])), model.apply(params, x, t)

    labelled, none = run(jax.random.key(1))
    assert float(jnp.max(jnp.abs(labelled[0] - labelled[1]))) > 1e-4  # different labels, different outputs
    np.testing.assert_allclose(none, jnp.broadcast_to(labelled[2], none.shape), rtol=1e-6, atol=1e-6)  # None = null
    uncond = NCSNpp(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,))
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(uncond.init, jax.random.key(0), x, t, jnp.arange(4))
    with pytest.raises(ValueError, match="integer labels"):
        jax.eval_shape(model.init, jax.random.key(0), x, t, jnp.arange(4.0))  # floats
    with pytest.raises(ValueError, match="integer labels"):
        jax.eval_shape(model.init, jax.random.key(0), x, t, jnp.arange(2))  # wrong batch


def test_bfloat16_compute():
    model = NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), fir=True,
                   progressive_input="residual", embedding_type="fourier", init_scale=1.0, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    t = jnp.array([0.1, 0.7])

    @fast_jit
    def run(key):
        params = model.init(key, x, t)
        return params, model.apply(params, x, t)

    params, out = run(jax.random.key(1))
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}  # param_dtype stays float32
    assert out.dtype == jnp.float32 and out.shape == x.shape  # bf16 inside, the input's dtype outside
    assert finite(out) and float(jnp.std(out)) > 0


def test_dropout_only_in_training():
    block = ResnetBlockDDPMpp(out_ch=8, dropout=0.5, init_scale=1.0)
    x, temb = jnp.ones((1, 4, 4, 8)), jnp.ones((1, 16))

    @fast_jit
    def run(key):
        params = block.init(key, x, temb)
        train = block.apply(params, x, temb, train=True, rngs={"dropout": jax.random.fold_in(key, 1)})
        return block.apply(params, x, temb), block.apply(params, x, temb), train

    eval_a, eval_b, train_out = run(jax.random.key(0))
    np.testing.assert_array_equal(eval_a, eval_b)  # deterministic by default
    assert not np.allclose(train_out, eval_a)


def test_group_counts():
    assert [num_groups(c) for c in (8, 128, 256, 3, 144)] == [2, 32, 32, 1, 16]


# ---------------------------------------------------------------------------------------------------------------
# FIR resampling (kernel [1, 3, 3, 1]; pixels outside the image are zero, as in the reference)


def test_fir_downsample_of_constant_is_constant():
    c = 2.5
    y = np.asarray(resample.downsample_2d(jnp.full((1, 16, 16, 2), c)))
    assert y.shape == (1, 8, 8, 2)
    np.testing.assert_allclose(y[:, 1:-1, 1:-1], c, rtol=1e-6)  # constant inside
    # On the border the tap outside the image (weight 1/8 per axis) is lost: 7c/8, corners 49c/64.
    np.testing.assert_allclose(y[:, 0, 1:-1], 7 * c / 8, rtol=1e-6)
    np.testing.assert_allclose(y[:, 0, 0], 49 * c / 64, rtol=1e-6)
    up = np.asarray(resample.upsample_2d(jnp.full((1, 8, 8, 1), c)))
    assert up.shape == (1, 16, 16, 1)
    np.testing.assert_allclose(up[:, 1:-1, 1:-1], c, rtol=1e-6)


def test_fir_up_then_down_is_identity_on_smooth_images():
    i = np.arange(32) / 32
    img = (np.sin(2 * np.pi * i)[:, None] * np.cos(2 * np.pi * i)[None, :])[None, :, :, None].astype(np.float32)
    back = np.asarray(resample.downsample_2d(resample.upsample_2d(jnp.asarray(img))))
    assert back.shape == img.shape
    # Interior (2 pixels from the border): the combined low-pass filter leaves the slowest mode within 2%
    # of its amplitude 1; a half-pixel misalignment would give errors ~ pi / 32 ~ 0.1.
    assert np.max(np.abs(back - img)[:, 2:-2, 2:-2]) < 0.02


def test_fused_fir_conv_equals_fir_then_conv_inside():
    """upsample_conv_2d (transposed conv + FIR) = FIR upsample then 3x3 conv, away from the border."""
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 3))
    conv = FIRConv(5, down=True)

    @fast_jit
    def run(x, w):
        fused = resample.upsample_conv_2d(x, w)
        separate = jax.lax.conv_general_dilated(resample.upsample_2d(x), w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        params = conv.init(jax.random.key(2), x)
        return fused, separate, params, conv.apply(params, x)

    fused, separate, params, down = run(x, w)
    assert fused.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(fused[:, 3:-3, 3:-3], separate[:, 3:-3, 3:-3], rtol=1e-4, atol=1e-4)
    assert down.shape == (1, 4, 4, 5) and n_params(params) == 3 * 3 * 2 * 5 + 5
