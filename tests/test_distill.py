"""Consistency models and progressive distillation on a toy 2-D mixture with its exact score as the teacher.

* The consistency function's boundary condition holds for any network (f(x, t_min) = x / alpha(t_min)).
* Consistency distillation from the exact probability-flow ODE learns its map x_T -> x_0: the one-step map error at
  held-out x_T is far below the mode spacing and one-step samples are close to exact samples; without the
  boundary condition the same training collapses.
* Consistency training (no teacher) learns a usable two-step sampler.
* One round of progressive distillation (8 teacher DDIM steps -> a 4-step student) reproduces the teacher's map.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_jax as sj
from sde_jax.distill import ConsistencyModel, cd_loss, consistency_model, ct_levels, ct_loss, fit, pd_loss
from sde_jax.nn.mlp import ScoreMLP
from sde_jax.sampling import heun_step

SDE = sj.VPSDE()
NET = ScoreMLP(width=128, depth=3)
LEVELS = 40


@pytest.fixture(scope="module")
def toy():
    """8 sharp components (std 0.08) on the unit circle (neighbours 0.77 apart), its exact score, held-out x_T
    with their exact ODE images, exact reference samples and the noise floor of sliced W1."""
    ang = jnp.arange(8) * 2 * jnp.pi / 8
    mix = sj.isotropic_mixture(jnp.stack([jnp.cos(ang), jnp.sin(ang)], 1), 0.08)
    score = mix.score_fn(SDE)
    x_t = SDE.prior_sample(jax.random.key(5), (500, 2))
    x_exact, _ = sj.decode(score, SDE, x_t, rtol=1e-6, atol=1e-6)
    ref = mix.sample(jax.random.key(1), 2000)
    sw = lambda a, b: float(sj.sliced_wasserstein(jax.random.key(3), a, b))
    floor = float(np.mean([sw(mix.sample(jax.random.key(10 + i), 2000), ref) for i in range(4)]))
    params = NET.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    return mix, score, x_t, x_exact, ref, floor, sw, params


def _map_error(model, x_t, x_exact) -> float:
    x0 = model(x_t, jnp.full((x_t.shape[0],), SDE.T))
    return float(jnp.sqrt(jnp.mean(jnp.sum((x0 - x_exact) ** 2, axis=1))))


def test_boundary_condition_holds_for_any_network():
    def wild(params, x, t):
        return 1e3 * jnp.ones_like(x) + x * params
    for sde in (sj.VPSDE(), sj.VESDE(), sj.SubVPSDE()):
        model = consistency_model(wild, jnp.float32(7.0), sde)
        x = jax.random.normal(jax.random.key(0), (16, 2))
        a = sde.alpha_sigma(jnp.float32(sde.eps))[0]
        np.testing.assert_allclose(model(x, jnp.full((16,), sde.eps)), x / a, rtol=1e-6, atol=1e-6)
        assert float(jnp.max(jnp.abs(model(x, jnp.full((16,), 0.5)) - x))) > 1.0  # the network matters elsewhere


def test_a_score_network_starts_the_consistency_function_at_its_denoiser():
    """``parameterization``: the network is read as a score network through EDM's preconditioning, so f is its
    Tweedie denoiser where s >> s_min (a student initialised from its teacher starts there), and the boundary
    condition still holds exactly."""
    def net(params, x, t):
        return params * jnp.tanh(x) + jnp.sin(3 * x + t[:, None])
    x = jax.random.normal(jax.random.key(0), (16, 2))
    for sde in (sj.VPSDE(), sj.VESDE(), sj.SubVPSDE()):
        for par in ("eps", "v", "x0"):
            model = consistency_model(net, jnp.float32(0.7), sde, parameterization=par)
            assert model.with_params(jnp.float32(0.3)).parameterization == par
            a = sde.alpha_sigma(jnp.float32(sde.eps))[0]
            np.testing.assert_allclose(model(x, jnp.full((16,), sde.eps)), x / a, rtol=1e-6, atol=1e-6)
            for t in (0.5 * sde.T, sde.T):
                tt = jnp.full((16,), t)
                d = sj.denoise(sj.score_fn(net, jnp.float32(0.7), sde, par), sde, x, tt)
                err = float(jnp.max(jnp.abs(model(x, tt) - d)))
                assert err < 0.02 * max(1.0, float(jnp.max(jnp.abs(d)))), (type(sde).__name__, par, t, err)


class _NoBoundary(ConsistencyModel):
    """The broken variant: f = F(x, t), no c_skip / c_out, so nothing pins f(x, t_min) = x."""

    def __call__(self, x, t):
        return self.apply(self.params, x, jnp.broadcast_to(t, (x.shape[0],)))

    def with_params(self, params):
        return _NoBoundary(params, self.sde, self.y, apply=self.apply, t_min=self.t_min, sigma_data=self.sigma_data)


def _cd(toy, model_class=ConsistencyModel):
    mix, score, *_, params = toy
    model = model_class(params, SDE, None, apply=NET.apply, t_min=SDE.eps, sigma_data=0.7)
    teacher = lambda k, x, t, tn: heun_step(score, SDE, k, x, t, tn)
    loss = lambda p, tp, k, x, i: cd_loss(p, tp, model, teacher, k, x, LEVELS)
    res = fit(loss, params, lambda k: mix.sample(k, 256), jax.random.key(1), steps=2500, lr=2e-3,
              target_decay=0.95)
    return model.with_params(res.ema_params)


@pytest.fixture(scope="module")
def cd_model(toy):
    return _cd(toy)


def test_consistency_distillation_learns_the_ode_map(toy, cd_model):
    mix, score, x_t, x_exact, ref, floor, sw, _ = toy
    err = _map_error(cd_model, x_t, x_exact)
    assert err < 0.2, err  # neighbouring modes are 0.77 apart; measured ~0.1
    x, info = sj.sample(cd_model, SDE, jax.random.key(7), (2000, 2), method="consistency", steps=1)
    assert int(info["nfe"]) == 1
    assert sw(x, ref) < 6 * floor, (sw(x, ref), floor)  # an untrained map sits at ~40x; longer runs ~1.6x
    x2, info = sj.sample(cd_model, SDE, jax.random.key(7), (2000, 2), method="consistency", ts=[SDE.T, 0.3])
    assert int(info["nfe"]) == 2 and sw(x2, ref) < 6 * floor


def test_without_the_boundary_condition_distillation_collapses(toy, cd_model):
    """Consistency alone has a trivial solution (a constant map); only the boundary condition rules it out."""
    mix, score, x_t, x_exact, ref, floor, sw, _ = toy
    broken = _cd(toy, _NoBoundary)
    assert _map_error(broken, x_t, x_exact) > 3 * _map_error(cd_model, x_t, x_exact)


def test_consistency_training_without_teacher(toy):
    mix, score, x_t, x_exact, ref, floor, sw, params = toy
    model = consistency_model(NET.apply, params, SDE, sigma_data=0.7)
    steps = 3000
    loss = lambda p, tp, k, x, i: ct_loss(p, model, k, x, ct_levels(i, steps), 1281)
    res = fit(loss, params, lambda k: mix.sample(k, 256), jax.random.key(2), steps=steps, lr=2e-3)
    m = model.with_params(res.ema_params)
    x, _ = sj.sample(m, SDE, jax.random.key(7), (2000, 2), method="consistency", ts=[SDE.T, 0.3])
    assert sw(x, ref) < 6 * floor, (sw(x, ref), floor)  # measured 4x here; 1.6x at 4000 steps


def test_ct_curriculum_and_levels():
    assert int(ct_levels(0, 1000)) == 11 and int(ct_levels(999, 1000)) == 1281
    assert [int(ct_levels(k, 800)) for k in (0, 100, 200)] == [11, 21, 41]


def test_progressive_distillation_round_matches_the_teacher(toy):
    mix, score, x_t, *_ , params = toy
    student = sj.score_fn(NET.apply, params, SDE, "x0")
    res = fit(lambda p, tp, k, x, i: pd_loss(p, student, score, k, x, 4), params, lambda k: mix.sample(k, 256),
              jax.random.key(3), steps=1500, lr=2e-3)
    trained = sj.score_fn(NET.apply, res.ema_params, SDE, "x0")
    ddim = functools.partial(sj.sampling.sample_ddim, sde=SDE, key=jax.random.key(0), x=x_t)
    teacher_8, _ = sj.sampling.sample_ddim(score, SDE, jax.random.key(0), x_t, steps=8)
    teacher_4, _ = sj.sampling.sample_ddim(score, SDE, jax.random.key(0), x_t, steps=4)
    student_4, _ = sj.sampling.sample_ddim(trained, SDE, jax.random.key(0), x_t, steps=4)
    rms = lambda a, b: float(jnp.sqrt(jnp.mean(jnp.sum((a - b) ** 2, 1))))
    assert rms(student_4, teacher_8) < 0.5 * rms(teacher_4, teacher_8), (rms(student_4, teacher_8),
                                                                         rms(teacher_4, teacher_8))


def test_consistency_sampling_options():
    model = consistency_model(lambda p, x, t: x, None, SDE)
    with pytest.raises(ValueError, match="denoise"):
        sj.sample(model, SDE, jax.random.key(0), (4, 2), method="consistency", denoise=True)
    x, info = sj.sample(model, SDE, jax.random.key(0), (4, 2), method="consistency", steps=3)
    assert x.shape == (4, 2) and int(info["nfe"]) == 3
