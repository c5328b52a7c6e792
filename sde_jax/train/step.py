"""The jit-compiled train step: ``TrainState`` (step, params, optimizer state, EMA), the optimiser, and
``make_train_step`` (one gradient step of a loss from ``sde_jax.losses`` with per-example keys and an EMA).

Each example's noise comes from its own key (:func:`example_keys`), so a global batch split across devices gives
the same numbers as one device.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sde_jax.vdm import is_trainable

Array = jax.Array
LossFn = Callable[..., tuple[Array, dict]]


def example_keys(key: Array, batch_size: int, offset: Array | int = 0) -> Array:
    """One key per example: fold_in(key, offset + i) for i < batch_size (global example index)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, offset + jnp.arange(batch_size))



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


def init_params(model: Any, key: Array, example: Array, sde: Any = None) -> Any:
    """Network parameters from one example batch (an array, or a dict whose "x" is the images).

    With a trainable ``sde`` (a learned schedule, ``sde_jax.vdm.is_trainable``) the parameters are
    ``{"net": network parameters, "schedule": sde}``: the schedule trains, is averaged and checkpointed with the
    network (``sde_jax.losses.vdm_loss``)."""
    x = example["x"] if isinstance(example, dict) else example
    x = jnp.asarray(x, jnp.float32)
    net = model.init(key, x, jnp.ones((x.shape[0],)))
    return {"net": net, "schedule": sde} if sde is not None and is_trainable(sde) else net


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
    axis_name: str | None = None, skip_nonfinite: bool = False, context: bool = False,
) -> Callable[..., StepOutput]:
    """``train_step(state, batch, key) -> (state, metrics)``; pure, for ``jax.jit`` or ``jax.pmap``.

    ``batch`` is the data x0 (B, ...) or, for class-conditional training, a dict ``{"x": x0, "y": labels}``.

    With ``context`` the step is ``train_step(state, batch, key, frozen)`` and the loss is called as
    ``loss_fn(params, x0, keys[, y], frozen=frozen, step=state.step)``: ``frozen`` a pytree that does not train
    (e.g. a distillation teacher's parameters), an *argument* of the compiled step, never an XLA constant, and
    ``step`` the number of steps already taken (a traced int32: curricula such as consistency training's).

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

    def train_step(state: TrainState, batch: Array | dict, key: Array, *frozen: Any) -> StepOutput:
        if len(frozen) != int(context):
            raise TypeError("train_step takes (state, batch, key, frozen) when made with context=True, else "
                            f"(state, batch, key); got {3 + len(frozen)} arguments.")
        x0, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else (batch, None)
        b = x0.shape[0]
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
        keys = example_keys(key, b, offset)
        labels = () if y is None else (y,)  # unconditional losses may take (params, x0, keys) only
        extra = {"frozen": frozen[0], "step": state.step} if context else {}
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x0, keys, *labels, **extra)
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
