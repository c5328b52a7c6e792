"""Sampling from score-based models: one entry point ``sample(score, sde, key, shape, method=..., **options)``.

=================== ===================================================================================
module              job
=================== ===================================================================================
``grids``           the time grids of every fixed-step sampler (uniform, log-SNR, EDM rho, quadratic, user ts)
``steps``           fixed-grid update rules ``step(score, sde, key, x, t, t_next)`` and the one scan loop
``multistep``       DPM-Solver++ and UniPC: updates that need past model outputs, and their scan loop
``picard``          parallel-in-time sampling: Picard sweeps over a sliding window (ParaDiGMS), across devices
``diffrax_solves``  the reverse-time SDE and probability-flow ODE on diffrax
``solvers``         diffrax solvers by name (shared with the likelihood)
``samplers``        one function per sampler, option checks, ``sample``, ``encode``, ``decode``
=================== ===================================================================================
"""

from sde_jax.sampling.diffrax_solves import pf_ode_solve, pf_ode_term, reverse_sde_solve
from sde_jax.sampling.grids import GRIDS, check_ts, time_grid
from sde_jax.sampling.multistep import multistep_loop
from sde_jax.sampling.picard import picard_loop
from sde_jax.sampling.samplers import (METHODS, PLANS, SAMPLERS, StepPlan, decode, encode, plan_ancestral, plan_ddim,
                                     plan_heun, plan_pc, run_plan, sample, sample_ancestral, sample_consistency,
                                     sample_ddim,
                                     sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_3m, sample_heun, sample_ode,
                                     sample_pc, sample_picard, sample_sde, sample_unipc)
from sde_jax.sampling.solvers import ODE_SOLVERS, SDE_SOLVERS, check_ode_solver, ode_nfe, ode_solver
from sde_jax.sampling.steps import (PREDICTORS, ancestral_step, ddim_step, edm_churn, euler_maruyama_step,
                                    forward_step, heun_step, interval_keys, posterior_variance, interval_loop, interval_update,
                                    langevin_step, reverse_diffusion_step, stochastic_heun_step, step_loop)

__all__ = [
    "sample", "encode", "decode", "METHODS", "SAMPLERS", "GRIDS", "time_grid", "check_ts",
    "sample_ode", "sample_sde", "sample_pc", "sample_ancestral", "sample_ddim",
    "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_dpmpp_2m_sde", "sample_unipc", "sample_heun", "sample_picard", "sample_consistency",
    "StepPlan", "PLANS", "plan_pc", "plan_ancestral", "plan_ddim", "plan_heun", "run_plan",
    "picard_loop", "posterior_variance", "interval_update", "interval_loop", "interval_keys",
    "reverse_diffusion_step", "euler_maruyama_step", "ancestral_step", "ddim_step", "langevin_step", "forward_step",
    "heun_step", "stochastic_heun_step", "edm_churn", "PREDICTORS", "step_loop", "multistep_loop",
    "pf_ode_solve", "pf_ode_term", "reverse_sde_solve",
    "ODE_SOLVERS", "SDE_SOLVERS", "check_ode_solver", "ode_solver", "ode_nfe",
]
