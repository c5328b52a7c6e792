"""Latent diffusion (Rombach et al., CVPR 2022): a score model on the scaled latents u = c z of a frozen VAE, and the
likelihood bound of the two together, in bits/dim.

With an encoder q(z | x), a decoder p(x | z) and the diffusion model's density p_u of the scaled latent u = c z
(the PF-ODE likelihood, :func:`sde_jax.log_likelihood`), the latent density is, by the change of variables u = c z,

    log p_z(z) = log p_u(c z) + d_z log c,                                 d_z = number of latent dimensions,

and the ELBO with p_z as the prior (Kingma & Welling 2014; Vahdat et al. 2021, LSGM, eq. 2) bounds the data:

    -log p(x) <= E_q[-log p(x | z)] + E_q[log q(z | x)] - E_q[log p_z(z)]
                 reconstruction      neg. entropy         latent prior

:func:`latent_bound` returns the three terms and their sum per example in bits/dim (nats / (D ln 2), D the data's
dimensions). With a discretised decoder (``sde_jax.nn.VAE``) the reconstruction is a probability mass and the
bound is on -log2 P(x) / D of the discrete data, comparable with the pixel models' bits/dim; with a density decoder
(the closed-form test) it is a bound on -log2 p(x) / D. The scale c is 1 / std of the latents over the training set
(:func:`latent_scale`, Stable Diffusion's 0.18215); a latent model is only valid with the VAE weights and scale it
was trained on, so those weights are identified by :func:`params_fingerprint` and recorded beside the scale
(``sde_jax.eval.latent``: ``write_vae_record``, read back and checked by ``load_vae``).

The VAE's distributions are pure functions here (no Flax; the network is ``sde_jax.nn.VAE``): the discretised
logistic decoder over K pixel values (:func:`discretized_logistic_logp`) and the diagonal Gaussian encoder
(:func:`gaussian_kl`, :func:`gaussian_logp`, :func:`gaussian_entropy`, :func:`reparameterize`).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.likelihood import check_choice, check_data, check_positive_int, log_likelihood
from sde_jax.sde import LinearSDE

Array = jax.Array
EncodeFn = Callable[[Array], "tuple[Array, Array]"]
DecoderNLL = Callable[[Array, Array], Array]

__all__ = ["to_bins", "discretized_logistic_logp", "gaussian_kl", "gaussian_logp", "gaussian_entropy", "reparameterize",
           "latent_scale", "check_scale", "params_fingerprint", "latent_bound"]

ENTROPIES = ("sample", "analytic")


# ------------------------------------------------------------------------------------------ the VAE's distributions
def to_bins(x: Array, num_bins: int = 256) -> Array:
    """The bin k = floor((x + 1) K / 2), clipped to {0, ..., K-1}, of x on [-1, 1] (the inverse of
    ``sde_jax.data.images.to_model_scale``; a dequantised value stays in its bin). int32."""
    return jnp.clip(jnp.floor((jnp.asarray(x) + 1.0) * (0.5 * num_bins)), 0, num_bins - 1).astype(jnp.int32)


def discretized_logistic_logp(k: Array, loc: Array, log_scale: Array, num_bins: int = 256) -> Array:
    """log P(x = k) elementwise for a logistic(loc, s = exp(log_scale)) on [-1, 1] discretised into K bins
    (PixelCNN++, Salimans et al. 2017, eq. 2): bin k has centre c_k = (2k + 1) / K - 1 and edges c_k -+ 1/K, the
    first and last bins extend to -inf and +inf, so the K probabilities sum to one:

        P(k) = sigma(a_k) - sigma(b_k),    a_k = (c_k + 1/K - loc) / s,  b_k = (c_k - 1/K - loc) / s,

    with sigma(b_0) = 0 and sigma(a_{K-1}) = 1. Computed in log space without cancellation as

        log P(k) = log sigma(a_k) + log sigma(-b_k) + log(1 - exp(-(a_k - b_k))),   a_k - b_k = 2 / (K s),

    (sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - e^(b - a))), dropping the terms of an open edge.
    ``k`` integer bins; ``loc``, ``log_scale`` broadcast against it.
    """
    k = jnp.asarray(k)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise ValueError(f"k must hold integer bins in {{0, ..., {num_bins - 1}}}; got dtype {k.dtype}. Use "
                         "to_bins(x).")
    inv_s = jnp.exp(-log_scale)
    centre = (2.0 * k.astype(loc.dtype) + 1.0) / num_bins - 1.0
    a = (centre + 1.0 / num_bins - loc) * inv_s
    b = (centre - 1.0 / num_bins - loc) * inv_s
    width = 2.0 * inv_s / num_bins
    upper = jnp.where(k < num_bins - 1, jax.nn.log_sigmoid(a), 0.0)
    lower = jnp.where(k > 0, jax.nn.log_sigmoid(-b), 0.0)
    middle = jnp.where((k > 0) & (k < num_bins - 1), jnp.log(-jnp.expm1(-width)), 0.0)
    return upper + lower + middle


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def gaussian_kl(mean: Array, logvar: Array) -> Array:
    """KL(N(m, diag(e^v)) || N(0, I)) in nats per example, shape (B,) (Kingma & Welling 2014, App. B):

        1/2 sum_d (m_d^2 + e^(v_d) - 1 - v_d).
    """
    return 0.5 * _sum_except_batch(mean**2 + jnp.exp(logvar) - 1.0 - logvar)


def gaussian_logp(z: Array, mean: Array, logvar: Array) -> Array:
    """log N(z; m, diag(e^v)) in nats per example, shape (B,):

        -1/2 sum_d [ (z_d - m_d)^2 e^(-v_d) + v_d + log 2 pi ].
    """
    return -0.5 * _sum_except_batch((z - mean) ** 2 * jnp.exp(-logvar) + logvar + math.log(2 * math.pi))


def gaussian_entropy(logvar: Array) -> Array:
    """H[N(m, diag(e^v))] = 1/2 sum_d (log 2 pi + 1 + v_d) in nats per example, shape (B,)."""
    return 0.5 * _sum_except_batch(logvar + math.log(2 * math.pi) + 1.0)


def reparameterize(key: Array, mean: Array, logvar: Array) -> Array:
    """z = m + e^(v / 2) eps, eps ~ N(0, I): a draw of q(z | x) differentiable in (m, v)."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


# ------------------------------------------------------------------------------------------ scale and identity
def latent_scale(z: Array | np.ndarray) -> float:
    """c = 1 / std(z) over every element of latents z (N, *latent_shape) drawn from q(z | x) over the training set,
    so u = c z has unit variance (LDM, Sec. 4.3.2; Stable Diffusion's 0.18215). ValueError for NaN/Inf or zero
    spread."""
    z = np.asarray(z, np.float64)
    if z.size < 2 or not np.all(np.isfinite(z)):
        raise ValueError(f"the latent scale needs >= 2 finite latent values; got {z.size} values"
                         f"{'' if z.size < 2 else ' with NaN or Inf'}.")
    std = float(np.std(z))
    if not std > 0:
        raise ValueError("the latents have zero spread: the encoder has collapsed; retrain the VAE.")
    return 1.0 / std


def check_scale(scale: Any) -> float:
    """``scale`` as a float; ValueError unless it is a finite number > 0 (the latent scale c of u = c z)."""
    try:
        c = float(scale)
    except (TypeError, ValueError):
        c = float("nan")
    if not (math.isfinite(c) and c > 0):
        raise ValueError("the latent scale must be a finite number > 0 (c = 1 / std of the VAE's latents, written "
                         f"by experiments.vae to latent.json); got {scale!r}.")
    return c


def params_fingerprint(params: Any) -> str:
    """sha256 (hex) of a parameter pytree: every leaf's path, dtype, shape and bytes in path order. Equal weights
    give equal fingerprints; any changed value, shape or name changes it."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ the bound
def _tile(a: Array, n: int) -> Array:
    """(B, ...) -> (n B, ...): n copies of the batch, copy-major."""
    return jnp.broadcast_to(a[None], (n, *a.shape)).reshape(n * a.shape[0], *a.shape[1:])


def latent_bound(x: Array, key: Array, *, encode: EncodeFn, decoder_nll: DecoderNLL, score: Callable, sde: LinearSDE,
                 scale: float, n_samples: int = 1, entropy: str = "sample", divergence: str = "hutchinson",
                 n_probes: int = 1, eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5, solver: str = "tsit5",
                 max_steps: int = 4096) -> tuple[dict[str, Array], dict[str, Array]]:
    """The latent diffusion bound on -log p(x) per example, in bits/dim (module docstring):

        -log p(x) <= E_q[-log p(x | z)] + E_q[log q(z | x)] - E_q[log p_u(c z) + d_z log c],

    averaged over ``n_samples`` draws z ~ q(z | x) = N(m, diag(e^v)) per example; log p_u is the PF-ODE
    log-likelihood of the score model at u = c z (one solve for all B n_samples latents).

    Args:
      x: a batch (B, *data_shape) as ``encode`` and ``decoder_nll`` take it (images on the model scale).
      key: PRNG key (latent draws, Hutchinson probes).
      encode: ``encode(x) -> (m, v)``, q(z | x)'s mean and log-variance, each (B, *latent_shape).
      decoder_nll: ``decoder_nll(x, z) -> (B,)``: -log p(x | z) in nats (a mass for discrete data, a density
        otherwise).
      score: the score of u = c z (a ``ScoreModel`` or a function ``score(u, t)``) under ``sde``; it is called on
        batches of n_samples B latents (copy-major), so a class-conditional ``ScoreModel`` needs that many labels.
      scale: c, the scale the score model was trained with (:func:`latent_scale`).
      entropy: how E_q[log q(z | x)] is read: ``"sample"`` (log q at the same draws as the other terms; exact per
        draw when q is the true posterior) or ``"analytic"`` (-H[q] in closed form).
      divergence, n_probes, eps, rtol, atol, solver, max_steps: of :func:`sde_jax.log_likelihood`.

    Returns:
      ``(terms, info)``: terms, each (B,) in bits/dim: ``reconstruction`` E_q[-log p(x | z)], ``neg_entropy``
      E_q[log q(z | x)] (the encoder entropy term, -H[q]), ``prior`` -E_q[log p_z(z)], ``total`` their sum;
      info: ``nfe`` (score evaluations of the PF-ODE solve), ``nats`` (the total in nats, (B,)) and
      ``log_jacobian`` (d_z log c, nats).
    """
    c = check_scale(scale)
    n_samples = check_positive_int(n_samples, "n_samples")
    check_choice(entropy, ENTROPIES, "entropy")
    x = check_data(x)
    mean, logvar = encode(x)
    if mean.shape != logvar.shape or mean.shape[:1] != x.shape[:1] or mean.ndim < 2:
        raise ValueError(f"encode(x) must return (mean, logvar) of one shape (B, *latent_shape) for B = {x.shape[0]}; "
                         f"got {mean.shape} and {logvar.shape}.")
    concrete = not isinstance(mean, jax.core.Tracer)  # under an outer jit the check is skipped
    if concrete and not (bool(jnp.all(jnp.isfinite(mean))) and bool(jnp.all(jnp.isfinite(logvar)))):
        raise ValueError("the encoder returned NaN or Inf for this batch; check the VAE's weights and the input "
                         "scale.")
    b, d_x, d_z = x.shape[0], math.prod(x.shape[1:]), math.prod(mean.shape[1:])
    k_z, k_ode = jax.random.split(key)
    noise = jax.random.normal(k_z, (n_samples, *mean.shape), mean.dtype)
    z = (mean[None] + jnp.exp(0.5 * logvar)[None] * noise).reshape(n_samples * b, *mean.shape[1:])
    per_example = lambda v: jnp.mean(jnp.reshape(v, (n_samples, b)), axis=0)
    recon = per_example(decoder_nll(_tile(x, n_samples), z))
    if entropy == "sample":
        log_q = per_example(gaussian_logp(z, _tile(mean, n_samples), _tile(logvar, n_samples)))
    else:
        log_q = -gaussian_entropy(logvar)
    log_pu, info = log_likelihood(score, sde, c * z, k_ode, divergence=divergence, n_probes=n_probes, eps=eps,
                                  rtol=rtol, atol=atol, solver=solver, max_steps=max_steps)
    log_jacobian = d_z * math.log(c)
    prior = -per_example(log_pu + log_jacobian)
    nats = recon + log_q + prior
    bpd = 1.0 / (d_x * math.log(2.0))
    terms = {"reconstruction": recon * bpd, "neg_entropy": log_q * bpd, "prior": prior * bpd, "total": nats * bpd}
    return terms, {"nfe": info["nfe"], "nats": nats, "log_jacobian": jnp.asarray(log_jacobian, nats.dtype)}
