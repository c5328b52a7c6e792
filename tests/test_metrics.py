"""Feature-space distances (sde_jax.eval): Fréchet distance against the Gaussian closed form, KID unbiasedness and
formula."""

import numpy as np
import pytest
from scipy import linalg

from sde_jax.eval import frechet_distance, gaussian_frechet_distance, kid

MU_A, MU_B = np.array([0.0, 1.0, -1.0, 0.5]), np.array([0.5, 0.0, -1.0, 1.5])


def spd(seed, d=4, scale=1.0):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return scale * (a @ a.T / d + 0.3 * np.eye(d))


COV_A, COV_B = spd(0), spd(1, scale=2.0)


def closed_form(mu_a, cov_a, mu_b, cov_b, factor=2.0, root=True):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - factor (S_a S_b)^{1/2}) via scipy's general sqrtm; factor/root let the
    test check that the wrong formulas would be caught."""
    cross = linalg.sqrtm(cov_a @ cov_b).real if root else cov_a @ cov_b
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - factor * cross))


def test_gaussian_fd_commuting_closed_form():
    # diagonal covariances: FD = ||mu_a - mu_b||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 1.0, 0.5, 4.0])
    want = np.sum((MU_A - MU_B) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    np.testing.assert_allclose(gaussian_frechet_distance(MU_A, np.diag(a), MU_B, np.diag(b)), want, rtol=1e-10)


def test_gaussian_fd_general_closed_form_and_symmetry():
    want = closed_form(MU_A, COV_A, MU_B, COV_B)
    np.testing.assert_allclose(gaussian_frechet_distance(MU_A, COV_A, MU_B, COV_B), want, rtol=1e-8)
    np.testing.assert_allclose(gaussian_frechet_distance(MU_B, COV_B, MU_A, COV_A), want, rtol=1e-8)
    assert gaussian_frechet_distance(MU_A, COV_A, MU_A, COV_A) < 1e-10


def test_frechet_distance_of_samples_matches_gaussian_closed_form():
    rng = np.random.default_rng(2)
    n = 200_000
    a = rng.multivariate_normal(MU_A, COV_A, n)
    b = rng.multivariate_normal(MU_B, COV_B, n)
    want = closed_form(MU_A, COV_A, MU_B, COV_B)
    tol = 0.05
    # the tolerance is far below what a missing factor 2 or a missing square root would change
    assert abs(closed_form(MU_A, COV_A, MU_B, COV_B, factor=1.0) - want) > 20 * tol
    assert abs(closed_form(MU_A, COV_A, MU_B, COV_B, root=False) - want) > 20 * tol
    assert abs(frechet_distance(a, b) - want) < tol, (frechet_distance(a, b), want)
    assert frechet_distance(a, a) < 1e-8
    assert frechet_distance(a[: n // 2], a[n // 2:]) < 1e-3  # two samples of one distribution


def test_frechet_distance_errors():
    with pytest.raises(ValueError, match=r"shape \(N, F\)"):
        frechet_distance(np.zeros((10, 2, 2)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))


def test_kid_matches_explicit_sums():
    rng = np.random.default_rng(3)
    m, d = 12, 5
    x, y = rng.normal(size=(m, d)), rng.normal(size=(m, d)) + 0.3
    k = lambda u, v: (u @ v / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = kid(x, y, subset_size=m, n_subsets=3)  # the whole set: every subset is a permutation
    np.testing.assert_allclose(mean, xx + yy - 2 * xy, rtol=1e-10)
    assert std < 1e-10


def test_kid_unbiased_and_positive_when_shifted():
    rng = np.random.default_rng(4)
    n, d, m, s = 20_000, 8, 50, 400
    a, b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    mean, std = kid(a, b, subset_size=m, n_subsets=s)
    stderr = std / np.sqrt(s)  # subsets of a large pool are nearly independent
    assert abs(mean) < 4 * stderr, (mean, stderr)
    # the biased (V-statistic) estimate would sit at ~ 2 (E k(x, x) - E k(x, y)) / m above 0: far outside
    bias = 2 * (np.mean((np.sum(a ** 2, 1) / d + 1) ** 3) - (1 + 3 / d)) / m  # E k(x, y) = 1 + 3 / d
    assert bias > 20 * stderr
    shifted_mean, _ = kid(a, b + 0.5, subset_size=m, n_subsets=s)
    assert shifted_mean > 10 * stderr


def test_kid_errors():
    with pytest.raises(ValueError, match="subset_size"):
        kid(np.zeros((10, 3)), np.zeros((20, 3)), subset_size=11)
