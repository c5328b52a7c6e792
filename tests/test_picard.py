"""Parallel-in-time sampling (``method="picard"``) against the sequential samplers it solves for.

* tol = 0: the Picard fixed point is the sequential sampler's own trajectory with the same key, for deterministic
  DDIM and the stochastic ancestral and Euler–Maruyama samplers, on VP and VE, to float rounding.
* tol > 0 on a sharp mixture with its exact score: the parallel depth falls far below the step count while the
  typical deviation from the sequential samples stays small and the samples still match the mixture.
* The window sharded over 4 simulated CPU devices gives the one-device samples (a subprocess).
* Bad options raise before tracing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_jax as sj
from tests.helpers import Counted, reference_and_floor

STEPS = 60


@pytest.fixture(scope="module")
def mix():
    """Four sharp (std 0.1), well-separated 2-D components, unequal weights, centred."""
    means = jnp.array([[-1.2, 0.0], [1.2, 0.3], [0.0, 1.4], [0.2, -1.3]])
    m = sj.isotropic_mixture(means, 0.1, jnp.array([0.4, 0.3, 0.2, 0.1]))
    centre = jnp.sum(m.weights[:, None] * m.means, axis=0)
    return sj.GaussianMixture(m.weights, m.means - centre, m.covs)


SDES = {"vp": lambda: sj.VPSDE(N=STEPS + 1), "ve": lambda: sj.VESDE(sigma_max=5.0, N=STEPS + 1)}
BASES = {"ddim": {}, "ancestral": {}, "pc euler-maruyama": {"predictor": "euler_maruyama", "n_corrector": 0}}


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("base", BASES)
def test_tol_zero_reproduces_the_sequential_sampler(mix, sde_name, base):
    sde = SDES[sde_name]()
    score, key = mix.score_fn(sde), jax.random.key(4)
    method = base.split()[0]
    options = dict(BASES[base], steps=STEPS)
    seq, _ = sj.sample(score, sde, key, (256, 2), method=method, **options)
    par, info = sj.sample(score, sde, key, (256, 2), method="picard", base=method, window=8, tol=0.0, **options)
    np.testing.assert_allclose(par, seq, atol=2e-4, rtol=0)
    assert int(jnp.sum(info["accepted"])) == STEPS
    assert int(info["nfe"]) == int(info["sweeps"]) * 8 + 1
    # a different key must give different samples for the stochastic bases (the noise is the key's, not fixed)
    if method != "ddim":
        other, _ = sj.sample(score, sde, jax.random.key(5), (256, 2), method="picard", base=method, window=8,
                             tol=0.0, **options)
        assert float(jnp.max(jnp.abs(other - seq))) > 0.1


def test_nfe_is_counted_at_run_time(mix):
    sde = sj.VPSDE(N=STEPS + 1)
    counted = Counted(mix.score_fn(sde))
    _, info = sj.sample(counted, sde, jax.random.key(0), (64, 2), method="picard", base="pc", steps=STEPS, window=8,
                        tol=0.1)  # PC: a corrector and a predictor per interval
    assert counted.calls == int(info["sweeps"]) * 2 + 1  # one batched call per step map, window-wide
    assert int(info["nfe"]) == int(info["sweeps"]) * 8 * 2 + 1


@pytest.fixture(scope="module")
def long_runs(mix):
    """Sequential and Picard (tol 0.1, window 32) ancestral and DDIM runs of 400 steps, 2000 samples, VP."""
    sde = sj.VPSDE(N=401)
    score, key = mix.score_fn(sde), jax.random.key(7)
    out = {}
    for base in ("ddim", "ancestral"):
        seq, _ = sj.sample(score, sde, key, (2000, 2), method=base, steps=400)
        par, info = sj.sample(score, sde, key, (2000, 2), method="picard", base=base, steps=400, window=32,
                              tol=0.1)
        out[base] = seq, par, info
    return out


@pytest.mark.parametrize("base", ["ddim", "ancestral"])
def test_tolerance_cuts_depth_at_unchanged_samples(mix, long_runs, base):
    seq, par, info = long_runs[base]
    depth = int(info["sweeps"])
    assert depth <= 400 // 4, depth  # ParaDiGMS' 2-4x at the least
    assert int(jnp.sum(info["accepted"])) == 400
    # residuals of accepted steps stay below tol, except a window's first state (accepted unconditionally)
    assert float(jnp.median(info["residuals"])) < 0.1
    dev = jnp.sqrt(jnp.mean((par - seq) ** 2, axis=1))
    assert float(jnp.median(dev)) < 1e-3 and float(jnp.quantile(dev, 0.95)) < 1e-2
    ref, floor = reference_and_floor(mix, 2000, lambda a, b: sj.sliced_wasserstein(jax.random.key(3), a, b))
    w_seq = float(sj.sliced_wasserstein(jax.random.key(3), seq, ref))
    w_par = float(sj.sliced_wasserstein(jax.random.key(3), par, ref))
    assert w_par < 1.5 * floor and abs(w_par - w_seq) < 0.25 * floor, (w_par, w_seq, floor)
    # the minority component (weight 0.1) keeps its mass
    nearest = jnp.argmin(jnp.sum((par[:, None] - mix.means[None]) ** 2, -1), axis=1)
    assert abs(float(jnp.mean(nearest == 3)) - 0.1) < 0.03


def test_window_sharded_over_devices_gives_the_same_samples():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp
        import sde_jax as sj
        assert jax.local_device_count() == 4
        mix = sj.isotropic_mixture(jnp.array([[-1.0, 0.0], [1.0, 0.5]]), 0.1)
        sde = sj.VPSDE(N=101)
        score = mix.score_fn(sde)
        for base in ("ddim", "ancestral"):
            kw = dict(method="picard", base=base, steps=100, window=16, tol=0.1)
            one, i1 = sj.sample(score, sde, jax.random.key(0), (64, 2), **kw)
            four, i4 = sj.sample(score, sde, jax.random.key(0), (64, 2), devices=4, **kw)
            assert float(jnp.max(jnp.abs(one - four))) < 1e-5, base
            assert int(i1["sweeps"]) == int(i4["sweeps"]), base
        print("ok")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.parametrize("options, match", [
    ({"base": "dpmpp_2m"}, "base must be one of"),
    ({"base": "ddim", "window": 0}, "window must be an integer"),
    ({"base": "ddim", "tol": -0.1}, "tol must be"),
    ({"base": "ddim", "devices": 64}, "local devices"),
    ({"base": "ddim", "eta": 2.0}, "eta must lie"),
    ({"base": "ddim", "n_corrector": 1}, "unknown option"),
    ({"base": "ddim", "steps": 0}, "steps must be"),
])
def test_bad_options_raise_before_tracing(options, match):
    def score(x, t):
        raise AssertionError("traced")
    with pytest.raises(ValueError, match=match):
        sj.sample(score, sj.VPSDE(), jax.random.key(0), (4, 2), method="picard", **options)
