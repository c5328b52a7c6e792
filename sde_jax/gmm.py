"""Gaussian mixtures: the closed-form truth for every linear SDE.

If x_0 ~ sum_k w_k N(mu_k, Sigma_k) and x_t = alpha(t) x_0 + sigma(t) z, then

    p_t = sum_k w_k N(alpha(t) mu_k, alpha(t)^2 Sigma_k + sigma(t)^2 I),

so the marginal density, its score grad_x log p_t, the posterior over components p_t(k | x) and the
conditional of some coordinates given the others are all exact. Tests and benchmarks check samplers,
likelihoods and guidance against these.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from sde_jax.sde import SDE

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """sum_k weights[k] N(means[k], covs[k]) on R^d. Shapes: (K,), (K, d), (K, d, d)."""

    weights: Array
    means: Array
    covs: Array

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def log_prob_components(self, x: Array) -> Array:
        """log w_k + log N(x; mu_k, Sigma_k) for each example and component: shape (B, K)."""
        x = jnp.asarray(x).reshape(-1, self.dim)
        chol = jnp.linalg.cholesky(self.covs)  # (K, d, d)
        diff = x[:, None, :] - self.means[None]  # (B, K, d)
        sol = jax.vmap(
            lambda L, r: jax.scipy.linalg.solve_triangular(L, r.T, lower=True).T, in_axes=(0, 1), out_axes=1
        )(chol, diff)
        maha = jnp.sum(sol**2, axis=-1)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        return jnp.log(self.weights) - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: Array) -> Array:
        """log p(x) per example, shape (B,)."""
        return logsumexp(self.log_prob_components(x), axis=-1)

    def posterior(self, x: Array) -> Array:
        """log p(k | x) per example and component, shape (B, K)."""
        lp = self.log_prob_components(x)
        return lp - logsumexp(lp, axis=-1, keepdims=True)

    def score(self, x: Array) -> Array:
        """grad_x log p(x), shape (B, d)."""
        return jax.grad(lambda y: jnp.sum(self.log_prob(y)))(jnp.asarray(x).reshape(-1, self.dim))

    def sample(self, key: Array, n: int) -> Array:
        """n samples, shape (n, d)."""
        kc, kz = jax.random.split(key)
        k = jax.random.categorical(kc, jnp.log(self.weights), shape=(n,))
        chol = jnp.linalg.cholesky(self.covs)
        z = jax.random.normal(kz, (n, self.dim))
        return self.means[k] + jnp.einsum("nij,nj->ni", chol[k], z)

    def component(self, k: int) -> "GaussianMixture":
        """The k-th component alone, as a one-component mixture."""
        return GaussianMixture(jnp.ones((1,)), self.means[k : k + 1], self.covs[k : k + 1])

    def diffuse(self, sde: SDE, t) -> "GaussianMixture":
        """p_t for scalar t: means alpha mu_k, covariances alpha^2 Sigma_k + sigma^2 I."""
        alpha, sigma = sde.alpha_sigma(jnp.asarray(t))
        eye = jnp.eye(self.dim)
        return GaussianMixture(self.weights, alpha * self.means, alpha**2 * self.covs + sigma**2 * eye)

    def condition(self, known: Array, values: Array) -> "GaussianMixture":
        """p(x_u | x_k = values) for a boolean mask ``known`` (d,), as a mixture over the unknown coordinates.

        Weights w_k N(values; mu_k[k], Sigma_k[kk]) renormalised; means mu_u + S_uk S_kk^-1 (v - mu_k);
        covariances S_uu - S_uk S_kk^-1 S_ku (static mask only).
        """
        import numpy as np

        known = np.asarray(known, bool)
        ki, ui = np.flatnonzero(known), np.flatnonzero(~known)
        skk = self.covs[:, ki][:, :, ki]
        suk = self.covs[:, ui][:, :, ki]
        suu = self.covs[:, ui][:, :, ui]
        r = values[None, :] - self.means[:, ki]
        gain = jnp.linalg.solve(skk, jnp.swapaxes(suk, 1, 2))  # (K, |k|, |u|)
        means = self.means[:, ui] + jnp.einsum("kij,ki->kj", gain, r)
        covs = suu - jnp.einsum("kuj,kjv->kuv", suk, gain)
        marg = GaussianMixture(self.weights, self.means[:, ki], skk)
        logw = marg.log_prob_components(values[None])[0]
        return GaussianMixture(jnp.exp(logw - logsumexp(logw)), means, covs)

    def score_fn(self, sde: SDE):
        """The exact score of p_t under ``sde``: ``score_fn(x, t)`` with x (B, d) and t scalar or (B,).

        With Sigma_k = U_k diag(l_k) U_k^T (one eigendecomposition, here, not per call):

            s(x, t) = -sum_k p_t(k | x) U_k diag(1 / (alpha^2 l_k + sigma^2)) U_k^T (x - alpha mu_k).

        No LAPACK call runs inside the returned function: a per-call Cholesky inside a jitted sampling loop
        can deadlock XLA's CPU runtime (jaxlib 0.10.2) and costs ~5x more.
        """
        lam, vecs = jnp.linalg.eigh(self.covs)
        means, logw = self.means, jnp.log(self.weights)

        def fn(x: Array, t: Array) -> Array:
            shape = x.shape
            x = x.reshape(shape[0], -1)
            t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (shape[0],))
            alpha, sigma = sde.alpha_sigma(t)
            z = jnp.einsum("kdj,bkd->bkj", vecs, x[:, None, :] - alpha[:, None, None] * means[None])
            var = alpha[:, None, None] ** 2 * lam[None] + sigma[:, None, None] ** 2
            post = jax.nn.softmax(logw - 0.5 * jnp.sum(z**2 / var + jnp.log(var), axis=-1), axis=-1)
            return -jnp.einsum("bk,kdj,bkj->bd", post, vecs, z / var).reshape(shape)

        return fn

    def log_prob_t(self, sde: SDE, x: Array, t) -> Array:
        """log p_t(x) for scalar t, shape (B,)."""
        return self.diffuse(sde, t).log_prob(x)


def isotropic_mixture(means, stds, weights=None) -> GaussianMixture:
    """Mixture of N(means[k], stds[k]^2 I); equal weights by default."""
    means = jnp.asarray(means, jnp.float32)
    k, d = means.shape
    stds = jnp.broadcast_to(jnp.asarray(stds, jnp.float32), (k,))
    w = jnp.full((k,), 1.0 / k) if weights is None else jnp.asarray(weights, jnp.float32)
    return GaussianMixture(w / w.sum(), means, stds[:, None, None] ** 2 * jnp.eye(d)[None])


def random_mixture(key: Array, n_components: int, dim: int, spread: float = 1.0, scale: float = 0.3) -> GaussianMixture:
    """A mixture with random means (std ``spread``), random full covariances (scale ``scale``) and weights."""
    km, kc, kw = jax.random.split(key, 3)
    means = spread * jax.random.normal(km, (n_components, dim))
    a = jax.random.normal(kc, (n_components, dim, dim)) / math.sqrt(dim)
    covs = scale**2 * (jnp.einsum("kij,klj->kil", a, a) + 0.25 * jnp.eye(dim)[None])
    w = jax.nn.softmax(0.5 * jax.random.normal(kw, (n_components,)))
    return GaussianMixture(w, means, covs)
