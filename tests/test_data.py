"""Toy 2-D sets: shapes, determinism, and the geometry each name promises."""

import jax
import numpy as np
import pytest

from sde_jax.data import ENTROPY, TOY_SETS, sample_toy


@pytest.mark.parametrize("name", sorted(TOY_SETS))
def test_shape_and_determinism(name):
    a = np.asarray(sample_toy(name, jax.random.key(0), 1001))
    b = np.asarray(sample_toy(name, jax.random.key(0), 1001))
    c = np.asarray(sample_toy(name, jax.random.key(1), 1001))
    assert a.shape == (1001, 2) and a.dtype == np.float32 and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert 0.5 < a.std() < 4.0  # all sets live on the same O(1) scale


def test_checkerboard_is_on_black_squares():
    x = np.asarray(sample_toy("checkerboard", jax.random.key(0), 20000)) / 2.0
    assert np.all(np.abs(x) <= 2.0)
    parity = (np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2
    assert np.all(parity == 0)  # exactly the 8 squares of one colour
    # uniform: each of the 8 squares holds about 1/8 of the points
    cells = np.floor(x).astype(int)
    _, counts = np.unique(cells, axis=0, return_counts=True)
    assert len(counts) == 8 and counts.min() > 0.9 * 20000 / 8
    assert abs(ENTROPY["checkerboard"] - np.log(32.0)) < 1e-12


def test_eight_gaussians_modes_and_entropy():
    x = np.asarray(sample_toy("8gaussians", jax.random.key(0), 40000))
    radius = np.linalg.norm(x, axis=1)
    assert abs(np.median(radius) - 4 / np.sqrt(2)) < 0.1
    angles = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) % 8
    assert len(np.unique(angles)) == 8
    # Monte Carlo entropy of the exact mixture density agrees with ENTROPY
    from sde_jax.gmm import isotropic_mixture

    ang = np.arange(8) * np.pi / 4
    mix = isotropic_mixture(4 / np.sqrt(2) * np.stack([np.cos(ang), np.sin(ang)], -1), 0.5 / np.sqrt(2))
    h = -float(np.mean(np.asarray(mix.log_prob(x))))
    assert abs(h - ENTROPY["8gaussians"]) < 0.02


def test_unknown_set():
    with pytest.raises(ValueError, match="unknown toy data set 'circles'"):
        sample_toy("circles", jax.random.key(0), 10)
