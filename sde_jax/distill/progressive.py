"""Progressive distillation (Salimans & Ho 2022): a student whose one DDIM step does two of its teacher's.

On the student's uniform grid of N steps from T to eps, at a grid time t with t' = t - h/2, t'' = t - h (h the
student's step), the teacher takes two deterministic DDIM steps z_t -> z_t' -> z_t''. The x-prediction that makes
one DDIM step of the student land on z_t'' exactly is (Salimans & Ho 2022, Alg. 2)

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

and the student regresses its own x-prediction x^(z_t) on it with the truncated-SNR weight
max(alpha_t^2 / sigma_t^2, 1) ("SNR+1"-like, so the weight stays positive at t = T). Each round halves N; the student
of one round is the teacher of the next, down to one step. The student is a :class:`sde_jax.ScoreModel` in the
``"x0"`` or ``"v"`` parameterisation, so ``sj.sample(student, sde, key, shape, method="ddim", steps=N,
denoise=False)`` runs it (N score evaluations).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_jax.sampling.grids import time_grid
from sde_jax.sampling.steps import ddim_step
from sde_jax.score import ScoreModel, denoise
from sde_jax.sde import LinearSDE, batch_broadcast

Array = jax.Array


def two_step_target(teacher: Any, sde: LinearSDE, z: Array, t: Array, t_mid: Array, t_next: Array) -> Array:
    """x~ of the module docstring: the x-prediction whose DDIM step t -> t_next equals the teacher's two DDIM steps
    t -> t_mid -> t_next. t, t_mid, t_next are (B,) (one triple per example)."""
    def two(z1, a, b, c):
        z2 = ddim_step(teacher, sde, None, z1[None], a, b)
        return ddim_step(teacher, sde, None, z2, b, c)[0]

    z2 = jax.vmap(two)(z, t, t_mid, t_next)
    a_t, s_t = sde.alpha_sigma(t)
    a_n, s_n = sde.alpha_sigma(t_next)
    r = s_n / s_t
    return (z2 - batch_broadcast(r, z) * z) / batch_broadcast(a_n - r * a_t, z)


def pd_loss(params: Any, student: ScoreModel, teacher: Any, key: Array, x0: Array, steps: int) -> Array:
    """One round's loss for a student of ``steps`` DDIM steps: the mean over the batch of
    max(SNR(t), 1) ||x~ - x^_student(z_t, t)||^2 / d at t uniform over the student's grid (module docstring)."""
    sde = student.sde
    k_i, k_z = jax.random.split(key)
    b = x0.shape[0]
    ts = time_grid(sde, 2 * steps, sde.T, sde.eps)  # the teacher's grid: the student's and its midpoints
    i = jax.random.randint(k_i, (b,), 0, steps)
    t, t_mid, t_next = ts[2 * i], ts[2 * i + 1], ts[2 * i + 2]
    z = sde.marginal_sample(k_z, x0, t)
    target = jax.lax.stop_gradient(two_step_target(teacher, sde, z, t, t_mid, t_next))
    pred = denoise(eqx.tree_at(lambda m: m.params, student, params), sde, z, t)
    a, s = sde.alpha_sigma(t)
    weight = jnp.maximum(a**2 / s**2, 1.0)
    return jnp.mean(weight * jnp.mean((pred - target).reshape(b, -1) ** 2, axis=1))
