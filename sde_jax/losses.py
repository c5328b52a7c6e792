"""Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) and the jit-compiled train step.

Every loss has the signature ``loss_fn(params, x0, keys, y=None) -> (loss, aux)`` with one PRNG key per example
(``keys`` of shape (B,)) and, for class-conditional networks ``model_apply(params, x, t, y)``, integer labels y. Drawing each example's noise from its own key makes the loss independent of how a
global batch is split across devices: N devices give the same numbers as one.

All losses are written in score space, s = score_fn(model_apply, params, sde, parameterization), so the same
network parameterisation ("eps", "x0", ...) serves training and sampling.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sde_jax.score import ModelApply, score_fn
from sde_jax.sde import SDE, VESDE, VPSDE, batch_broadcast

Array = jax.Array
LossFn = Callable[..., tuple[Array, dict]]


def example_keys(key: Array, batch_size: int, offset: Array | int = 0) -> Array:
    """One key per example: fold_in(key, offset + i) for i < batch_size (global example index)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, offset + jnp.arange(batch_size))


def _reduce(x: Array, reduce_mean: bool) -> Array:
    """Mean (``reduce_mean``) or sum over all but the batch axis."""
    x = x.reshape(x.shape[0], -1)
    return jnp.mean(x, axis=-1) if reduce_mean else jnp.sum(x, axis=-1)


def _split_noise(keys: Array, x0: Array) -> tuple[Array, Array]:
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


def sample_importance_time(sde: SDE, u: Array, eps: float, iters: int = 40) -> Array:
    """Invert the CDF of p(t) proportional to g(t)^2 / sigma(t)^2 on [eps, T] by bisection.

    p(t) = (g^2 / sigma^2) / Z with Z = F(T) - F(eps), F = ``sde.cum_likelihood_weight`` (closed form);
    t solves F(t) = F(eps) + u Z. Song, Durkan, Murray & Ermon (2021), Sec. 5.
    """
    f_lo, f_hi = sde.cum_likelihood_weight(eps), sde.cum_likelihood_weight(sde.T)
    target = f_lo + u * (f_hi - f_lo)
    lo, hi = jnp.full_like(u, eps), jnp.full_like(u, sde.T)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = sde.cum_likelihood_weight(mid) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return 0.5 * (lo + hi)


def dsm_loss(
    model_apply: ModelApply,
    sde: SDE,
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
    the loss is Z || sigma s + z ||^2 (same expectation, far lower variance; Z = F(T) - F(eps)).
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
        u, z = _split_noise(keys, x0)
        net, y = _network(model_apply, keys, y, p_uncond, null_label, dropout)
        if importance_sampling:
            t = sample_importance_time(sde, u, t_min)
        else:
            t = t_min + u * (sde.T - t_min)
        alpha, sigma = sde.alpha_sigma(t)
        xt = batch_broadcast(alpha, x0) * x0 + batch_broadcast(sigma, x0) * z
        s = score_fn(net, params, sde, parameterization, y)(xt, t)
        sig = batch_broadcast(sigma, x0)
        if weighting == "score_matching":
            per_example = _reduce((sig * s + z) ** 2, reduce_mean)
        elif importance_sampling:
            z_norm = sde.cum_likelihood_weight(sde.T) - sde.cum_likelihood_weight(t_min)
            per_example = z_norm * _reduce((sig * s + z) ** 2, reduce_mean)
        else:
            per_example = sde.diffusion(t) ** 2 * _reduce((s + z / sig) ** 2, reduce_mean)
        return jnp.mean(per_example), {"t": t, "per_example": per_example}

    return loss_fn


def discrete_loss(
    model_apply: ModelApply, sde: SDE, parameterization: str = "eps", *, reduce_mean: bool = True,
    p_uncond: float = 0.0, null_label: int | None = None, dropout: bool = False,
) -> LossFn:
    """The discrete DDPM (VP) and SMLD/NCSN (VE) losses over N noise levels.

    i ~ U{0, ..., N-1}, x_i = a_i x0 + s_i z, loss = || s_i s(x_i, t_i) + z ||^2 with t_i = i T / (N - 1) and
    DDPM: a_i = sqrt(alpha-bar_i), s_i = sqrt(1 - alpha-bar_i)  (Ho et al. 2020, eq. 14: the eps-MSE)
    SMLD: a_i = 1, s_i = sigma_i                                (Song & Ermon 2019, eq. 5 with lambda = sigma^2)

    Labels, ``p_uncond`` and ``dropout`` as in :func:`dsm_loss`.
    """
    if isinstance(sde, VPSDE):

        def coefs(i):
            abar = sde.discrete_alphas_cumprod[i]
            return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)

    elif isinstance(sde, VESDE):

        def coefs(i):
            return jnp.ones_like(i, jnp.float32), sde.discrete_sigmas[i]

    else:
        raise ValueError(
            f"the discrete losses are DDPM (VPSDE) and SMLD (VESDE); got {type(sde).__name__}. "
            "Use dsm_loss (continuous time) for sub-VP."
        )

    def loss_fn(params: Any, x0: Array, keys: Array, y: Array | None = None) -> tuple[Array, dict]:
        u, z = _split_noise(keys, x0)
        net, y = _network(model_apply, keys, y, p_uncond, null_label, dropout)
        i = jnp.minimum((u * sde.N).astype(jnp.int32), sde.N - 1)
        a, s = coefs(i)
        xt = batch_broadcast(a, x0) * x0 + batch_broadcast(s, x0) * z
        t = sde.discrete_time(i)
        score = score_fn(net, params, sde, parameterization, y)(xt, t)
        per_example = _reduce((batch_broadcast(s, x0) * score + z) ** 2, reduce_mean)
        return jnp.mean(per_example), {"t": t, "per_example": per_example}

    return loss_fn


# ------------------------------------------------------------------------------------ training
@flax.struct.dataclass
class TrainState:
    """Everything a training step changes: step, params, optimizer state and the EMA of params."""

    step: Array
    params: Any
    opt_state: Any
    ema_params: Any


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0, with the EMA initialised to the parameters."""
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), params)


def make_optimizer(
    lr: float = 2e-4, *, warmup: int = 5000, grad_clip: float = 1.0, beta1: float = 0.9, eps: float = 1e-8,
    weight_decay: float = 0.0, decay_steps: int = 0,
) -> optax.GradientTransformation:
    """score_sde's optimiser: clip the global norm to ``grad_clip`` (if > 0), then Adam(W) with a linear warm-up
    lr * min(step / warmup, 1); with ``decay_steps > 0`` the rate then follows a cosine to 0 at ``decay_steps``."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0; got {lr}.")
    if decay_steps and decay_steps <= warmup:
        raise ValueError(f"decay_steps={decay_steps} must exceed warmup={warmup} (or be 0 for a constant rate).")
    if decay_steps:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, decay_steps, 0.0)
    else:
        schedule = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else lr
    adam = optax.adamw(schedule, b1=beta1, eps=eps, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(grad_clip), adam) if grad_clip > 0 else adam


class StepOutput(NamedTuple):
    state: TrainState
    metrics: dict


def make_train_step(
    loss_fn: LossFn, optimizer: optax.GradientTransformation, ema_decay: float = 0.999,
    axis_name: str | None = None, skip_nonfinite: bool = False,
) -> Callable[[TrainState, Array, Array], StepOutput]:
    """``train_step(state, batch, key) -> (state, metrics)``; pure, for ``jax.jit`` or ``jax.pmap``.

    ``batch`` is the data x0 (B, ...) or, for class-conditional training, a dict ``{"x": x0, "y": labels}``.

    Example i of the global batch gets noise from fold_in(key, i): under ``pmap`` with ``axis_name`` the
    device offset is axis_index * local_batch, and gradients and metrics are ``pmean``-ed, so N devices
    reproduce one device on the same global batch. EMA: ema <- d ema + (1 - d) params with the warmed-up
    decay d = min(ema_decay, (1 + step) / (10 + step)) (TensorFlow's ExponentialMovingAverage), so short runs
    are not dominated by the initial parameters.
    ``metrics["finite"]`` says whether loss and gradients were finite; with ``skip_nonfinite`` such a step
    leaves params, optimizer state and EMA unchanged (the step counter still advances).
    """
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1); got {ema_decay}.")

    def train_step(state: TrainState, batch: Array | dict, key: Array) -> StepOutput:
        x0, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch, None)
        b = x0.shape[0]
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
        keys = example_keys(key, b, offset)
        labels = () if y is None else (y,)  # unconditional losses may take (params, x0, keys) only
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x0, keys, *labels)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        if skip_nonfinite:
            kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
            new = kept.replace(step=state.step + 1)
        return StepOutput(new, {"loss": loss, "grad_norm": grad_norm, "finite": finite})

    return train_step
