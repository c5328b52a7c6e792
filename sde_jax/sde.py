"""The noise-process interface: a linear SDE is its schedule (Song et al., ICLR 2021, Sec. 3.4 and App. B;
Kingma et al., VDM 2021, for the log-SNR view).

A linear SDE dx = f(t) x dt + g(t) dw has the Gaussian transition kernel

    p_0t(x_t | x_0) = N(x_t; alpha(t) x_0, sigma(t)^2 I),

and everything else follows from the schedule (alpha, sigma):

    lambda(t) = log(alpha(t)^2 / sigma(t)^2)           the log signal-to-noise ratio, decreasing in t
    f(t)      = d log alpha / dt                        the drift coefficient, f(x, t) = f(t) x
    g(t)^2    = d sigma^2 / dt - 2 f(t) sigma^2 = -sigma^2 d lambda / dt      the squared diffusion

:class:`LinearSDE` implements all methods from :meth:`LinearSDE.alpha_sigma` alone (derivatives by forward-mode
autodiff, the inverse of lambda by bisection); a subclass states its schedule and overrides a method only where a
closed form is more accurate (VP, sub-VP and VE give f, g and the inverse log-SNR in closed form, and their
classical discrete chains, DDPM and SMLD). A schedule with trainable parameters (VDM) is the same kind of object
with array leaves: SDEs are ``equinox.Module`` pytrees, so they pass through ``jax.jit``, ``vmap`` and ``grad``.

Time arguments ``t`` are scalars or arrays of shape ``(B,)`` for a batch ``x`` of shape ``(B, *data_shape)``.
Convention for the VE SDE (as in score_sde): ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, so the state at
t = 0 is the data perturbed by N(0, sigma_min^2 I); every exact quantity in this package uses it.
"""

from __future__ import annotations

import abc
import math
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["LinearSDE", "VPSDE", "SubVPSDE", "VESDE", "VDMSDE", "LearnedVDMSDE", "SDE", "get_sde", "probability_flow_drift", "reverse_drift"]


# ----------------------------------------------------------------------------------------- helpers
def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_time(t, T: float, name: str = "t") -> Array:
    """Return ``t`` as an array; raise ``ValueError`` if a concrete ``t`` leaves [0, T] or is not finite."""
    t = jnp.asarray(t)
    if t.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (B,); got shape {t.shape}.")
    if _is_concrete(t) and _is_concrete(T) and t.size:
        tn = np.asarray(t, dtype=np.float64)
        if not np.all(np.isfinite(tn)):
            raise ValueError(f"{name} contains NaN or Inf; times must be finite values in [0, T={T}].")
        if tn.min() < 0.0 or tn.max() > T * (1 + 1e-6):
            raise ValueError(
                f"{name} must lie in [0, T={T}]; got values in [{tn.min():.6g}, {tn.max():.6g}]. "
                "Clip or rescale the times you pass."
            )
    return t


def check_batch(x: Array, t: Array) -> None:
    """Raise ``ValueError`` if a batched ``t`` of shape (B,) does not match ``x.shape[0]``."""
    if t.ndim == 1 and (jnp.ndim(x) == 0 or jnp.shape(x)[0] != t.shape[0]):
        raise ValueError(
            f"t has shape {t.shape} but x has shape {jnp.shape(x)}: pass one time per example "
            "(t.shape == (x.shape[0],)) or a scalar t."
        )


def batch_broadcast(c: Array, x: Array) -> Array:
    """Reshape a per-example coefficient of shape () or (B,) so that it broadcasts against x (B, ...)."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (jnp.ndim(x) - c.ndim))


def _sum_except_batch(x: Array) -> Array:
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _float(t) -> Array:
    return jnp.asarray(t, jnp.result_type(float))


# ---------------------------------------------------------------------------------- the interface
class LinearSDE(eqx.Module):
    """dx = f(t) x dt + g(t) dw, defined by its schedule ``alpha_sigma(t) -> (alpha(t), sigma(t))``.

    Class-level defaults a subclass may override (as fields or attributes): ``T = 1`` (time horizon), ``eps``
    (default lower time limit for sampling), ``N`` (levels of the discrete chain), ``prior_std`` (p_T =
    N(0, prior_std^2 I)) and ``corrector_snr`` (the Langevin corrector's default signal-to-noise ratio,
    score_sde's 0.01 for VP-like SDEs and 0.16 for VE).
    """

    T = 1.0
    eps = 1e-3
    N = 1000
    prior_std = 1.0
    corrector_snr = 0.01

    def __check_init__(self):
        if _is_concrete(self.T) and not (self.T > 0 and math.isfinite(self.T)):
            raise ValueError(f"T must be a positive finite time; got {self.T}.")
        if not 0 < self.eps < self.T:
            raise ValueError(f"eps must lie in (0, T={self.T}); got {self.eps}.")
        if int(self.N) != self.N or self.N < 2:
            raise ValueError(f"N (number of discretisation steps) must be an integer >= 2; got {self.N}.")

    # ---- the schedule
    @abc.abstractmethod
    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha(t) and sigma(t) of p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I), elementwise in t."""

    def log_snr(self, t) -> Array:
        """lambda(t) = log(alpha(t)^2 / sigma(t)^2), strictly decreasing in t."""
        alpha, sigma = self.alpha_sigma(_float(t))
        return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

    def t_from_log_snr(self, lam) -> Array:
        """The inverse of :meth:`log_snr` on [0, T]: bisection (64 halvings), elementwise."""
        lam = _float(lam)
        lo, hi = jnp.zeros_like(lam), jnp.full_like(lam, self.T)

        def body(_, bounds):
            a, b = bounds
            mid = 0.5 * (a + b)
            later = self.log_snr(mid) > lam  # lambda decreases: the root lies after mid
            return jnp.where(later, mid, a), jnp.where(later, b, mid)

        lo, hi = jax.lax.fori_loop(0, 64, body, (lo, hi))
        return 0.5 * (lo + hi)

    def _derivatives(self, t) -> tuple[Array, Array]:
        """(d log alpha / dt, d lambda / dt) by forward-mode autodiff of the schedule."""
        t = _float(t)
        log_alpha = lambda s: jnp.log(self.alpha_sigma(s)[0])
        _, dlog_alpha = jax.jvp(log_alpha, (t,), (jnp.ones_like(t),))
        _, dlam = jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))
        return dlog_alpha, dlam

    def drift_coef(self, t) -> Array:
        """f(t) = d log alpha(t) / dt."""
        return self._derivatives(t)[0]

    def diffusion(self, t) -> Array:
        """g(t) = sqrt(-sigma(t)^2 d lambda / dt) (equivalently d sigma^2 / dt - 2 f sigma^2)."""
        t = check_time(t, self.T)
        sigma = self.alpha_sigma(_float(t))[1]
        return jnp.sqrt(-(sigma**2) * self._derivatives(t)[1])

    # ---- the forward process
    def drift(self, x: Array, t) -> Array:
        """f(x, t) = f(t) x, the drift of dx = f(x, t) dt + g(t) dw."""
        t = check_time(t, self.T)
        check_batch(x, t)
        return batch_broadcast(self.drift_coef(t), x) * x

    def marginal(self, x0: Array, t) -> tuple[Array, Array]:
        """Mean alpha(t) x_0 (shaped like x0) and std sigma(t) (shaped like t) of p_0t(x_t | x_0)."""
        t = check_time(t, self.T)
        check_batch(x0, t)
        alpha, sigma = self.alpha_sigma(_float(t))
        return batch_broadcast(alpha, x0) * x0, sigma

    def marginal_sample(self, key: Array, x0: Array, t, noise: Array | None = None) -> Array:
        """x_t = alpha(t) x_0 + sigma(t) z, with z ~ N(0, I) from ``key`` or the given ``noise``."""
        mean, std = self.marginal(x0, t)
        if noise is None:
            noise = jax.random.normal(key, jnp.shape(x0), dtype=jnp.result_type(x0, jnp.float32))
        return mean + batch_broadcast(std, x0) * noise

    def transition(self, t_from, t_to) -> tuple[Array, Array]:
        """(a, std) of p(x_{t_to} | x_{t_from}) = N(a x_{t_from}, std^2 I) for t_to >= t_from:

            a = alpha(t_to) / alpha(t_from),   std^2 = sigma(t_to)^2 - a^2 sigma(t_from)^2.
        """
        a_f, s_f = self.alpha_sigma(_float(t_from))
        a_t, s_t = self.alpha_sigma(_float(t_to))
        a = a_t / a_f
        return a, jnp.sqrt(jnp.maximum(s_t**2 - a**2 * s_f**2, 0.0))

    # ---- the prior p_T
    def prior_sample(self, key: Array, shape) -> Array:
        """z ~ p_T = N(0, prior_std^2 I)."""
        return self.prior_std * jax.random.normal(key, tuple(shape))

    def prior_logp(self, z: Array) -> Array:
        """log p_T(z) = log N(z; 0, prior_std^2 I), summed over all but the batch axis: shape (B,)."""
        if jnp.ndim(z) < 1:
            raise ValueError(f"prior_logp expects a batch (B, *data_shape); got shape {jnp.shape(z)}.")
        z = jnp.asarray(z)
        d = math.prod(z.shape[1:])
        std = self.prior_std
        return -0.5 * d * jnp.log(2 * math.pi * std**2) - 0.5 * _sum_except_batch(z**2) / std**2

    # ---- time sampling for the losses and bounds
    def likelihood_time(self, u: Array, eps: float) -> tuple[Array, Array]:
        """t ~ p(t) proportional to g(t)^2 / sigma(t)^2 on [eps, T], from uniform u in [0, 1), and its normaliser Z.

        g^2 / sigma^2 = -d lambda / dt, so p is uniform in lambda: lambda = lambda(eps) + u (lambda(T) - lambda(eps)),
        t = lambda^{-1}(lambda), Z = lambda(eps) - lambda(T). Then int_eps^T g^2 h dt = Z E_p[sigma(t)^2 h(t)]
        (importance sampling of Song, Durkan, Murray & Ermon 2021, Sec. 5; VDM's uniform-in-log-SNR view).
        """
        l_hi, l_lo = self.log_snr(_float(eps)), self.log_snr(_float(self.T))
        t = self.t_from_log_snr(l_hi + u * (l_lo - l_hi))
        return jnp.clip(t, eps, self.T), l_hi - l_lo

    # ---- the discrete chain (DDPM for VP, SMLD for VE; the sampled schedule otherwise)
    def discrete_time(self, i) -> Array:
        """t_i = i T / (N - 1), the continuous time of discrete level i."""
        return jnp.asarray(i, jnp.float32) * self.T / (self.N - 1)

    def discrete_index(self, t) -> Array:
        """Level i = floor(t (N - 1) / T) that time t stands for (inverse of :meth:`discrete_time`)."""
        return (check_time(t, self.T) * (self.N - 1) / self.T).astype(jnp.int32)

    def discrete_alpha_sigma(self, i) -> tuple[Array, Array]:
        """(alpha_i, sigma_i) of level i of the discrete chain, x_i = alpha_i x_0 + sigma_i z. Level -1 is the
        data (1, 0). Default: the continuous schedule at t_i; VP and VE override it with DDPM and SMLD."""
        i = jnp.asarray(i)
        alpha, sigma = self.alpha_sigma(self.discrete_time(jnp.maximum(i, 0)))
        return jnp.where(i < 0, 1.0, alpha), jnp.where(i < 0, 0.0, sigma)

    def discretize(self, x: Array, t) -> tuple[Array, Array]:
        """The forward chain x_i = a_i x_{i-1} + G_i z at level i = discrete_index(t), written as x + f + G z:

            a_i = alpha_i / alpha_{i-1},   G_i^2 = sigma_i^2 - a_i^2 sigma_{i-1}^2,   f = (a_i - 1) x.

        DDPM (VP): a_i = sqrt(1 - beta_i), G_i^2 = beta_i. SMLD (VE): a_i = 1, G_i^2 = sigma_i^2 - sigma_{i-1}^2.
        """
        t = check_time(t, self.T)
        check_batch(x, t)
        i = self.discrete_index(t)
        a_i, s_i = self.discrete_alpha_sigma(i)
        a_p, s_p = self.discrete_alpha_sigma(i - 1)
        a = a_i / a_p
        return (batch_broadcast(a, x) - 1.0) * x, jnp.sqrt(jnp.maximum(s_i**2 - a**2 * s_p**2, 0.0))


SDE = LinearSDE


# ---------------------------------------------------------------------------------------------- VP
class VPSDE(LinearSDE):
    """Variance-preserving SDE, the continuum limit of DDPM (Ho et al. 2020; Song et al. 2021, eq. 11).

        dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min)

    alpha(t) = exp(-B(t)/2), sigma(t)^2 = 1 - exp(-B(t)), B(t) = beta_min t + 1/2 (beta_max - beta_min) t^2.
    Prior N(0, I). Discrete chain: DDPM's betas linspace(beta_min / N, beta_max / N, N).
    """

    beta_min: float = eqx.field(default=0.1, static=True)
    beta_max: float = eqx.field(default=20.0, static=True)
    N: int = eqx.field(default=1000, static=True)
    T: float = eqx.field(default=1.0, static=True)
    eps: float = eqx.field(default=1e-3, static=True)

    def __check_init__(self):
        if not (self.beta_min > 0 and self.beta_max > 0):
            raise ValueError(f"beta_min and beta_max must be > 0; got {self.beta_min}, {self.beta_max}.")
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"beta_min={self.beta_min} > beta_max={self.beta_max}: beta(t) must increase; swap them."
            )

    def beta(self, t) -> Array:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t) -> Array:
        """B(t) = int_0^t beta(s) ds = beta_min t + 1/2 (beta_max - beta_min) t^2."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _t_from_integrated_beta(self, b: Array) -> Array:
        """The root t >= 0 of B(t) = b: t = 2 b / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) b))."""
        return 2.0 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * (self.beta_max - self.beta_min) * b))

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha(t) = exp(-B(t)/2), sigma(t) = sqrt(1 - exp(-B(t)))."""
        b = self.integrated_beta(_float(t))
        return jnp.exp(-0.5 * b), jnp.sqrt(-jnp.expm1(-b))

    def log_snr(self, t) -> Array:
        """lambda(t) = -log(exp(B(t)) - 1)."""
        return -jnp.log(jnp.expm1(self.integrated_beta(_float(t))))

    def t_from_log_snr(self, lam) -> Array:
        """B = log(1 + exp(-lambda)), then t from the quadratic B(t) = B."""
        return self._t_from_integrated_beta(jax.nn.softplus(-_float(lam)))

    def drift_coef(self, t) -> Array:
        """f(t) = -1/2 beta(t)."""
        return -0.5 * self.beta(_float(t))

    def diffusion(self, t) -> Array:
        """g(t) = sqrt(beta(t))."""
        return jnp.sqrt(self.beta(_float(check_time(t, self.T))))

    @property
    def discrete_betas(self) -> Array:
        """DDPM's betas: beta_i = linspace(beta_min / N, beta_max / N, N)."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def discrete_alphas_cumprod(self) -> Array:
        """DDPM's alpha-bar_i = prod_{j <= i} (1 - beta_j)."""
        return jnp.cumprod(1.0 - self.discrete_betas)

    def discrete_alpha_sigma(self, i) -> tuple[Array, Array]:
        """DDPM's levels: alpha_i = sqrt(alpha-bar_i), sigma_i = sqrt(1 - alpha-bar_i); level -1 is the data."""
        i = jnp.asarray(i)
        abar = jnp.where(i < 0, 1.0, self.discrete_alphas_cumprod[jnp.maximum(i, 0)])
        return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 12), whose variance is bounded by the VP SDE's.

        dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw

    alpha(t) = exp(-B(t)/2), sigma(t) = 1 - exp(-B(t)). Prior N(0, I). It has no classical discrete chain: its
    levels are the schedule at t_i (:meth:`LinearSDE.discrete_alpha_sigma`).
    """

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha(t) = exp(-B(t)/2), sigma(t) = 1 - exp(-B(t))."""
        b = self.integrated_beta(_float(t))
        return jnp.exp(-0.5 * b), -jnp.expm1(-b)

    def log_snr(self, t) -> Array:
        """lambda(t) = -B(t) - 2 log(1 - exp(-B(t)))."""
        b = self.integrated_beta(_float(t))
        return -b - 2.0 * jnp.log(-jnp.expm1(-b))

    def t_from_log_snr(self, lam) -> Array:
        """With r = exp(lambda / 2) = alpha / sigma and alpha^2 = 1 - sigma: r^2 sigma^2 + sigma - 1 = 0, so
        sigma = 2 / (1 + sqrt(1 + 4 r^2)) and B = -log(1 - sigma) = -2 log(r sigma) (each where it is precise);
        then t from the quadratic B(t) = B."""
        lam = _float(lam)
        log_sigma = math.log(2.0) - jnp.log1p(jnp.sqrt(1.0 + 4.0 * jnp.exp(lam)))
        b = jnp.where(lam > 0, -jnp.log1p(-jnp.exp(log_sigma)), -2.0 * (0.5 * lam + log_sigma))
        return self._t_from_integrated_beta(b)

    def diffusion(self, t) -> Array:
        """g(t) = sqrt(beta(t) (1 - exp(-2 B(t))))."""
        t = _float(check_time(t, self.T))
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2.0 * self.integrated_beta(t)))

    discrete_alpha_sigma = LinearSDE.discrete_alpha_sigma


# ---------------------------------------------------------------------------------------------- VE
class VESDE(LinearSDE):
    """Variance-exploding SDE, the continuum limit of SMLD/NCSN (Song et al. 2021, eq. 9).

        dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw,   sigma(t) = sigma_min (sigma_max / sigma_min)^t

    alpha(t) = 1 (see the module docstring for the t = 0 convention). Prior N(0, sigma_max^2 I). Discrete chain:
    SMLD's noise levels exp(linspace(log sigma_min, log sigma_max, N)).
    """

    sigma_min: float = eqx.field(default=0.01, static=True)
    sigma_max: float = eqx.field(default=50.0, static=True)
    N: int = eqx.field(default=1000, static=True)
    T: float = eqx.field(default=1.0, static=True)
    eps: float = eqx.field(default=1e-5, static=True)
    corrector_snr = 0.16

    def __check_init__(self):
        if not self.sigma_min > 0:
            raise ValueError(f"sigma_min must be > 0; got {self.sigma_min}.")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"sigma_max={self.sigma_max} must exceed sigma_min={self.sigma_min}; choose sigma_max "
                "of the order of the largest pairwise distance in the data."
            )

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t) -> Array:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _float(t)

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha(t) = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        s = self.sigma(t)
        return jnp.ones_like(s), s

    def log_snr(self, t) -> Array:
        """lambda(t) = -2 log sigma(t) = -2 (log sigma_min + t log(sigma_max / sigma_min))."""
        return -2.0 * (math.log(self.sigma_min) + _float(t) * math.log(self.sigma_max / self.sigma_min))

    def t_from_log_snr(self, lam) -> Array:
        """t = (-lambda / 2 - log sigma_min) / log(sigma_max / sigma_min)."""
        return (-0.5 * _float(lam) - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def drift_coef(self, t) -> Array:
        """f(t) = 0."""
        return jnp.zeros_like(_float(t))

    def diffusion(self, t) -> Array:
        """g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))."""
        return self.sigma(check_time(t, self.T)) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    @property
    def discrete_sigmas(self) -> Array:
        """SMLD's noise levels: sigma_i = exp(linspace(log sigma_min, log sigma_max, N)), increasing."""
        return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def discrete_alpha_sigma(self, i) -> tuple[Array, Array]:
        """SMLD's levels: alpha_i = 1, sigma_i; level -1 is the data (sigma = 0)."""
        i = jnp.asarray(i)
        sigma = jnp.where(i < 0, 0.0, self.discrete_sigmas[jnp.maximum(i, 0)])
        return jnp.ones_like(sigma), sigma


# ------------------------------------------------------------------------------------------ VDM
class VDMSDE(LinearSDE):
    """Variance-preserving SDE given by its log-SNR, VDM's gamma(t) = -lambda(t) (Kingma et al. 2021, Sec. 3):

        alpha(t)^2 = sigmoid(-gamma(t)),   sigma(t)^2 = sigmoid(gamma(t)),   gamma(t) = gamma_min + t (gamma_max - gamma_min).

    This is the fixed linear schedule; :class:`LearnedVDMSDE` learns gamma. Prior N(0, I).
    """

    gamma_min: float = eqx.field(default=-13.3, static=True)
    gamma_max: float = eqx.field(default=5.0, static=True)
    N: int = eqx.field(default=1000, static=True)
    T: float = eqx.field(default=1.0, static=True)
    eps: float = eqx.field(default=1e-3, static=True)

    def __check_init__(self):
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"gamma_min={self.gamma_min} must be < gamma_max={self.gamma_max} (gamma increases).")

    def gamma(self, t) -> Array:
        """gamma(t) = -lambda(t)."""
        return self.gamma_min + _float(t) * (self.gamma_max - self.gamma_min)

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha = sqrt(sigmoid(-gamma)), sigma = sqrt(sigmoid(gamma))."""
        g = self.gamma(t)
        return jnp.sqrt(jax.nn.sigmoid(-g)), jnp.sqrt(jax.nn.sigmoid(g))

    def log_snr(self, t) -> Array:
        """lambda(t) = -gamma(t)."""
        return -self.gamma(t)

    def t_from_log_snr(self, lam) -> Array:
        """t = (-lambda - gamma_min) / (gamma_max - gamma_min)."""
        return (-_float(lam) - self.gamma_min) / (self.gamma_max - self.gamma_min)

    def _gamma_and_rate(self, t) -> tuple[Array, Array]:
        t = _float(t)
        return jax.jvp(self.gamma, (t,), (jnp.ones_like(t),))

    def drift_coef(self, t) -> Array:
        """f(t) = d log alpha / dt = -1/2 gamma'(t) sigmoid(gamma(t))."""
        g, dg = self._gamma_and_rate(t)
        return -0.5 * dg * jax.nn.sigmoid(g)

    def diffusion(self, t) -> Array:
        """g(t)^2 = -sigma^2 d lambda / dt = gamma'(t) sigmoid(gamma(t))."""
        g, dg = self._gamma_and_rate(check_time(t, self.T))
        return jnp.sqrt(dg * jax.nn.sigmoid(g))


class LearnedVDMSDE(LinearSDE):
    """VDM's learned noise schedule (Kingma et al. 2021, App. H): a monotone network gamma~ rescaled to learnable
    endpoints,

        gamma(t) = gamma_min + (gamma_max - gamma_min) (gamma~(t) - gamma~(0)) / (gamma~(1) - gamma~(0)),
        gamma~(t) = l1(t) + l3(sigmoid(l2(l1(t)))),

    with l1 (1 -> 1), l2 (1 -> ``width``) and l3 (``width`` -> 1) linear layers whose weights are kept positive
    (softplus), so gamma increases in t. Every field is a leaf: the schedule trains with the model (jax.grad through
    the SDE), and alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma) as in :class:`VDMSDE`. ``t_from_log_snr`` is
    the interface's bisection. T = 1.
    """

    gamma_min: Array
    gamma_max: Array
    w1: Array
    b1: Array
    w2: Array
    b2: Array
    w3: Array
    eps: float = eqx.field(default=1e-3, static=True)

    @staticmethod
    def init(key: Array, gamma_min: float = -13.3, gamma_max: float = 5.0, width: int = 1024) -> "LearnedVDMSDE":
        """A schedule that starts close to linear between ``gamma_min`` and ``gamma_max``."""
        if not gamma_min < gamma_max:
            raise ValueError(f"gamma_min={gamma_min} must be < gamma_max={gamma_max} (gamma increases).")
        k2, k3 = jax.random.split(key)
        return LearnedVDMSDE(
            gamma_min=jnp.asarray(gamma_min, jnp.float32), gamma_max=jnp.asarray(gamma_max, jnp.float32),
            w1=jnp.asarray(1.0, jnp.float32), b1=jnp.asarray(0.0, jnp.float32),
            w2=0.1 * jax.random.normal(k2, (width,)) - 1.0, b2=jnp.zeros((width,)),
            w3=0.1 * jax.random.normal(k3, (width,)) - 5.0,
        )

    def _gamma_tilde(self, t: Array) -> Array:
        sp = jax.nn.softplus
        h = sp(self.w1) * t + self.b1
        return h + jnp.sum(jax.nn.sigmoid(h[..., None] * sp(self.w2) + self.b2) * sp(self.w3), axis=-1) / self.w2.size

    def gamma(self, t) -> Array:
        """gamma(t), increasing from gamma_min at t = 0 to gamma_max at t = 1."""
        t = _float(t)
        g0, g1 = self._gamma_tilde(jnp.zeros(())), self._gamma_tilde(jnp.ones(()))
        return self.gamma_min + (self.gamma_max - self.gamma_min) * (self._gamma_tilde(t) - g0) / (g1 - g0)

    alpha_sigma = VDMSDE.alpha_sigma
    log_snr = VDMSDE.log_snr
    _gamma_and_rate = VDMSDE._gamma_and_rate
    drift_coef = VDMSDE.drift_coef
    diffusion = VDMSDE.diffusion


_SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "vdm": VDMSDE}


def get_sde(name: str, **kwargs) -> LinearSDE:
    """Build an SDE from its config name: ``"vp"``, ``"subvp"``, ``"ve"`` or ``"vdm"`` (the fixed linear log-SNR)."""
    if name not in _SDES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(_SDES)}.")
    return _SDES[name](**kwargs)


# ------------------------------------------------------------------------- drifts given a score
def reverse_drift(sde: LinearSDE, score: ScoreFn, x: Array, t: Array) -> Array:
    """Drift of the reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6): f(x, t) - g(t)^2 s(x, t)."""
    g = sde.diffusion(t)
    return sde.drift(x, t) - batch_broadcast(g**2, x) * score(x, t)


def probability_flow_drift(sde: LinearSDE, score: ScoreFn, x: Array, t: Array) -> Array:
    """Probability-flow ODE (Song et al. 2021, eq. 13): dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)."""
    g = sde.diffusion(t)
    return sde.drift(x, t) - 0.5 * batch_broadcast(g**2, x) * score(x, t)
