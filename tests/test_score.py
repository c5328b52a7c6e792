"""Score parameterisations: every network parameterisation maps the ideal output to the exact score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_jax as sj
from sde_jax.score import PARAMETERIZATIONS


@pytest.mark.parametrize("sde", [sj.VPSDE(), sj.SubVPSDE(), sj.VESDE(sigma_max=10.0)], ids=["vp", "subvp", "ve"])
@pytest.mark.parametrize("param", PARAMETERIZATIONS)
def test_ideal_output_gives_exact_score(sde, param):
    mix = sj.random_mixture(jax.random.key(0), 3, 4)
    exact = mix.score_fn(sde)
    t = jnp.linspace(0.05, 1.0, 16)
    x = jax.random.normal(jax.random.key(1), (16, 4)) * 2.0
    alpha, sigma = (a[:, None] for a in sde.alpha_sigma(t))

    def ideal(params, x, t):
        s = exact(x, t)
        x0 = (x + sigma**2 * s) / alpha
        eps = -sigma * s
        return {"eps": eps, "score": s, "scaled_score": sigma * s, "x0": x0, "v": alpha * eps - sigma * x0}[param]

    got = sj.score_fn(ideal, None, sde, param)(x, t)
    np.testing.assert_allclose(got, exact(x, t), rtol=2e-3, atol=2e-3)


def test_denoise_is_tweedie():
    sde = sj.VPSDE()
    mix = sj.isotropic_mixture([[0.0, 0.0]], 0.5)  # Gaussian N(0, 0.25 I): E[x0|xt] = a*0.25/(a^2 0.25+s^2) xt
    t = jnp.full((5,), 0.4)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    a, s = sde.alpha_sigma(0.4)
    np.testing.assert_allclose(sj.denoise(mix.score_fn(sde), sde, x, t), a * 0.25 / (a**2 * 0.25 + s**2) * x,
                               rtol=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="unknown parameterization 'noise'"):
        sj.score_fn(lambda p, x, t: x, None, sj.VPSDE(), "noise")
    bad = sj.score_fn(lambda p, x, t: x[:, :1], None, sj.VPSDE())
    with pytest.raises(ValueError, match="network returned shape"):
        bad(jnp.ones((2, 3)), jnp.ones((2,)) * 0.5)
