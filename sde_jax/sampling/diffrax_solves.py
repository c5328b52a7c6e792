"""The continuous-time solves, on diffrax: the reverse-time SDE and the probability-flow ODE.

Both integrate along a time grid ``ts`` from ``sampling.grids`` (fixed steps, ``StepTo``) or, for an adaptive ODE
solve, between its two end points; both return ``(x at ts[-1], nfe)``. Solvers are named as in
:mod:`sde_jax.sampling.solvers` (shared with the likelihood).
"""

from __future__ import annotations

from typing import Callable

import diffrax as dfx
import jax
import jax.numpy as jnp
import lineax as lx

from sde_jax.sampling.solvers import ODE_SOLVERS, SDE_SOLVERS, ode_nfe
from sde_jax.sde import LinearSDE, probability_flow_drift, reverse_drift

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def _bt(t, x: Array) -> Array:
    return jnp.full((x.shape[0],), t, dtype=x.dtype)


def pf_ode_term(score: ScoreFn, sde: LinearSDE) -> dfx.ODETerm:
    """diffrax term of the probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021, eq. 13)."""
    return dfx.ODETerm(lambda t, y, args: probability_flow_drift(sde, score, y, _bt(t, y)))


def pf_ode_solve(
    score: ScoreFn, sde: LinearSDE, x: Array, ts: Array, *, solver: str = "tsit5", adaptive: bool = False,
    rtol: float = 1e-5, atol: float = 1e-5, max_steps: int = 4096,
) -> tuple[Array, Array]:
    """Integrate the probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) from ts[0] to ts[-1] (either way).

    ``adaptive``: ``PIDController(rtol, atol)`` between the end points, ``dt0=None``; else ``StepTo(ts)``.
    nfe = ``solvers.ode_nfe(solver, sol.stats["num_steps"])``: stages per step times steps (rejected steps
    included) plus the FSAL first stage; diffrax 0.7.2's automatic first step costs no evaluation (counted at run
    time in tests/test_sampling.py). One solve for the whole batch, one step size (the fastest choice on CPU).
    """
    controller = dfx.PIDController(rtol=rtol, atol=atol) if adaptive else dfx.StepTo(ts=ts)
    sol = dfx.diffeqsolve(
        pf_ode_term(score, sde), ODE_SOLVERS[solver][0](), ts[0], ts[-1], dt0=None, y0=x,
        stepsize_controller=controller, saveat=dfx.SaveAt(t1=True),
        max_steps=max_steps if adaptive else ts.shape[0] - 1,
    )
    return sol.ys[0], ode_nfe(solver, sol.stats["num_steps"])


def reverse_sde_solve(
    score: ScoreFn, sde: LinearSDE, key: Array, x: Array, ts: Array, *, solver: str = "euler",
    brownian: str = "unsafe",
) -> tuple[Array, int]:
    """The reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6) along the decreasing grid ``ts``:

        dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw_bar.

    Integrated forwards in s = -t (exact in floating point on any grid), y(s) = x(-s):

        dy = [g^2 s(y, -s) - f(y, -s)] ds + g(-s) dw,

    the same law, and it sidesteps diffrax 0.7.2's wrong backwards-in-time SRA1 / ShARK (issue #598).
    ``solver``: ``"euler"`` (Euler–Maruyama, strong order 1/2) or the additive-noise stochastic Runge–Kutta
    ``"sra1"`` (Rößler 2010) / ``"shark"`` (valid since g depends on t only). ``brownian``: ``"unsafe"``
    (``UnsafeBrownianPath``, a fresh normal per step, ~15x cheaper, not differentiable) or ``"tree"``
    (``VirtualBrownianTree``, reverse-mode differentiable). nfe = evaluations per step x steps.
    """
    cls, per_step, levy = SDE_SOLVERS[solver]
    ss = -ts
    steps = ts.shape[0] - 1

    def drift(s, y, args):
        return -reverse_drift(sde, score, y, _bt(-s, y))

    def diffusion(s, y, args):
        return lx.DiagonalLinearOperator(jnp.broadcast_to(sde.diffusion(-s).astype(y.dtype), y.shape))

    shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    if brownian == "unsafe":
        bm = dfx.UnsafeBrownianPath(shape=shape, key=key, levy_area=levy)
        adjoint = dfx.ForwardMode()
    else:
        tol = (ss[-1] - ss[0]) / steps / 16
        bm = dfx.VirtualBrownianTree(ss[0], ss[-1], tol=tol, shape=shape, key=key, levy_area=levy)
        adjoint = dfx.RecursiveCheckpointAdjoint()
    sol = dfx.diffeqsolve(
        dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm)), cls(), ss[0], ss[-1], dt0=None, y0=x,
        stepsize_controller=dfx.StepTo(ts=ss), saveat=dfx.SaveAt(t1=True), adjoint=adjoint, max_steps=steps,
    )
    return sol.ys[0], per_step * steps
