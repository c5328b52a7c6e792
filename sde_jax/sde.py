"""Linear SDEs dx = f(t) x dt + g(t) dw (Song et al., ICLR 2021, Sec. 3.4 and App. B).

Each SDE is a frozen dataclass registered as a pytree with only static fields, so it can be passed
to (or closed over by) ``jax.jit``, ``vmap`` and ``pmap`` without wrappers. Every method is pure.

All three SDEs are linear, so the transition kernel is Gaussian and has a closed form,

    p_0t(x_t | x_0) = N(x_t; alpha(t) x_0, sigma(t)^2 I),

given by :meth:`alpha_sigma`. Time arguments ``t`` are scalars or arrays of shape ``(B,)`` for a batch
``x`` of shape ``(B, *data_shape)``.

Convention for the VE SDE (as in the reference implementation): ``sigma(t) = sigma_min (sigma_max /
sigma_min)^t``, i.e. the state at t = 0 is the data perturbed by N(0, sigma_min^2 I). Every exact
quantity in this package (marginals, scores, log-densities of mixtures) uses the same convention.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "SDE",
    "get_sde",
    "probability_flow_drift",
    "reverse_drift",
]


# ----------------------------------------------------------------------------------------- helpers
def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_time(t, T: float, name: str = "t") -> Array:
    """Return ``t`` as an array; raise ``ValueError`` if a concrete ``t`` leaves [0, T] or is not finite."""
    t = jnp.asarray(t)
    if t.ndim > 1:
        raise ValueError(f"{name} must be a scalar or have shape (B,); got shape {t.shape}.")
    if _is_concrete(t) and t.size:
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


def _gaussian_logp(z: Array, std: float) -> Array:
    """log N(z; 0, std^2 I) per example, shape (B,)."""
    d = math.prod(z.shape[1:])
    return -0.5 * d * math.log(2 * math.pi * std**2) - 0.5 * _sum_except_batch(z**2) / std**2


def _static_pytree(cls):
    """Frozen dataclass registered as a pytree whose fields are all static (hashable, jit-friendly)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=[], meta_fields=names)


class _LinearSDE:
    """Methods shared by all linear SDEs, written in terms of the per-SDE coefficients.

    Subclasses define ``drift_coef(t)`` (f(t) in f(x, t) = f(t) x), ``diffusion(t)`` (g(t)),
    ``alpha_sigma(t)`` and ``prior_std``.
    """

    T: float
    eps: float
    N: int

    # ---- time validation
    def _t(self, t) -> Array:
        return check_time(t, self.T)

    # ---- SDE coefficients
    def drift(self, x: Array, t) -> Array:
        """f(x, t) = f(t) x, the drift of dx = f(x, t) dt + g(t) dw."""
        t = self._t(t)
        check_batch(x, t)
        return batch_broadcast(self.drift_coef(t), x) * x

    def marginal(self, x0: Array, t) -> tuple[Array, Array]:
        """Mean and std of p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I).

        Returns ``mean`` shaped like ``x0`` and ``std`` shaped like ``t``.
        """
        t = self._t(t)
        check_batch(x0, t)
        alpha, sigma = self.alpha_sigma(t)
        return batch_broadcast(alpha, x0) * x0, sigma

    def marginal_sample(self, key: Array, x0: Array, t) -> Array:
        """x_t = alpha(t) x_0 + sigma(t) z with z ~ N(0, I)."""
        mean, std = self.marginal(x0, t)
        z = jax.random.normal(key, jnp.shape(x0), dtype=jnp.result_type(x0, jnp.float32))
        return mean + batch_broadcast(std, x0) * z

    # ---- prior p_T
    def prior_sample(self, key: Array, shape) -> Array:
        """z ~ p_T = N(0, prior_std^2 I)."""
        return self.prior_std * jax.random.normal(key, tuple(shape))

    def prior_logp(self, z: Array) -> Array:
        """log p_T(z) = log N(z; 0, prior_std^2 I), summed over all but the batch axis: shape (B,)."""
        if jnp.ndim(z) < 1:
            raise ValueError(f"prior_logp expects a batch (B, *data_shape); got shape {jnp.shape(z)}.")
        return _gaussian_logp(jnp.asarray(z), self.prior_std)

    # ---- discretisation
    def discretize(self, x: Array, t) -> tuple[Array, Array]:
        """Euler–Maruyama discretisation x_{i+1} = x_i + f_i + G_i z with step T/N (Song et al. 2021, App. E).

        f_i = f(x, t) T/N and G_i = g(t) sqrt(T/N). VP and VE override this with the exact DDPM / SMLD
        Markov chains that their SDEs are the continuum limits of.
        """
        dt = self.T / self.N
        t = self._t(t)
        return self.drift(x, t) * dt, self.diffusion(t) * math.sqrt(dt)

    def discrete_index(self, t) -> Array:
        """Index i = floor(t (N - 1) / T) of the discrete step that time t stands for."""
        return (self._t(t) * (self.N - 1) / self.T).astype(jnp.int32)

    def discrete_time(self, i) -> Array:
        """t_i = i T / (N - 1), the continuous time of discrete step i (inverse of discrete_index)."""
        return jnp.asarray(i, jnp.float32) * self.T / (self.N - 1)


# ---------------------------------------------------------------------------------------------- VP
@_static_pytree
class VPSDE(_LinearSDE):
    """Variance-preserving SDE, the continuum limit of DDPM (Ho et al. 2020; Song et al. 2021, eq. 11).

        dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min)

    Marginal: alpha(t) = exp(-1/2 B(t)), sigma(t)^2 = 1 - exp(-B(t)), with
    B(t) = int_0^t beta = beta_min t + 1/2 (beta_max - beta_min) t^2. Prior N(0, I).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    T: float = 1.0
    eps: float = 1e-3

    def __post_init__(self):
        if not (self.beta_min > 0 and self.beta_max > 0):
            raise ValueError(f"beta_min and beta_max must be > 0; got {self.beta_min}, {self.beta_max}.")
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"beta_min={self.beta_min} > beta_max={self.beta_max}: beta(t) must increase; swap them."
            )
        _check_common(self)

    name = "vp"
    prior_std = 1.0

    def beta(self, t) -> Array:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t) -> Array:
        """B(t) = int_0^t beta(s) ds = beta_min t + 1/2 (beta_max - beta_min) t^2."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def drift_coef(self, t) -> Array:
        """f(t) = -1/2 beta(t)."""
        return -0.5 * self.beta(t)

    def diffusion(self, t) -> Array:
        """g(t) = sqrt(beta(t))."""
        return jnp.sqrt(self.beta(self._t(t)))

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha(t) = exp(-B(t)/2), sigma(t) = sqrt(1 - exp(-B(t)))."""
        b = self.integrated_beta(jnp.asarray(t))
        return jnp.exp(-0.5 * b), jnp.sqrt(-jnp.expm1(-b))

    def cum_likelihood_weight(self, t) -> Array:
        """F(t) = int g^2 / sigma^2 dt = log(exp(B(t)) - 1), an antiderivative of beta / (1 - e^{-B})."""
        b = self.integrated_beta(jnp.asarray(t))
        return b + jnp.log(-jnp.expm1(-b))

    @property
    def discrete_betas(self) -> Array:
        """DDPM's betas: beta_i = linspace(beta_min / N, beta_max / N, N)."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def discrete_alphas_cumprod(self) -> Array:
        """DDPM's alpha-bar_i = prod_{j <= i} (1 - beta_j)."""
        return jnp.cumprod(1.0 - self.discrete_betas)

    def discretize(self, x: Array, t) -> tuple[Array, Array]:
        """DDPM's forward step x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z, as x + f + G z.

        f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i), with i = discrete_index(t).
        """
        t = self._t(t)
        check_batch(x, t)
        beta = self.discrete_betas[self.discrete_index(t)]
        return batch_broadcast(jnp.sqrt(1.0 - beta), x) * x - x, jnp.sqrt(beta)


@_static_pytree
class SubVPSDE(_LinearSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 12), whose variance is bounded by the VP SDE's.

        dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw

    Marginal: alpha(t) = exp(-B(t)/2), sigma(t) = 1 - exp(-B(t)). Prior N(0, I).
    ``discretize`` is the generic Euler–Maruyama step (there is no classical discrete chain).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000
    T: float = 1.0
    eps: float = 1e-3

    __post_init__ = VPSDE.__post_init__
    name = "subvp"
    prior_std = 1.0
    beta = VPSDE.beta
    integrated_beta = VPSDE.integrated_beta
    drift_coef = VPSDE.drift_coef

    def diffusion(self, t) -> Array:
        """g(t) = sqrt(beta(t) (1 - exp(-2 B(t))))."""
        t = self._t(t)
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2.0 * self.integrated_beta(t)))

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha(t) = exp(-B(t)/2), sigma(t) = 1 - exp(-B(t))."""
        b = self.integrated_beta(jnp.asarray(t))
        return jnp.exp(-0.5 * b), -jnp.expm1(-b)

    def cum_likelihood_weight(self, t) -> Array:
        """F(t) = int g^2 / sigma^2 dt = 2 log(exp(B) - 1) - B, an antiderivative of beta (1 + e^{-B}) / (1 - e^{-B})."""
        b = self.integrated_beta(jnp.asarray(t))
        return b + 2.0 * jnp.log(-jnp.expm1(-b))


# ---------------------------------------------------------------------------------------------- VE
@_static_pytree
class VESDE(_LinearSDE):
    """Variance-exploding SDE, the continuum limit of SMLD/NCSN (Song et al. 2021, eq. 9).

        dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw,   sigma(t) = sigma_min (sigma_max / sigma_min)^t

    Marginal: alpha(t) = 1, std sigma(t) (see the module docstring for the t = 0 convention).
    Prior N(0, sigma_max^2 I).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000
    T: float = 1.0
    eps: float = 1e-5

    def __post_init__(self):
        if not self.sigma_min > 0:
            raise ValueError(f"sigma_min must be > 0; got {self.sigma_min}.")
        if not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"sigma_max={self.sigma_max} must exceed sigma_min={self.sigma_min}; choose sigma_max "
                "of the order of the largest pairwise distance in the data."
            )
        _check_common(self)

    name = "ve"

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t) -> Array:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(t)

    def drift_coef(self, t) -> Array:
        """f(t) = 0."""
        return jnp.zeros_like(jnp.asarray(t, jnp.float32))

    def diffusion(self, t) -> Array:
        """g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))."""
        return self.sigma(self._t(t)) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """alpha(t) = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
        s = self.sigma(t)
        return jnp.ones_like(s), s

    def cum_likelihood_weight(self, t) -> Array:
        """F(t) = int g^2 / sigma^2 dt = 2 log(sigma_max / sigma_min) t (the importance density is uniform)."""
        return 2.0 * math.log(self.sigma_max / self.sigma_min) * jnp.asarray(t)

    @property
    def discrete_sigmas(self) -> Array:
        """SMLD's noise levels: sigma_i = exp(linspace(log sigma_min, log sigma_max, N)), increasing."""
        return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def discretize(self, x: Array, t) -> tuple[Array, Array]:
        """SMLD's forward chain x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (sigma_{-1} = 0): f = 0, G."""
        t = self._t(t)
        check_batch(x, t)
        i = self.discrete_index(t)
        sigmas = self.discrete_sigmas
        prev = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigmas[i] ** 2 - prev**2)


def _check_common(sde) -> None:
    if not (sde.T > 0 and math.isfinite(sde.T)):
        raise ValueError(f"T must be a positive finite time; got {sde.T}.")
    if not 0 < sde.eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}); got {sde.eps}.")
    if int(sde.N) != sde.N or sde.N < 2:
        raise ValueError(f"N (number of discretisation steps) must be an integer >= 2; got {sde.N}.")


SDE = Union[VPSDE, SubVPSDE, VESDE]
_SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def get_sde(name: str, **kwargs) -> SDE:
    """Build an SDE from its short name: ``"vp"``, ``"subvp"`` or ``"ve"``."""
    if name not in _SDES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(_SDES)}.")
    return _SDES[name](**kwargs)


# ------------------------------------------------------------------------- drifts given a score
def reverse_drift(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """Drift of the reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6): f(x, t) - g(t)^2 s(x, t)."""
    g = sde.diffusion(t)
    return sde.drift(x, t) - batch_broadcast(g**2, x) * score_fn(x, t)


def probability_flow_drift(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
    """Probability-flow ODE (Song et al. 2021, eq. 13): dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)."""
    g = sde.diffusion(t)
    return sde.drift(x, t) - 0.5 * batch_broadcast(g**2, x) * score_fn(x, t)
