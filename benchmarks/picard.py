"""Parallel-in-time sampling (``method="picard"``, ParaDiGMS) against the sequential sampler it solves for.

    python -m benchmarks.picard                     # 1000 steps, DDIM and ancestral, tol 0.01 / 0.1 / 0.3
    python -m benchmarks.picard --devices 4         # the window sharded over 4 simulated CPU devices (subprocess)

On the sharp 6-D mixture of ``benchmarks/samplers.py`` with its exact score (VP, N = 1000 steps): sliced W1 to
exact samples of the sequential and the Picard run beside the noise floor, the parallel depth (sequential batched
score calls) and the total NFE, the per-sample deviation from the sequential samples (median, 99th percentile,
max), and wall times measured side by side in one process (on a CPU the window's batched call is not free, so the
wall-time ratio says little about a GPU; the depth is the device-independent number).
Writes ``benchmarks/results/picard[_devices4].json`` and the table in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj
from benchmarks.common import fmt, load_note, machine_info, write_report
from benchmarks.samplers import sharp_mixture

TOLS = (0.01, 0.1, 0.3)


def _timed(fn):
    fn()  # compile
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def run(args) -> dict[str, Any]:
    mix, sde = sharp_mixture(), sj.VPSDE(N=args.steps + 1)
    score = mix.score_fn(sde)
    n, shape = args.n, (args.n, mix.dim)
    sw = jax.jit(lambda x, y: sj.sliced_wasserstein(jax.random.key(3), x, y))
    ref = mix.sample(jax.random.key(1), n)
    floor = float(np.mean([float(sw(mix.sample(jax.random.key(100 + i), n), ref)) for i in range(8)]))
    key = jax.random.key(args.seed)
    result = {"machine": machine_info(), "devices": args.devices, "steps": args.steps, "window": args.window,
              "n_samples": n, "noise_floor": floor, "sde": f"VP (beta 0.1 -> 20), N = {args.steps + 1}",
              "mixture": "6 isotropic components, std 0.1, means 1.5 N(0, I) (key 6), centred; 6-D", "runs": []}
    for base in args.bases:
        (seq, info_s), t_seq = _timed(lambda: sj.sample(score, sde, key, shape, method=base, steps=args.steps))
        w_seq = float(sw(seq, ref))
        v = sum_noise_variance(sde, args.steps)
        print(f"{base}: sequential W1/floor {w_seq / floor:.2f}, {t_seq:.2f} s", flush=True)
        for tol in args.tols:
            (par, info), t_par = _timed(lambda: sj.sample(
                score, sde, key, shape, method="picard", base=base, steps=args.steps, window=args.window, tol=tol,
                devices=args.devices))
            dev = np.asarray(jnp.sqrt(jnp.mean((par - seq) ** 2, axis=1)))
            r = {"base": base, "tol": tol, "depth": int(info["sweeps"]), "nfe": int(info["nfe"]),
                 "nfe_sequential": int(info_s["nfe"]), "w1_sequential": w_seq, "w1_picard": float(sw(par, ref)),
                 "deviation_median": float(np.median(dev)), "deviation_q99": float(np.quantile(dev, 0.99)),
                 "deviation_max": float(dev.max()), "deviation_bound": tol * float(np.sqrt(v)),
                 "switched_mode": float(np.mean(dev > 0.3)), "seconds_sequential": t_seq, "seconds_picard": t_par}
            result["runs"].append(r)
            print(f"  tol {tol}: depth {r['depth']} (N/{args.steps / r['depth']:.1f}), NFE {r['nfe']}, W1/floor "
                  f"{r['w1_picard'] / floor:.2f}, deviation median {r['deviation_median']:.1e} q99 "
                  f"{r['deviation_q99']:.1e} max {r['deviation_max']:.2f}, {t_par:.2f} s", flush=True)
    return result


def sum_noise_variance(sde: sj.LinearSDE, steps: int) -> float:
    """sum_k v_k over the uniform grid: the squared bound tol^2 sum_k v_k on the accumulated accepted changes
    (per dimension, if the errors of the steps added without amplification)."""
    ts = sj.sampling.time_grid(sde, steps, sde.T, sde.eps, "uniform")
    return float(jnp.sum(sj.sampling.posterior_variance(sde, ts[:-1], ts[1:])))


def render(rows: list[tuple[str, dict]]) -> str:
    out = ["| devices | base | tol | depth (N = 1000) | NFE | W1 / floor (sequential) | W1 / floor (Picard) | "
           "deviation median / q99 / max | bound tol sqrt(sum v) | samples that switched mode | wall time "
           "sequential / Picard |", "|" + "---|" * 11]
    for _, rec in rows:
        fl = rec["noise_floor"]
        for r in rec["runs"]:
            out.append(f"| {rec['devices']} | {r['base']} | {r['tol']} | {r['depth']} (N/{rec['steps'] / r['depth']:.1f}) "
                       f"| {r['nfe']} | {r['w1_sequential'] / fl:.2f} | {r['w1_picard'] / fl:.2f} | "
                       f"{fmt(r['deviation_median'], 1)} / {fmt(r['deviation_q99'], 1)} / {r['deviation_max']:.2f} | "
                       f"{r['deviation_bound']:.2f} | {100 * r['switched_mode']:.2f}% | "
                       f"{r['seconds_sequential']:.2f} s / {r['seconds_picard']:.2f} s |")
    m = rows[0][1]["machine"] if rows else {}
    where = f"Machine: {m.get('cpu', '?')} ({m.get('cpu_cores', '?')} cores), jax {m.get('jax', '?')}, CPU only."
    note = load_note(rows, "each time is one run after compilation, sequential and Picard side by side")
    return "\n".join(out + ["", " ".join([where, *note]).strip()])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--bases", nargs="+", default=["ddim", "ancestral"])
    p.add_argument("--tols", type=float, nargs="+", default=list(TOLS))
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_readme", action="store_true")
    args = p.parse_args(argv)
    if args.devices > jax.local_device_count():  # re-run with simulated CPU devices (set before jax starts)
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
        sys.exit(subprocess.call([sys.executable, "-m", "benchmarks.picard", *(argv or sys.argv[1:])], env=env))
    result = run(args)
    name = "picard" if args.devices == 1 else f"picard_devices{args.devices}"
    write_report(name, result, "picard", render, "picard", readme=not args.no_readme)


if __name__ == "__main__":
    main()
