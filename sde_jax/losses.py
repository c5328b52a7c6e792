"""Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) and VDM's continuous-time ELBO (Kingma et al.
2021; the terms in ``sde_jax.vdm``); the KL-regularised VAE loss of latent diffusion's autoencoder (``vae_loss``).

Every loss has the signature ``loss_fn(params, x0, keys, y=None) -> (loss, aux)`` with one PRNG key per example
(``keys`` of shape (B,)) and, for class-conditional networks ``model_apply(params, x, t, y)``, integer labels y. Drawing each example's noise from its own key makes the loss independent of how a
global batch is split across devices: N devices give the same numbers as one.

All losses are written in score space, s = score_fn(model_apply, params, sde, parameterization), so the same
network parameterisation ("eps", "x0", ...) serves training and sampling.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from sde_jax import vdm
from sde_jax import latent
from sde_jax.score import PARAMETERIZATIONS, ModelApply, score_fn
from sde_jax.sde import LinearSDE, batch_broadcast

Array = jax.Array
LossFn = Callable[..., tuple[Array, dict]]


def _reduce(x: Array, reduce_mean: bool) -> Array:
    """Mean (``reduce_mean``) or sum over all but the batch axis."""
    x = x.reshape(x.shape[0], -1)
    return jnp.mean(x, axis=-1) if reduce_mean else jnp.sum(x, axis=-1)


def example_noise(keys: Array, x0: Array) -> tuple[Array, Array]:
    """Per-example (u in [0, 1), z ~ N(0, I)) from per-example keys."""
    if keys.shape[:1] != x0.shape[:1]:
        raise ValueError(f"need one key per example: keys {keys.shape} for a batch of shape {x0.shape}.")

    def one(k):
        ku, kz = jax.random.split(k)
        return jax.random.uniform(ku, ()), jax.random.normal(kz, x0.shape[1:], x0.dtype)

    return jax.vmap(one)(keys)


def drop_labels(key: Array, y: Array, p_uncond: float, null_label: int) -> Array:
    """Classifier-free guidance training (Ho & Salimans 2022): replace each label by ``null_label`` with
    probability ``p_uncond``, so one network learns s(x, t | y) and s(x, t) = s(x, t | null)."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1]; got {p_uncond}.")
    drop = jax.random.bernoulli(key, p_uncond, jnp.shape(y))
    return jnp.where(drop, jnp.asarray(null_label, jnp.asarray(y).dtype), y)


def _network(model_apply: ModelApply, keys: Array, y: Array | None, p_uncond: float, null_label: int | None,
             dropout: bool) -> tuple[ModelApply, Array | None]:
    """The network a loss trains: labels dropped per example (keys fold_in 1) for classifier-free guidance, and
    ``train=True`` with a dropout key (from the batch's first example key) when the network has dropout."""
    if y is not None and p_uncond > 0:
        if null_label is None:
            raise ValueError("p_uncond > 0 needs the network's null label (its num_classes).")
        y = jax.vmap(lambda k, label: drop_labels(jax.random.fold_in(k, 1), label, p_uncond, null_label))(keys, y)
    if dropout:
        rng = jax.random.fold_in(keys[0], 2)
        inner = model_apply

        def model_apply(params, x, t, *label):
            return inner(params, x, t, *label, train=True, rngs={"dropout": rng})

    return model_apply, y


def dsm_loss(
    model_apply: ModelApply,
    sde: LinearSDE,
    parameterization: str = "eps",
    *,
    weighting: str = "score_matching",
    importance_sampling: bool = False,
    reduce_mean: bool = False,
    eps: float | None = None,
    p_uncond: float = 0.0,
    null_label: int | None = None,
    dropout: bool = False,
) -> LossFn:
    """Continuous-time denoising score matching (Song et al. 2021, eq. 7):

        L = E_t E_{x0} E_z [ lambda(t) || s(alpha x0 + sigma z, t) + z / sigma ||^2 ],  t ~ U(eps, T)

    ``weighting="score_matching"``: lambda = sigma^2, i.e. || sigma s + z ||^2 (score_sde's default).
    ``weighting="likelihood"``: lambda = g^2, which makes L an upper bound on the NLL up to constants
    (Song, Durkan, Murray & Ermon 2021). With ``importance_sampling`` t ~ p(t) prop. to g^2 / sigma^2 and
    the loss is Z || sigma s + z ||^2 (same expectation, far lower variance; ``sde.likelihood_time``).
    ``reduce_mean`` averages over data dimensions instead of summing. The loss is the batch mean.
    With labels y, each is replaced by ``null_label`` with probability ``p_uncond`` (classifier-free guidance
    training); ``dropout`` runs the network with ``train=True`` and a dropout key.
    """
    if weighting not in ("score_matching", "likelihood"):
        raise ValueError(f"unknown weighting {weighting!r}; choose 'score_matching' or 'likelihood'.")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling only applies to weighting='likelihood'.")
    t_min = sde.eps if eps is None else eps
    if not 0 < t_min < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}); got {t_min}.")

    def loss_fn(params: Any, x0: Array, keys: Array, y: Array | None = None) -> tuple[Array, dict]:
        u, z = example_noise(keys, x0)
        net, y = _network(model_apply, keys, y, p_uncond, null_label, dropout)
        if importance_sampling:
            t, z_norm = sde.likelihood_time(u, t_min)
        else:
            t = t_min + u * (sde.T - t_min)
        xt = sde.marginal_sample(None, x0, t, noise=z)
        s = score_fn(net, params, sde, parameterization, y)(xt, t)
        sig = batch_broadcast(sde.alpha_sigma(t)[1], x0)
        if weighting == "score_matching":
            per_example = _reduce((sig * s + z) ** 2, reduce_mean)
        elif importance_sampling:
            per_example = z_norm * _reduce((sig * s + z) ** 2, reduce_mean)
        else:
            per_example = sde.diffusion(t) ** 2 * _reduce((s + z / sig) ** 2, reduce_mean)
        return jnp.mean(per_example), {"t": t, "per_example": per_example}

    return loss_fn


def discrete_loss(
    model_apply: ModelApply, sde: LinearSDE, parameterization: str = "eps", *, reduce_mean: bool = True,
    p_uncond: float = 0.0, null_label: int | None = None, dropout: bool = False,
) -> LossFn:
    """Denoising score matching over the N levels of the SDE's discrete chain (``sde.discrete_alpha_sigma``).

    i ~ U{0, ..., N-1}, x_i = a_i x0 + s_i z, loss = || s_i s(x_i, t_i) + z ||^2 with t_i = i T / (N - 1); for
    DDPM (VP): a_i = sqrt(alpha-bar_i), s_i = sqrt(1 - alpha-bar_i)  (Ho et al. 2020, eq. 14: the eps-MSE)
    SMLD (VE): a_i = 1, s_i = sigma_i                               (Song & Ermon 2019, eq. 5 with lambda = sigma^2)
    Any other SDE: its schedule at t_i.

    Labels, ``p_uncond`` and ``dropout`` as in :func:`dsm_loss`.
    """

    def loss_fn(params: Any, x0: Array, keys: Array, y: Array | None = None) -> tuple[Array, dict]:
        u, z = example_noise(keys, x0)
        net, y = _network(model_apply, keys, y, p_uncond, null_label, dropout)
        i = jnp.minimum((u * sde.N).astype(jnp.int32), sde.N - 1)
        a, s = sde.discrete_alpha_sigma(i)
        xt = batch_broadcast(a, x0) * x0 + batch_broadcast(s, x0) * z
        t = sde.discrete_time(i)
        score = score_fn(net, params, sde, parameterization, y)(xt, t)
        per_example = _reduce((batch_broadcast(s, x0) * score + z) ** 2, reduce_mean)
        return jnp.mean(per_example), {"t": t, "per_example": per_example}

    return loss_fn


def vdm_loss(
    model_apply: ModelApply, sde: LinearSDE, parameterization: str = "eps", *, num_bins: int = 256,
    antithetic: bool = True, group: int = 8, p_uncond: float = 0.0, null_label: int | None = None,
    dropout: bool = False,
) -> LossFn:
    """VDM's negative ELBO of discrete data in bits/dim (Kingma et al. 2021, eqs. 11-17; ``sde_jax.vdm``):

        L(x) = [ KL(q(z_T | x) || N(0, I)) - log p(x | z_0) + T/2 (-lambda'(t)) || eps - eps_hat(z_t, t) ||^2 ]
               / (D ln 2),   t ~ U[0, T],   eps_hat = -sigma_t s(z_t, t),

    with VDM's discretised decoder over ``num_bins`` bins at t = 0. x0 must be the bin centres
    2 (k + 1/2) / K - 1 (``to_model_scale`` without dequantisation: ``data.dequantize=False``). The loss is the
    batch mean; aux holds the per-example terms ``prior``, ``reconstruction``, ``diffusion`` (bits/dim),
    ``per_example`` (their sum) and ``t``.

    ``antithetic``: t stratified over consecutive groups of ``group`` examples (``vdm.draw_times``; the same
    times on n devices as on one while ``group`` divides the per-device batch), else t uniform per example.

    A trainable ``sde`` (``sj.LearnedVDMSDE``, the initial schedule) trains inside the parameters,
    ``params = {"net": ..., "schedule": ...}`` (``sde_jax.train.step.init_params(model, key, example, sde)``):
    the network reads the trained schedule's normalised log-SNR (``vdm.LogSNRTime``), the schedule's end points
    get the ELBO's gradient and its shape the gradient of the mean squared diffusion term, i.e. of the
    estimator's variance (``vdm.with_variance_gradient``). A fixed ``sde`` needs a finite log-SNR at 0 and T
    (``sj.VDMSDE``); its network reads t. Labels, ``p_uncond`` and ``dropout`` as in :func:`dsm_loss`.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}.")
    lam0, lam1 = vdm.check_schedule(sde)
    if int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2; got {num_bins}.")
    if antithetic and (int(group) != group or group < 1):
        raise ValueError(f"group must be a positive integer; got {group}.")
    learned = vdm.is_trainable(sde)
    net_time = vdm.LogSNRTime(model_apply, lam0, lam1).time if learned else None

    def loss_fn(params: Any, x0: Array, keys: Array, y: Array | None = None) -> tuple[Array, dict]:
        if keys.shape[:1] != x0.shape[:1]:
            raise ValueError(f"need one key per example: keys {keys.shape} for a batch of shape {x0.shape}.")

        def draw(k):
            ku, k0, ke = jax.random.split(k, 3)
            normal = lambda kk: jax.random.normal(kk, x0.shape[1:], x0.dtype)
            return jax.random.uniform(ku, ()), normal(k0), normal(ke)

        u, eps0, eps = jax.vmap(draw)(keys)
        t = vdm.draw_times(u, antithetic, group) * sde.T
        net, y = _network(model_apply, keys, y, p_uncond, null_label, dropout)
        labels = () if y is None else (y,)

        def terms_fn(net_params, sv):
            time = t if net_time is None else net_time(sv.lam)
            eps_hat = lambda z, v: vdm.eps_from_output(net(net_params, z, time, *labels), z, v, parameterization)
            return vdm.elbo_terms(eps_hat, sv, x0, eps0, eps, num_bins, sde.T, sde.prior_std)

        if learned:
            net_params, schedule = vdm.split_params(params)
            terms = vdm.with_variance_gradient(terms_fn, net_params, schedule, t)
        else:
            terms = terms_fn(params, vdm.schedule_at(sde, t))
        per_example = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
        return jnp.mean(per_example), {**terms, "per_example": per_example, "t": t}

    return loss_fn


def vae_loss(model_apply: ModelApply, *, kl_weight: float = 1e-2, num_bins: int = 256) -> LossFn:
    """The KL-regularised VAE loss of latent diffusion's autoencoder (``sde_jax.nn.VAE``; Kingma & Welling 2014 with
    LDM's small KL weight beta, Rombach et al. 2022), per example in bits/dim of the discrete data:

        L(x) = [ -log p(x | z) + beta KL(q(z | x) || N(0, I)) ] / (D ln 2),   z = m(x) + e^(v(x)/2) eps,

    with the discretised logistic decoder over ``num_bins`` values (``latent.discretized_logistic_logp``) and
    the closed-form KL (``latent.gaussian_kl``); one reparameterised draw per example from its own key. beta = 1
    is the ELBO; a small beta keeps the latents informative and lets the diffusion prior do the modelling. x0 on
    [-1, 1] (``to_model_scale``; dequantised values are read as their bin). Labels are ignored. The loss is the batch
    mean; aux holds the per-example ``reconstruction`` and ``kl`` in bits/dim (the KL unweighted).
    """
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(f"kl_weight must be a finite number >= 0; got {kl_weight}.")
    if int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2; got {num_bins}.")

    def loss_fn(params: Any, x0: Array, keys: Array, y: Array | None = None) -> tuple[Array, dict]:
        if keys.shape[:1] != x0.shape[:1]:
            raise ValueError(f"need one key per example: keys {keys.shape} for a batch of shape {x0.shape}.")
        mean, logvar = model_apply(params, x0, method="encode")
        z = jax.vmap(latent.reparameterize)(keys, mean, logvar)
        loc, log_scale = model_apply(params, z, method="decode")
        logp = latent.discretized_logistic_logp(latent.to_bins(x0, num_bins), loc, log_scale, num_bins)
        nats_to_bpd = 1.0 / (math.prod(x0.shape[1:]) * math.log(2.0))
        recon = -jnp.sum(logp.reshape(x0.shape[0], -1), axis=-1) * nats_to_bpd
        kl = latent.gaussian_kl(mean, logvar) * nats_to_bpd
        per_example = recon + kl_weight * kl
        return jnp.mean(per_example), {"reconstruction": recon, "kl": kl, "per_example": per_example}

    return loss_fn
