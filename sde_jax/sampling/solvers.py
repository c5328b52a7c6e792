"""diffrax solvers by name, shared by the samplers and the likelihood (one naming for both).

====================== ========================================== ===================== ==========
name                   diffrax class                              score evals per step  adaptive
====================== ========================================== ===================== ==========
``"euler"``            ``Euler`` (ODE) / Euler–Maruyama (SDE)     1                     no
``"heun"``             ``Heun``                                   2                     yes (ODE)
``"midpoint"``         ``Midpoint``                               2                     no
``"bosh3"``            ``Bosh3``                                  3 (FSAL: +1 once)     yes
``"tsit5"``            ``Tsit5``                                  6 (FSAL: +1 once)     yes
``"dopri5"``           ``Dopri5`` (the reference code's RK45)     6 (FSAL: +1 once)     yes
``"sra1"``, ``"shark"`` additive-noise SRK, SDE only               2                     no
====================== ========================================== ===================== ==========
"""

from __future__ import annotations

import diffrax as dfx

# name: (diffrax class, score evaluations per step, extra evaluations once (FSAL first stage))
ODE_SOLVERS: dict[str, tuple[type, int, int]] = {
    "euler": (dfx.Euler, 1, 0),
    "heun": (dfx.Heun, 2, 0),
    "midpoint": (dfx.Midpoint, 2, 0),
    "bosh3": (dfx.Bosh3, 3, 1),
    "tsit5": (dfx.Tsit5, 6, 1),
    "dopri5": (dfx.Dopri5, 6, 1),
}
ADAPTIVE_ODE_SOLVERS = ("heun", "bosh3", "tsit5", "dopri5")  # have an embedded error estimate

# name: (diffrax class, score evaluations per step, Brownian information it needs)
SDE_SOLVERS: dict[str, tuple[type, int, type]] = {
    "euler": (dfx.Euler, 1, dfx.BrownianIncrement),
    "sra1": (dfx.SRA1, 2, dfx.SpaceTimeLevyArea),
    "shark": (dfx.ShARK, 2, dfx.SpaceTimeLevyArea),
}


def check_ode_solver(name: str, adaptive: bool = False) -> str:
    """``name`` if it is an ODE solver (with an error estimate when ``adaptive``); ValueError naming the choices."""
    if name not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {name!r}; choose one of {sorted(ODE_SOLVERS)}.")
    if adaptive and name not in ADAPTIVE_ODE_SOLVERS:
        raise ValueError(
            f"solver={name!r} has no error estimate, so it cannot choose its own steps: pass steps=N for a fixed "
            f"grid, or use an adaptive solver {list(ADAPTIVE_ODE_SOLVERS)}."
        )
    return name


def ode_solver(name: str) -> dfx.AbstractSolver:
    """The diffrax ODE solver called ``name``."""
    return ODE_SOLVERS[check_ode_solver(name)][0]()


def ode_nfe(name: str, num_steps) -> object:
    """Score evaluations of ``num_steps`` (accepted + rejected) steps of ODE solver ``name``."""
    _, per_step, once = ODE_SOLVERS[check_ode_solver(name)]
    return per_step * num_steps + once
