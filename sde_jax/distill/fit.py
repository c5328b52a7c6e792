"""The training loop of the distillation methods: Adam, an evaluation EMA and (for CD) an EMA target network."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class FitResult(NamedTuple):
    params: Any
    ema_params: Any
    target_params: Any
    losses: Array


def fit(loss_fn: Callable, params: Any, batch_fn: Callable[[Array], Array], key: Array, *, steps: int,
        lr: float = 1e-3, ema_decay: float = 0.999, target_decay: float | None = None,
        sync_every: int = 100) -> FitResult:
    """Minimise ``loss_fn(params, target_params, key, x0, step)`` over ``steps`` Adam steps (learning rate ``lr``,
    cosine decay) on batches ``batch_fn(key)``. ``target_params`` is the EMA target network with decay
    ``target_decay`` (consistency distillation's theta-), or the current params when None (a loss that does not use
    it). Returns the params, their evaluation EMA (``ema_decay``), the target and the loss per step."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}.")
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))

    def step(carry, k):
        params, ema, target, opt_state, i = carry
        k_data, k_loss = jax.random.split(k)
        x0 = batch_fn(k_data)
        tgt = params if target_decay is None else target
        loss, grads = jax.value_and_grad(loss_fn)(params, tgt, k_loss, x0, i)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
        if target_decay is not None:
            target = optax.incremental_update(params, target, 1.0 - target_decay)
        return (params, ema, target, opt_state, i + 1), loss

    run = jax.jit(lambda carry, keys: jax.lax.scan(step, carry, keys))
    carry = (params, params, params, opt.init(params), jnp.int32(0))
    losses = []
    keys = jax.random.split(key, steps)
    for s in range(0, steps, sync_every):  # host sync every sync_every steps
        carry, l = run(carry, keys[s:s + sync_every])
        losses.append(l)
    losses = jnp.concatenate(losses)
    if not bool(jnp.all(jnp.isfinite(losses))):
        raise FloatingPointError(f"non-finite loss at step {int(jnp.argmin(jnp.isfinite(losses)))}; lower lr.")
    return FitResult(carry[0], carry[1], carry[2], losses)
