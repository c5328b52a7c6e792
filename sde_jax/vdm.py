"""Variational diffusion models (Kingma, Salimans, Poole & Ho, NeurIPS 2021): the continuous-time ELBO of discrete
data, a noise schedule trained with the network to minimise the variance of the ELBO's estimate, and the ELBO as an
evaluation in bits/dim.

For data x in {0, ..., K-1}^D, scaled to the bin centres c_k = (2k + 1) / K - 1 in [-1, 1]
(``sde_jax.data.images.to_model_scale`` without dequantisation), and any linear SDE with
z_t = alpha_t x + sigma_t eps and log-SNR lambda_t = log(alpha_t^2 / sigma_t^2) = -gamma_t finite on [0, T]
(VDM, eqs. 11-17 and App. E):

    -log p(x) <= KL(q(z_T | x) || N(0, tau^2 I))                                       prior
               + E_{eps_0} [ -log p(x | z_0) ]                                            reconstruction
               + T/2 E_{t ~ U[0, T], eps} [ -lambda'(t) || eps - eps_hat(z_t, t) ||^2 ]   diffusion

with the discretised decoder p(x | z_0) = prod_d softmax_k(-1/2 ((z_0,d / alpha_0 - c_k) alpha_0 / sigma_0)^2)
evaluated at x_d's bin k, and eps_hat = -sigma_t s(z_t, t) (the "eps" reading of any score). All three terms are
returned per example in bits/dim: nats / (D ln 2).

A learned schedule (``sde_jax.LearnedVDMSDE``) trains inside the parameters, ``params = {"net": network
parameters, "schedule": the schedule}``. The bound depends on the schedule only through its end points (VDM,
Sec. 5.1: the diffusion term is 1/2 int_{lambda_1}^{lambda_0} E || x - x_hat(z_v, v) ||^2 e^v dv, whatever lambda
does in between) as long as the network is conditioned on the log-SNR rather than on t: :class:`LogSNRTime`
feeds it tau = (lambda_0* - lambda_t) / (lambda_0* - lambda_1*) with the initial end points lambda_0*, lambda_1*
(VDM's normalised gamma). The end points therefore get the ELBO's gradient, and the shape parameters eta the
gradient of the estimator's second moment (VDM, Sec. 5.2 and App. I.2),

    d/d eta E[L_diff^2] = E[2 L_diff dL_diff/d eta],

which, E[L_diff] being constant in eta, is the gradient of its variance. :func:`with_variance_gradient` computes
both with one backward pass through the network: the schedule enters the bound only through a few numbers per
example (``ScheduleAt``), whose cotangents are pulled back through the schedule twice, once as they are (end
points) and once scaled by 2 L_diff per example (shape).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.data.images import to_model_scale
from sde_jax.score import ScoreModel, output_to_score, score_fn
from sde_jax.sde import LinearSDE, batch_broadcast

Array = jax.Array
ENDPOINTS = ("gamma_min", "gamma_max")  # the leaves of a learned schedule that get the ELBO's gradient

__all__ = ["ScheduleAt", "LogSNRTime", "is_trainable", "check_schedule", "schedule_at", "bin_centres",
           "prior_kl", "decoder_nll", "diffusion_term", "elbo_terms", "draw_times", "with_variance_gradient",
           "trained_score", "schedule_of", "split_params", "eps_from_output", "vdm_elbo_bpd", "pf_ode_bpd"]


# ------------------------------------------------------------------------------------------ the schedule
def is_trainable(sde: LinearSDE) -> bool:
    """True for a schedule with floating-point array leaves (a learned schedule, e.g. ``LearnedVDMSDE``): it then
    trains as part of the parameters, ``{"net": ..., "schedule": sde}``."""
    return any(isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(leaf.dtype, jnp.inexact)
               for leaf in jax.tree.leaves(sde))


def check_schedule(sde: LinearSDE) -> tuple[float, float]:
    """(lambda(0), lambda(T)) as floats; ValueError unless both are finite and lambda(0) > lambda(T) (the bound
    needs the decoder's noise level sigma_0 > 0: VP and sub-VP have sigma(0) = 0, use ``sj.VDMSDE``)."""
    lam0, lam1 = float(sde.log_snr(0.0)), float(sde.log_snr(sde.T))
    if not (math.isfinite(lam0) and math.isfinite(lam1) and lam0 > lam1):
        raise ValueError(
            f"the VDM bound needs a finite log-SNR at t = 0 and t = T with lambda(0) > lambda(T); got "
            f"{lam0} and {lam1} ({type(sde).__name__}). VP and sub-VP have sigma(0) = 0: use sj.VDMSDE or "
            "sj.LearnedVDMSDE (or VESDE).")
    return lam0, lam1


class ScheduleAt(NamedTuple):
    """The schedule where the bound reads it: per example at t (shape (B,)) and at the two ends (scalars).

    ``lam``, ``dlam``: lambda(t) and d lambda / dt; ``alpha``, ``sigma``: alpha(t), sigma(t); ``alpha0``,
    ``sigma0``, ``alpha1``, ``sigma1``: alpha and sigma at t = 0 and t = T.
    """

    lam: Array
    dlam: Array
    alpha: Array
    sigma: Array
    alpha0: Array
    sigma0: Array
    alpha1: Array
    sigma1: Array


def schedule_at(sde: LinearSDE, t: Array) -> ScheduleAt:
    """lambda(t), lambda'(t) (forward-mode autodiff of ``sde.log_snr``), alpha(t), sigma(t), and alpha, sigma at 0
    and T."""
    t = jnp.asarray(t, jnp.result_type(float))
    lam, dlam = jax.jvp(sde.log_snr, (t,), (jnp.ones_like(t),))
    alpha, sigma = sde.alpha_sigma(t)
    alpha0, sigma0 = sde.alpha_sigma(jnp.zeros((), t.dtype))
    alpha1, sigma1 = sde.alpha_sigma(jnp.full((), sde.T, t.dtype))
    return ScheduleAt(lam, dlam, alpha, sigma, alpha0, sigma0, alpha1, sigma1)


@dataclasses.dataclass(frozen=True)
class LogSNRTime:
    """``apply(params, x, t[, y])`` of a network trained together with its schedule, ``params = {"net": ...,
    "schedule": ...}``: the network sees tau = (lam0 - lambda(t)) / (lam0 - lam1), lambda the trained schedule's
    log-SNR and lam0, lam1 the initial one's at 0 and T. This is VDM's conditioning on the normalised
    gamma = -lambda (``model_vdm.ScoreUNet``), under which the ELBO is invariant to the schedule's shape; for a
    fixed linear schedule tau = t. A frozen dataclass, so equal wrappers are equal static parts of a jit."""

    net_apply: Callable[..., Array]
    lam0: float
    lam1: float

    def time(self, lam: Array) -> Array:
        """tau = (lam0 - lambda) / (lam0 - lam1)."""
        return (self.lam0 - lam) / (self.lam0 - self.lam1)

    def __call__(self, params: Any, x: Array, t: Array, *args: Any, **kwargs: Any) -> Array:
        lam = params["schedule"].log_snr(jnp.asarray(t, jnp.result_type(float)))
        return self.net_apply(params["net"], x, self.time(lam), *args, **kwargs)


def split_params(params: Any) -> tuple[Any, LinearSDE]:
    """(network parameters, schedule) of ``params = {"net": ..., "schedule": ...}``; ValueError otherwise."""
    if not (isinstance(params, dict) and set(params) == {"net", "schedule"}):
        raise ValueError("a learned schedule trains inside the parameters: expected params = {'net': network "
                         f"parameters, 'schedule': the schedule}}; got {type(params).__name__}"
                         f"{sorted(params) if isinstance(params, dict) else ''}. Build them with "
                         "sde_jax.train.step.init_params(model, key, example, sde).")
    return params["net"], params["schedule"]


def schedule_of(params: Any, sde: LinearSDE) -> LinearSDE:
    """The SDE trained parameters belong with: ``params["schedule"]`` for a trainable ``sde``, else ``sde``."""
    return split_params(params)[1] if is_trainable(sde) else sde


def trained_score(model_apply: Callable[..., Array], params: Any, sde: LinearSDE, parameterization: str = "eps",
                  y: Array | None = None) -> ScoreModel:
    """The :class:`~sde_jax.ScoreModel` of trained parameters. For a trainable ``sde`` (the configured initial
    schedule) the parameters are ``{"net", "schedule"}``, the model's SDE is the *trained* schedule and its
    network reads the log-SNR (:class:`LogSNRTime`); otherwise this is ``sj.score_fn(model_apply, params, sde,
    parameterization, y)``."""
    if not is_trainable(sde):
        return score_fn(model_apply, params, sde, parameterization, y)
    _, schedule = split_params(params)
    lam0, lam1 = check_schedule(sde)
    return score_fn(LogSNRTime(model_apply, lam0, lam1), params, schedule, parameterization, y)


# ------------------------------------------------------------------------------------------ the three terms
def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def bin_centres(num_bins: int) -> Array:
    """c_k = (2k + 1) / K - 1, k = 0..K-1: the values ``to_model_scale(k, "minus_one_one")`` gives integer data."""
    return (2.0 * jnp.arange(num_bins, dtype=jnp.float32) + 1.0) / num_bins - 1.0


def prior_kl(x0: Array, alpha1: Array, sigma1: Array, prior_std: float = 1.0) -> Array:
    """KL(N(alpha_1 x, sigma_1^2 I) || N(0, tau^2 I)) in nats per example (VDM eq. 13 for tau = 1):

        1/2 sum_d [ (alpha_1^2 x_d^2 + sigma_1^2) / tau^2 - 1 - log(sigma_1^2 / tau^2) ].
    """
    r = sigma1**2 / prior_std**2
    return 0.5 * _sum_except_batch(alpha1**2 * x0**2 / prior_std**2 + r - 1.0 - jnp.log(r))


DECODER_WINDOW = 8  # bins each side of z_0's nearest bin over which the decoder's normaliser is summed exactly


def decoder_nll(x0: Array, z0: Array, alpha0: Array, sigma0: Array, num_bins: int) -> Array:
    """-log p(x | z_0) in nats per example for VDM's discretised decoder (VDM eq. 14, ``EncDec.decode``):

        p(x_d = c_k | z_0) = softmax_k( -1/2 ((z_0,d / alpha_0 - c_k) alpha_0 / sigma_0)^2 ),

    x_d's bin k = floor((x_d + 1) K / 2) (x at the bin centres c_k; other values are read as their bin).

    In bin units u = (z_0 / alpha_0 + 1) K / 2 - 1/2 and s = (sigma_0 / alpha_0) K / 2 the logits are
    -1/2 ((u - k) / s)^2. The normaliser sums exactly over the 2W + 1 bins nearest to u (W = ``DECODER_WINDOW``)
    and adds an upper bound on the bins left out, each >= a = W + 1/2 bins away, on each side that has some

        sum_{j >= 0} exp(-(a + j)^2 / (2 s^2)) <= exp(-a^2 / (2 s^2)) + s sqrt(2 pi) Phi(-a / s).

    For s < a / 7 (gamma_0 < -9.3 with 8-bit data) that bound is below float32 resolution and this is VDM's
    decoder to rounding; for wider decoders it over-counts the normaliser slightly, so -log p stays an upper bound.
    Costs 2W + 1 logits per pixel instead of K.
    """
    half = 0.5 * num_bins
    u = (z0 / alpha0 + 1.0) * half - 0.5
    s = (sigma0 / alpha0) * half
    k = jnp.clip(jnp.floor((x0 + 1.0) * half), 0, num_bins - 1)
    centre = jnp.clip(jnp.round(u), 0, num_bins - 1)
    ks = centre[..., None] + jnp.arange(-DECODER_WINDOW, DECODER_WINDOW + 1, dtype=u.dtype)
    logits = jnp.where((ks >= 0) & (ks < num_bins), -0.5 * ((u[..., None] - ks) / s) ** 2, -jnp.inf)
    a = DECODER_WINDOW + 0.5
    log_side = jnp.logaddexp(-0.5 * (a / s) ** 2,
                             jnp.log(s * math.sqrt(2 * math.pi)) + jax.scipy.special.log_ndtr(-a / s))
    tails = jnp.stack([jnp.where(centre - DECODER_WINDOW > 0, log_side, -jnp.inf),  # bins left out below
                       jnp.where(centre + DECODER_WINDOW < num_bins - 1, log_side, -jnp.inf)], axis=-1)  # above
    log_norm = jax.nn.logsumexp(jnp.concatenate([logits, tails], axis=-1), axis=-1)
    return _sum_except_batch(log_norm + 0.5 * ((u - k) / s) ** 2)


def diffusion_term(eps: Array, eps_hat: Array, dlam: Array, T: float) -> Array:
    """One-sample estimate of the diffusion term in nats per example (VDM eq. 17, t ~ U[0, T]):

        T/2 (-lambda'(t)) || eps - eps_hat(z_t, t) ||^2   (= T/2 gamma'(t) ||eps - eps_hat||^2)."""
    return 0.5 * T * (-dlam) * _sum_except_batch((eps - eps_hat) ** 2)


def elbo_terms(eps_hat_fn: Callable[[Array, ScheduleAt], Array], sv: ScheduleAt, x0: Array, eps0: Array,
               eps: Array, num_bins: int, T: float, prior_std: float = 1.0) -> dict[str, Array]:
    """The three terms of the negative ELBO in bits/dim per example (module docstring), from the schedule values
    ``sv`` at each example's t, the noises eps_0 (decoder) and eps (diffusion), and ``eps_hat_fn(z_t, sv)``."""
    bpd = 1.0 / (math.prod(x0.shape[1:]) * math.log(2.0))
    z0 = sv.alpha0 * x0 + sv.sigma0 * eps0
    zt = batch_broadcast(sv.alpha, x0) * x0 + batch_broadcast(sv.sigma, x0) * eps
    return {"prior": bpd * prior_kl(x0, sv.alpha1, sv.sigma1, prior_std),
            "reconstruction": bpd * decoder_nll(x0, z0, sv.alpha0, sv.sigma0, num_bins),
            "diffusion": bpd * diffusion_term(eps, eps_hat_fn(zt, sv), sv.dlam, T)}


def eps_from_output(out: Array, z: Array, sv: ScheduleAt, parameterization: str) -> Array:
    """eps_hat = -sigma_t s(z_t, t) for a network output in any parameterisation (``sde_jax.score``)."""
    alpha, sigma = batch_broadcast(sv.alpha, z), batch_broadcast(sv.sigma, z)
    return -sigma * output_to_score(out, z, alpha, sigma, parameterization)


# ------------------------------------------------------------------------------------------ time sampling
def draw_times(u: Array, antithetic: bool, group: int) -> Array:
    """u_i in [0, 1) per example -> times in [0, 1) (multiply by T).

    ``antithetic``: low-discrepancy t over consecutive groups of ``group`` examples (VDM's antithetic sampling,
    ``model_vdm.VDM.__call__``, applied per group): t_i = mod(u_{g(i)} + j(i) / group, 1) with g(i) the group's
    first example and j(i) = i mod group. Each t_i is uniform, each group covers [0, 1) with one time per stratum
    of width 1 / group, and t_i depends only on the keys of its own group: a global batch split over n devices
    whose per-device batch is a multiple of ``group`` draws the same times as on one device. Otherwise t_i = u_i.
    """
    b = u.shape[0]
    if not antithetic:
        return u
    if group < 1 or b % group:
        raise ValueError(f"antithetic time sampling stratifies groups of {group} examples, but the batch has {b}: "
                         "use a (per-device) batch that is a multiple of the group size, another group size, or "
                         "antithetic=False.")
    i = jnp.arange(b)
    return jnp.mod(u[(i // group) * group] + (i % group) / group, 1.0)


# ------------------------------------------------------------------------------- the variance gradient
def with_variance_gradient(terms_fn: Callable[[Any, ScheduleAt], dict[str, Array]], net_params: Any,
                           schedule: LinearSDE, t: Array) -> dict[str, Array]:
    """``terms_fn(net_params, schedule_at(schedule, t))`` (per-example terms in bits/dim, ``"diffusion"`` among
    them), with VDM's gradient for a learned schedule (Sec. 5.2, App. I.2):

    * network parameters and the schedule's end points (``gamma_min``, ``gamma_max``): the gradient of the
      terms as they are (the ELBO);
    * every other schedule leaf (the shape eta): the per-example cotangent of L_diff scaled by 2 L_diff, i.e.
      d/d eta of the batch mean of L_diff^2 when the caller takes the batch mean of the terms, the gradient of
      the estimator's variance since E[L_diff] does not depend on eta.

    Cost: one forward and one backward pass through the network, plus two pullbacks through the schedule
    (a few numbers per example). The schedule enters the terms only through ``ScheduleAt``; the per-example
    cotangents of lambda(t), lambda'(t), alpha(t), sigma(t) come from L_diff alone (prior and reconstruction read
    the schedule at 0 and T only, which depend on the end points alone).
    """
    missing = [f for f in ENDPOINTS if not hasattr(schedule, f)]
    if missing:
        raise ValueError(f"the variance-minimising gradient needs a schedule with end-point leaves {ENDPOINTS} "
                         f"(sj.LearnedVDMSDE); {type(schedule).__name__} has no {missing}.")

    # closed-over arrays (data, noise, labels, dropout keys) become explicit inputs: a custom_vjp must not close
    # over values traced by an enclosing jit
    fn, consts = jax.closure_convert(terms_fn, net_params, schedule_at(schedule, t))

    @jax.custom_vjp
    def terms(net_params, schedule, t, consts):
        return fn(net_params, schedule_at(schedule, t), *consts)

    def fwd(net_params, schedule, t, consts):
        sv, schedule_pullback = jax.vjp(lambda s: schedule_at(s, t), schedule)
        out, terms_pullback = jax.vjp(lambda p, v: fn(p, v, *consts), net_params, sv)
        return out, (schedule_pullback, terms_pullback, out["diffusion"], t, consts)

    def bwd(res, cot):
        schedule_pullback, terms_pullback, l_diff, t, consts = res
        net_bar, sv_bar = terms_pullback(cot)
        (elbo_bar,) = schedule_pullback(sv_bar)
        scale = 2.0 * l_diff
        zero = jnp.zeros_like
        var_sv = ScheduleAt(sv_bar.lam * scale, sv_bar.dlam * scale, sv_bar.alpha * scale, sv_bar.sigma * scale,
                            zero(sv_bar.alpha0), zero(sv_bar.sigma0), zero(sv_bar.alpha1), zero(sv_bar.sigma1))
        (var_bar,) = schedule_pullback(var_sv)
        ends = lambda s: tuple(getattr(s, f) for f in ENDPOINTS)
        return net_bar, eqx.tree_at(ends, var_bar, ends(elbo_bar)), zero(t), jax.tree.map(_zero_cotangent, consts)

    terms.defvjp(fwd, bwd)
    return terms(net_params, schedule, t, tuple(consts))


def _zero_cotangent(x: Array) -> Array:
    """The zero cotangent of an input: float0 for integers and keys."""
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


# ------------------------------------------------------------------------------------------ evaluation
@eqx.filter_jit
def _terms_below(score: Callable[[Array, Array], Array], sde: LinearSDE, x0: Array, keys: Array, t_max: Array, *,
                 n_t: int, num_bins: int) -> dict[str, Array]:
    """Per-example terms with the diffusion term over [0, t_max] only, averaged over n_t stratified times
    t_j = (j + u) / n_t t_max (and n_t decoder noises); the prior KL is the one at T."""

    def one(j):
        def per_example(k):
            ku, k0, ke = jax.random.split(jax.random.fold_in(k, j), 3)
            return (jax.random.uniform(ku, ()), jax.random.normal(k0, x0.shape[1:], x0.dtype),
                    jax.random.normal(ke, x0.shape[1:], x0.dtype))

        u, eps0, eps = jax.vmap(per_example)(keys)
        t = (j + u) / n_t * t_max
        sv = schedule_at(sde, t)
        eps_hat = lambda z, v: -batch_broadcast(v.sigma, z) * score(z, t)
        return elbo_terms(eps_hat, sv, x0, eps0, eps, num_bins, t_max, sde.prior_std)

    terms = jax.lax.map(one, jnp.arange(n_t))
    out = {name: jnp.mean(v, axis=0) for name, v in terms.items()}
    out["diffusion_std"] = jnp.std(terms["diffusion"], axis=0, ddof=1) if n_t > 1 else jnp.zeros_like(out["prior"])
    return out


def _check_integer_data(x: Array | np.ndarray, num_bins: int) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer) or x.ndim < 2:
        raise ValueError(f"x must be integer data of shape (N, *data_shape); got {x.dtype} of shape {x.shape}.")
    if x.size and (x.min() < 0 or x.max() >= num_bins):
        raise ValueError(f"x must lie in {{0, ..., {num_bins - 1}}}; got values in [{x.min()}, {x.max()}].")
    return x


def _per_example_batches(fn: Callable[[Array, Array], dict[str, Array]], x: np.ndarray, key: Array, *,
                         num_bins: int, batch_size: int, progress: bool, desc: str) -> dict[str, np.ndarray]:
    """``fn(x0, keys)`` over batches of ``batch_size`` (one key per example, so examples are independent of the
    batching; the last batch padded by repeating its last row: one compiled shape), concatenated."""
    n = x.shape[0]
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(n))
    parts = []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch")
    for s in starts:
        xb = x[s:s + batch_size]
        pad = batch_size - len(xb)
        xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)]) if pad else xb
        kb = keys[s:s + batch_size]
        kb = jnp.concatenate([kb, jnp.repeat(kb[-1:], pad, 0)]) if pad else kb
        out = fn(jnp.asarray(to_model_scale(xb, "minus_one_one", num_bins)), kb)
        parts.append({k: np.asarray(v)[:batch_size - pad] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _model_sde(score: Callable[[Array, Array], Array], sde: LinearSDE | None, name: str) -> LinearSDE:
    sde = getattr(score, "sde", None) if sde is None else sde
    if sde is None:
        raise ValueError(f"{name} needs the SDE: pass a ScoreModel or sde=...")
    check_schedule(sde)
    return sde


def vdm_elbo_bpd(score: Callable[[Array, Array], Array], x: Array | np.ndarray, key: Array, *,
                 sde: LinearSDE | None = None, num_bins: int = 256, n_t: int = 4, batch_size: int = 250,
                 progress: bool = False) -> dict[str, np.ndarray]:
    """VDM's negative ELBO of integer data ``x`` (values in {0, ..., num_bins - 1}, shape (N, *data_shape)) in
    bits/dim per example: an upper bound on -log2 P(x) / D of the discrete data (no dequantisation).

    ``score``: a :class:`~sde_jax.ScoreModel` (its ``sde`` is used, e.g. a learned schedule: build it with
    :func:`trained_score`) or a plain ``score(x, t)`` with ``sde``. The data go in as bin centres
    (``to_model_scale(x, "minus_one_one")``). Each example gets ``n_t`` stratified times of its own (and as many
    decoder noises), so examples are independent and their spread gives an honest standard error of a data-set
    mean. Batches of ``batch_size``, compiled once (a ScoreModel is an argument, not a constant).

    Returns numpy arrays of shape (N,): ``bpd`` (the sum), ``prior``, ``reconstruction``, ``diffusion`` and
    ``diffusion_std`` (the spread of the n_t one-time estimates of the diffusion term).
    """
    sde = _model_sde(score, sde, "vdm_elbo_bpd")
    x = _check_integer_data(x, num_bins)
    if n_t < 1 or batch_size < 1:
        raise ValueError(f"n_t and batch_size must be >= 1; got n_t={n_t}, batch_size={batch_size}.")
    fn = lambda x0, kb: _terms_below(score, sde, x0, kb, jnp.asarray(sde.T, x0.dtype), n_t=n_t, num_bins=num_bins)
    out = _per_example_batches(fn, x, key, num_bins=num_bins, batch_size=batch_size, progress=progress,
                               desc="VDM ELBO")
    out["bpd"] = out["prior"] + out["reconstruction"] + out["diffusion"]
    return out


def pf_ode_bpd(score: Callable[[Array, Array], Array], x: Array | np.ndarray, key: Array, *,
               t_split: float = 1e-5, sde: LinearSDE | None = None, num_bins: int = 256, n_t: int = 4,
               batch_size: int = 100, progress: bool = False, **solve: Any) -> dict[str, np.ndarray]:
    """Bits/dim bound of integer data ``x`` under the model whose top is the probability-flow ODE: z_s ~ p_ode at
    s = ``t_split`` (the PF-ODE density of ``sj.log_likelihood`` from s to T), then VDM's reverse diffusion from s
    to 0 and its discretised decoder. With the forward kernel q(z_s | x) = N(alpha_s x, sigma_s^2 I) as the
    variational posterior (VDM's derivation with the prior at s replaced by p_ode),

        -log P(x) <= E[-log p(x | z_0)] + s/2 E_{t ~ U[0, s]} [gamma'(t) ||eps - eps_hat(z_t, t)||^2]
                     + E_{z_s ~ q}[ log q(z_s | x) - log p_ode(z_s) ].

    At s -> 0 the middle term vanishes and this is the kernel-dequantised PF-ODE bound (the PF-ODE's own number
    for discrete data: a uniform dequantiser pays for the Gaussian bumps at the bin centres, see
    ``benchmarks.mnist_nll``); with p_ode replaced by the diffusion model above s it is the ELBO, term for term,
    so comparing the last term with the ELBO's ``prior + diffusion over [s, T]`` tells where the ODE gains or
    loses. One z_s and one Hutchinson probe per example; log q at the sampled z_s (for a good model log p_ode
    follows log q over z_s, so the difference has less spread than either).

    ``solve``: keyword arguments of ``sj.log_likelihood`` (divergence, rtol, atol, solver, max_steps, ...).
    Returns numpy arrays of shape (N,): ``bpd``, ``reconstruction``, ``diffusion`` (over [0, s]), ``ode``
    (the last term), ``nfe`` (per batch solve, repeated per example).
    """
    from sde_jax.likelihood import check_eps, log_likelihood

    sde = _model_sde(score, sde, "pf_ode_bpd")
    x = _check_integer_data(x, num_bins)
    t_split = check_eps(t_split, sde)
    if n_t < 1 or batch_size < 1:
        raise ValueError(f"n_t and batch_size must be >= 1; got n_t={n_t}, batch_size={batch_size}.")
    bpd = 1.0 / (math.prod(x.shape[1:]) * math.log(2.0))

    def fn(x0, kb):
        below = _terms_below(score, sde, x0, kb, jnp.asarray(t_split, x0.dtype), n_t=n_t, num_bins=num_bins)
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, n_t), x0.shape[1:], x0.dtype))(kb)
        k_ode = jax.random.fold_in(kb[0], n_t + 1)  # the batch's Hutchinson probes
        alpha, sigma = sde.alpha_sigma(jnp.asarray(t_split, x0.dtype))
        logp, info = log_likelihood(score, sde, alpha * x0 + sigma * noise, k_ode, eps=t_split, **solve)
        log_q = -0.5 * math.prod(x0.shape[1:]) * jnp.log(2 * math.pi * sigma**2) - 0.5 * _sum_except_batch(noise**2)
        return {"reconstruction": below["reconstruction"], "diffusion": below["diffusion"],
                "ode": bpd * (log_q - logp), "nfe": jnp.broadcast_to(info["nfe"], logp.shape)}

    out = _per_example_batches(fn, x, key, num_bins=num_bins, batch_size=batch_size, progress=progress,
                               desc="PF-ODE bound")
    out["bpd"] = out["reconstruction"] + out["diffusion"] + out["ode"]
    return out
