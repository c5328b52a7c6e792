"""Distances between two samples: sliced Wasserstein (raw data), and the feature-space Fréchet distance and KID
(FID / KID when the features are Inception pool3 features).

Fréchet distance and KID are "FID" / "KID" only with the standard pool3 features (2048-D) of the Inception network
of Heusel et al. (2017) on the usual preprocessing; computed with any other features (e.g. the MNIST classifier of
``sde_jax.nn.Classifier``, :func:`sde_jax.eval.embed`) report them under another name, e.g. "fd_classifier" /
"kid_classifier", and compare them only with numbers from the same feature network. Both run on the host in
float64 (numpy): an FD is a small difference of large traces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["sliced_wasserstein", "gaussian_frechet_distance", "frechet_distance", "kid"]


def sliced_wasserstein(key: Array, x: Array, y: Array, n_projections: int = 256) -> Array:
    """Sliced Wasserstein-1 distance between two equal-size samples (Bonneel et al. 2015).

        SW_1(x, y) = E_{u ~ U(S^{d-1})} W_1(<u, x>, <u, y>),
        W_1 in 1-D = mean |sort(<u, x>) - sort(<u, y>)|

    x, y: (n, *shape) with the same n; the expectation over directions uses ``n_projections`` draws.
    """
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs samples of equal shape; got {x.shape} and {y.shape}.")
    u = jax.random.normal(key, (x.shape[1], n_projections))
    u = u / jnp.linalg.norm(u, axis=0, keepdims=True)
    px = jnp.sort(x @ u, axis=0)
    py = jnp.sort(y @ u, axis=0)
    return jnp.mean(jnp.abs(px - py))


# ------------------------------------------------------------------------- feature-space distances


def _features_2d(name: str, f) -> np.ndarray:
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"{name} must be features of shape (N, F) with N >= 2; got shape {f.shape}.")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} contains NaN or Inf.")
    return f


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix, eigenvalues clipped at 0 against round-off."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu_a, S_a) and N(mu_b, S_b) (Dowson & Landau 1982):

        d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

    Tr (S_a S_b)^{1/2} = sum_i sqrt(lambda_i) with lambda_i the eigenvalues of the symmetric PSD matrix
    S_a^{1/2} S_b S_a^{1/2} (similar to S_a S_b), so no non-symmetric matrix square root (scipy's sqrtm, whose
    complex round-off FID code has to patch) is needed; negative round-off eigenvalues are clipped at 0.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"need means (d,) and covariances (d, d) of one d; got {mu_a.shape}, {cov_a.shape}, "
                         f"{mu_b.shape}, {cov_b.shape}.")
    root_a = _psd_sqrt(cov_a)
    m = root_a @ cov_b @ root_a
    lam = np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0.0, None)
    fd = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.sum(np.sqrt(lam))
    return float(max(fd, 0.0))


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F) (Heusel et al. 2017):

        FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}),   mu, S = sample mean and covariance (ddof 1)

    This is FID only when the features are the standard Inception pool3 features (supplied by the user; see the
    note above). The estimate is biased upwards for finite N (two samples of one distribution give FD > 0), so
    compare values computed from the same N, and report the real-vs-real floor beside them.
    """
    a, b = _features_2d("feats_a", feats_a), _features_2d("feats_b", feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}.")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of equal-size samples with k(x, y) = (x.y / d + 1)^3:
    mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2.0 * kxy.mean())


def kid(feats_a, feats_b, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel distance of Bińkowski et al. (2018, "Demystifying MMD GANs"): (mean, std) over ``n_subsets`` of the
    unbiased MMD^2 between random subsets of ``subset_size`` rows of each set (drawn without replacement),

        MMD^2_u = 1/(m(m-1)) sum_{i != j} [k(a_i, a_j) + k(b_i, b_j)] - 2/m^2 sum_{i, j} k(a_i, b_j),
        k(x, y) = (x.y / d + 1)^3   (cubic polynomial kernel, d = feature dimension).

    Unbiased: two samples of one distribution give mean ~ 0 (it can be negative). ``std`` is the spread of the
    subset estimates, not a standard error. It is KID only with the standard Inception pool3 features (see the
    note above); ``seed`` fixes the subsets.
    """
    a, b = _features_2d("feats_a", feats_a), _features_2d("feats_b", feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}.")
    if not 2 <= subset_size <= min(len(a), len(b)):
        raise ValueError(f"subset_size must lie in [2, {min(len(a), len(b))}] (the smaller set's size); got "
                         f"{subset_size}. Pass a smaller subset_size or more features.")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1; got {n_subsets}.")
    rng = np.random.default_rng(seed)
    est = np.array([_polynomial_mmd2(a[rng.choice(len(a), subset_size, replace=False)],
                                     b[rng.choice(len(b), subset_size, replace=False)]) for _ in range(n_subsets)])
    return float(est.mean()), float(est.std())
