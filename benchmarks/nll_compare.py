"""Speed of the PF-ODE likelihood: ours (one compiled diffrax solve, one fused forward + JVP per stage) against the
host loop of the reference implementation (``benchmarks.host_loop``), same model, batch, probe and tolerances.

    python -m benchmarks.nll_compare --model mlp2d                # a ScoreMLP fitted briefly to gmm8gauss
    python -m benchmarks.nll_compare --model unet28               # an MNIST-size U-Net (28x28x1)
    python -m benchmarks.nll_compare --suite                      # both, at the standard numbers of rounds

Both use the same Rademacher probe v, so they estimate the same integral; ours runs Dopri5 (RK45's tableau, like
for like) and Tsit5 (our default) at rtol = atol = 1e-5. Each run writes
``benchmarks/results/nll_compare_<model>.json`` and refreshes the table between the ``nll_compare`` markers of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sde_jax as sj
from sde_jax.eval import count_compiles
from benchmarks.common import add_solve_args, run_benchmark, device_info, fmt, load_note
from benchmarks.host_loop import host_loop_log_likelihood, pf_drift, vjp_divergence
from benchmarks.nll_analytic import analytic_mixture
from sde_jax.likelihood import hutchinson_probes
from sde_jax.losses import dsm_loss
from sde_jax.nn import ScoreMLP, UNet

SUITE = [["--model", "mlp2d", "--rounds", "3"], ["--model", "unet28", "--rounds", "2"]]


# ------------------------------------------------------------------------------------------ helpers
def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """Run fn and block on its outputs; return (outputs, wall seconds)."""
    out, wall, _ = timed_cpu(fn, *args, **kwargs)
    return out, wall


def timed_cpu(fn: Callable, *args, **kwargs) -> tuple[Any, float, float]:
    """(outputs, wall seconds, process CPU seconds). CPU time is robust to other processes on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - wall, time.process_time() - cpu


def perturbed_params(params: Any, key: jax.Array, scale: float) -> Any:
    """params + scale * N(0, 1) on every leaf (the networks zero-initialise their output layers)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


@functools.partial(jax.jit, static_argnums=1)
def forward_jvp(score: Any, sde: Any, y: jax.Array, t: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One stage of ours: the PF drift and its JVP with v in one pass. t is an argument, as inside the solve (a
    constant t would let XLA fold the time embedding away)."""
    return jax.jvp(lambda z: sj.probability_flow_drift(sde, score, z, t), (y,), (v,))


def pass_costs(score: Any, sde: Any, x: jax.Array, probe: jax.Array, repeats: int = 20) -> dict:
    """Process CPU seconds per call of the compiled pieces: forward (drift), forward + JVP (ours, one per stage) and
    the reference's divergence grad_x <drift, v> . v (a VJP; the host loop pays forward + VJP per evaluation)."""
    t = jnp.full((x.shape[0],), 0.5, x.dtype)
    fns = {"forward": lambda: pf_drift(score, sde, x, t), "forward_jvp": lambda: forward_jvp(score, sde, x, t, probe),
           "vjp_divergence": lambda: vjp_divergence(score, sde, x, t, probe)}
    out = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn())
        cpu = time.process_time()
        for _ in range(repeats):
            jax.block_until_ready(fn())
        out[name] = (time.process_time() - cpu) / repeats
    return out


def bare_stage_seconds(score: Any, sde: Any, x: jax.Array, probe: jax.Array, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one compiled forward + JVP of the PF drift on the same batch, after compilation."""
    t = jnp.full((x.shape[0],), 0.5, x.dtype)
    jax.block_until_ready(forward_jvp(score, sde, x, t, probe))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        jax.block_until_ready(forward_jvp(score, sde, x, t, probe))
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


# ------------------------------------------------------------------------------------------- models
def fit_mlp(mix: sj.GaussianMixture, sde: Any, steps: int, key: jax.Array, batch: int = 256) -> tuple[Any, Any]:
    """A ScoreMLP fitted briefly by denoising score matching (``sde_jax.losses.dsm_loss``: eps-prediction,
    t ~ U[1e-5, T]) to ``mix``, with Adam."""
    model = ScoreMLP()
    params = model.init(key, jnp.zeros((1, mix.dim)), jnp.ones((1,)))
    loss_fn = dsm_loss(model.apply, sde, "eps", eps=1e-5)
    opt = optax.adam(2e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s, k):
        k_x, k_n = jax.random.split(k)
        x0 = mix.sample(k_x, batch)
        val, grad = jax.value_and_grad(lambda q: loss_fn(q, x0, jax.random.split(k_n, batch))[0])(p)
        upd, s = opt.update(grad, s)
        return optax.apply_updates(p, upd), s, val

    for i in range(steps):
        params, state, val = step(params, state, jax.random.fold_in(key, i))
        if i % 25 == 0:
            float(val)  # host sync: keep the dispatch queue short
    return model, params


def compare_model(name: str, sde: Any, key: jax.Array, fit_steps: int) -> tuple[Any, Any, jax.Array, dict]:
    """(model, params, batch, notes) for the speed comparison."""
    if name == "mlp2d":
        mix, _ = analytic_mixture("gmm8gauss")
        model, params = fit_mlp(mix, sde, fit_steps, jax.random.fold_in(key, 0))
        x = mix.sample(jax.random.fold_in(key, 1), 128)
        return model, params, x, {"model": "sde_jax.nn.ScoreMLP() (width 256, depth 3)",
                                  "params": f"fitted by DSM for {fit_steps} steps to gmm8gauss"}
    if name == "unet28":
        model = UNet(ch=24)
        x = jax.random.uniform(jax.random.fold_in(key, 1), (4, 28, 28, 1), minval=-1.0, maxval=1.0)
        params = model.init(jax.random.fold_in(key, 0), x, jnp.ones((4,)))
        params = perturbed_params(params, jax.random.fold_in(key, 2), 0.003)
        return model, params, x, {"model": "sde_jax.nn.UNet(ch=24) on 28x28x1",
                                  "params": "random init + 0.003 N(0,1) on every leaf (zero-init layers made live)"}
    raise ValueError(f"unknown --model {name!r}; choose mlp2d or unet28.")


# ---------------------------------------------------------------------------------------------- run
def summarise_ours(runs: list, bare: list, t_first: float, recompiled: bool) -> dict:
    """Minima over rounds (interference from other processes only ever adds time)."""
    (lp, info) = runs[0][0]
    nfe = int(info["nfe"])
    wall, cpu = min(r[1] for r in runs), min(r[2] for r in runs)
    bare_wall, bare_cpu = min(b[0] for b in bare), min(b[1] for b in bare)
    return {
        "logp": np.asarray(lp), "nfe": nfe, "seconds": wall, "cpu_seconds": cpu, "seconds_first_call": t_first,
        "second_call_recompiled": recompiled,
        "seconds_per_stage": wall / nfe, "seconds_bare_forward_jvp": bare_wall,
        "stage_overhead_vs_bare": wall / nfe / bare_wall - 1.0,
        "cpu_seconds_per_stage": cpu / nfe, "cpu_seconds_bare_forward_jvp": bare_cpu,
        "stage_overhead_vs_bare_cpu_time": cpu / nfe / bare_cpu - 1.0,
    }


def new_params_cost(model: Any, params: Any, sde: Any, x: jax.Array, key: jax.Array, kw: dict) -> dict:
    """New parameters of the same shapes (a new ``sj.score_fn``): seconds of the call and whether it compiled."""
    score = sj.score_fn(model.apply, perturbed_params(params, jax.random.key(99), 1e-3), sde, "eps")
    with count_compiles() as compiles:
        _, seconds = timed(sj.log_likelihood, score, sde, x, key, **kw)
    return {"seconds_new_params": seconds, "new_params_compiled": bool(compiles)}


def run(args: argparse.Namespace) -> dict:
    sde = sj.get_sde(args.sde)
    key = jax.random.key(args.seed)
    model, params, x, notes = compare_model(args.model, sde, key, args.fit_steps)
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
    score = sj.score_fn(model.apply, params, sde, "eps")
    kw = dict(eps=args.eps, rtol=args.rtol, atol=args.atol)
    probe_key = jax.random.fold_in(key, 3)
    probe = hutchinson_probes(probe_key, x.shape, 1, "rademacher", x.dtype)[0]  # the probe ours draws too
    d = math.prod(x.shape[1:])
    solvers = args.solvers.split(",")

    # Warm-up: compile ours (first calls), and the baseline's two compiled functions with a short solve.
    t_first = {s: timed(sj.log_likelihood, score, sde, x, probe_key, solver=s, **kw)[1] for s in solvers}
    host_loop_log_likelihood(score, sde, x, probe, eps=args.eps, rtol=1e-2, atol=1e-2)
    # Rounds: the host loop, then each of our solvers followed by as many bare forward+JVP calls as it has stages,
    # so that the timings being compared span similar stretches of the (shared) machine's load.
    host_runs, runs, bare, costs = [], {s: [] for s in solvers}, {s: [] for s in solvers}, []
    recompiled = {s: False for s in solvers}
    for _ in range(args.rounds):
        costs.append(pass_costs(score, sde, x, probe))
        host_runs.append(timed_cpu(host_loop_log_likelihood, score, sde, x, probe, **kw))
        for s in solvers:
            with count_compiles() as compiles:
                runs[s].append(timed_cpu(sj.log_likelihood, score, sde, x, probe_key, solver=s, **kw))
            recompiled[s] |= bool(compiles)
            bare[s].append(bare_stage_seconds(score, sde, x, probe, int(runs[s][-1][0][1]["nfe"])))
    (lp_ref, nfe_ref) = host_runs[0][0]
    t_ref, cpu_ref = min(r[1] for r in host_runs), min(r[2] for r in host_runs)

    tight = None
    if args.model == "mlp2d":  # per-example solver error at rtol = atol = 1e-5, against a 1e-7 Tsit5 solve
        tight = np.asarray(sj.log_likelihood(score, sde, x, probe_key, eps=args.eps, rtol=1e-7, atol=1e-7)[0])
    ours = {}
    for s in solvers:
        r = summarise_ours(runs[s], bare[s], t_first[s], recompiled[s])
        lp = r.pop("logp")
        r.update(
            nll_nats_per_dim=float(-lp.mean() / d),
            max_abs_diff_vs_host_loop_nats_per_dim=float(np.abs(lp - lp_ref).max() / d),
            mean_diff_vs_host_loop_bpd=float(abs(lp.mean() - lp_ref.mean()) / d / math.log(2)),
            speedup=t_ref / r["seconds"], speedup_cpu_time=cpu_ref / r["cpu_seconds"],
        )
        if tight is not None:
            r["max_abs_err_vs_tight_nats_per_dim"] = float(np.abs(lp - tight).max() / d)
        ours[s] = r
    host = {"solver": "scipy RK45", "nfe": nfe_ref, "network_passes": 2 * nfe_ref, "seconds": t_ref,
            "cpu_seconds": cpu_ref, "nll_nats_per_dim": float(-lp_ref.mean() / d), "compiled_once": True}
    if tight is not None:
        host["max_abs_err_vs_tight_nats_per_dim"] = float(np.abs(lp_ref - tight).max() / d)
    first = ours[solvers[0]]
    result = {
        "kind": "compare",
        "dataset": args.model,
        **notes,
        "n_params": int(n_params),
        "batch_shape": list(x.shape),
        "ours": ours,
        "host_loop": host,
        "cpu_seconds_per_call": {k: min(c[k] for c in costs) for k in costs[0]},
        "n_examples": int(x.shape[0]),
        "nfe_mean": float(first["nfe"]),
        "seconds": first["seconds"],
        "device": device_info(),
        "train_steps": args.fit_steps if args.model == "mlp2d" else 0,
        "settings": {"sde": args.sde, "divergence": "hutchinson (1 Rademacher probe, shared)",
                     "solvers": args.solvers, "host_loop_solver": "scipy RK45", "rounds": args.rounds,
                     "seed": args.seed, **kw},
    }
    if args.model == "mlp2d":
        result.update(new_params_cost(model, params, sde, x, probe_key, kw))
    return result


# ------------------------------------------------------------------------------------------- README
def readme_section(rows: list[tuple[str, dict]]) -> str:
    """The speed table of every compare record, and its per-model notes."""
    out = ["## PF-ODE likelihood speed against the reference's host loop (`python -m benchmarks.nll_compare "
           "--suite`)", "",
           "Ours (one compiled diffrax solve, one fused forward+JVP per stage) vs the reference's host loop (scipy "
           "RK45, a jitted drift and a jitted VJP divergence per evaluation: two passes), same model, batch and "
           "probe, rtol = atol = 1e-5. Dopri5 is RK45's tableau (like for like); Tsit5 is our default. Speedups "
           "in wall time and in process CPU time (robust to the other processes on this shared machine). Bare = "
           "one jitted forward+JVP call of the same network on the same batch.", "",
           "| model | params | batch | solver | NLL/dim | NLL/dim host | mean diff (bpd) | NFE | NFE host "
           "(x2 passes) | s | s host | speedup wall | speedup CPU | s/stage vs bare, wall | CPU | recompiles | "
           "device |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in rows:
        h = r["host_loop"]
        for solver, o in r["ours"].items():
            out.append(
                f"| {r['dataset']} | {r['n_params'] / 1e6:.2f}M | {'x'.join(map(str, r['batch_shape']))} | "
                f"{solver} | {o['nll_nats_per_dim']:.4f} | {h['nll_nats_per_dim']:.4f} | "
                f"{fmt(o['mean_diff_vs_host_loop_bpd'], 4)} | {o['nfe']} | {h['nfe']} | {o['seconds']:.2f} | "
                f"{h['seconds']:.2f} | {o['speedup']:.2f}x | {o['speedup_cpu_time']:.2f}x | "
                f"{o['seconds_per_stage'] * 1e3:.1f} vs {o['seconds_bare_forward_jvp'] * 1e3:.1f} ms "
                f"({100 * o['stage_overhead_vs_bare']:+.0f}%) | {o['cpu_seconds_per_stage'] * 1e3:.1f} vs "
                f"{o['cpu_seconds_bare_forward_jvp'] * 1e3:.1f} ms ({100 * o['stage_overhead_vs_bare_cpu_time']:+.0f}%)"
                f" | {'yes' if o['second_call_recompiled'] else 'no'} | {r['device']} |")
    for n, r in rows:
        if "max_abs_err_vs_tight_nats_per_dim" in r["host_loop"]:
            errs = ", ".join(f"{k} {fmt(o['max_abs_err_vs_tight_nats_per_dim'], 4)}" for k, o in r["ours"].items())
            out += ["", f"Per-example solver error at rtol = atol = {r['settings']['rtol']:g} ({r['dataset']}; max over "
                    f"the batch, nats/dim, against a Tsit5 1e-7 solve): {errs}, host loop "
                    f"{fmt(r['host_loop']['max_abs_err_vs_tight_nats_per_dim'], 4)}."]
        if not r["host_loop"].get("compiled_once"):
            out += ["", f"Caveat ({r['dataset']}): this record's host-loop times include compiling its two jitted "
                    "functions on every call (the baseline rebuilt them per call; fixed since, not yet re-run), so its "
                    "speedups are overstated."]
        c = r["cpu_seconds_per_call"]
        out += ["", f"Per-call CPU cost ({r['dataset']}): forward {c['forward'] * 1e3:.1f} ms, forward+JVP (ours, "
                f"per stage) {c['forward_jvp'] * 1e3:.1f} ms, VJP divergence {c['vjp_divergence'] * 1e3:.1f} ms: the "
                f"host loop pays forward + VJP = {(c['forward'] + c['vjp_divergence']) * 1e3:.1f} ms per evaluation "
                f"({(c['forward'] + c['vjp_divergence']) / c['forward_jvp']:.2f}x ours) plus its Python round-trip."]
        if "seconds_new_params" in r:
            first = r["ours"].get("tsit5", next(iter(r["ours"].values())))  # new_params_cost uses the default
            compiled = "compiled again" if r["new_params_compiled"] else "no compilation"
            out += ["", f"Compilation ({r['dataset']}): first call {first['seconds_first_call']:.1f} s, later calls "
                    f"{first['seconds']:.2f} s; new parameters of the same network (a new `sj.score_fn`): "
                    f"{r['seconds_new_params']:.2f} s, {compiled}."]
    return "\n".join(out + [""] + load_note(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp2d", help="mlp2d | unet28")
    p.add_argument("--suite", action="store_true", help="run both models (SUITE)")
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
    p.add_argument("--fit_steps", type=int, default=400, help="DSM steps for the mlp2d model")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (minima reported)")
    p.add_argument("--solvers", default="dopri5,tsit5", help="our solvers to time (comma-separated names)")
    add_solve_args(p, "nll_compare_<model>")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv), parse_args, run, lambda a: f"nll_compare_{a.model}", "nll_compare_", readme_section, "nll_compare",
                  SUITE)


if __name__ == "__main__":
    main()
