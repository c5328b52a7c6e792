"""Distillation on a toy 2-D mixture with its exact score as the teacher: consistency distillation (CD), consistency
training (CT) and progressive distillation (PD), against the exact probability-flow ODE map.

    python -m benchmarks.distill_toy

Data: 8 sharp components (std 0.08) on the unit circle, VP SDE. For each method: the RMS error of the one-step map
x_T -> x_0 against the exact ODE map at 1000 held-out x_T (tight adaptive solve), and the sliced W1 of 1- and 2-step
samples to exact samples, beside the noise floor and the teacher's own samples (the exact score with DDIM at the same
step counts, and with the adaptive ODE). PD starts from the exact score with DDIM at 64 steps and halves to 1;
each round's student (an "x0" network) is measured by the same map error. Writes
``benchmarks/results/distill_toy.json`` and the table in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj
from benchmarks.common import machine_info, write_report
from sde_jax.distill import cd_loss, consistency_model, ct_levels, ct_loss, fit, pd_loss
from sde_jax.nn.mlp import ScoreMLP
from sde_jax.sampling import heun_step


def run(args) -> dict:
    sde = sj.VPSDE()
    ang = jnp.arange(8) * 2 * jnp.pi / 8
    mix = sj.isotropic_mixture(jnp.stack([jnp.cos(ang), jnp.sin(ang)], 1), 0.08)
    score = mix.score_fn(sde)
    net = ScoreMLP(width=args.width, depth=3)
    params = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    x_t = sde.prior_sample(jax.random.key(5), (1000, 2))
    x_exact, _ = sj.decode(score, sde, x_t, rtol=1e-6, atol=1e-6)
    n = 4000
    ref = mix.sample(jax.random.key(1), n)
    sw = lambda a, b: float(sj.sliced_wasserstein(jax.random.key(3), a, b))
    floor = float(np.mean([sw(mix.sample(jax.random.key(10 + i), n), ref) for i in range(8)]))
    rms = lambda a: float(jnp.sqrt(jnp.mean(jnp.sum((a - x_exact) ** 2, axis=1))))
    batch_fn = lambda k: mix.sample(k, 256)
    prior = sde.prior_sample(jax.random.key(8), (n, 2))
    rows = []

    def teacher_row(label, method, **options):
        x, info = sj.sample(score, sde, jax.random.key(9), (n, 2), method=method, **options)
        rows.append({"method": label, "nfe": int(info["nfe"]), "w1_ratio": sw(x, ref) / floor})

    teacher_row("teacher: exact score, adaptive PF-ODE", "ode")
    for steps in (1, 2):
        teacher_row(f"teacher: exact score, DDIM {steps} step(s)", "ddim", steps=steps, denoise=False)

    model = consistency_model(net.apply, params, sde, sigma_data=0.7)
    teacher = lambda k, x, t, tn: heun_step(score, sde, k, x, t, tn)
    for label, loss, kw in (
        ("CD (Heun teacher, 40 levels, EMA target 0.95)",
         lambda p, tp, k, x, i: cd_loss(p, tp, model, teacher, k, x, 40), {"target_decay": 0.95}),
        ("CT (improved: pseudo-Huber, log-normal levels, 11 -> 1281 levels)",
         lambda p, tp, k, x, i: ct_loss(p, model, k, x, ct_levels(i, args.steps), 1281), {}),
    ):
        t0 = time.perf_counter()
        res = fit(loss, params, batch_fn, jax.random.key(1), steps=args.steps, lr=1e-3, **kw)
        m = model.with_params(res.ema_params)
        err = rms(m(x_t, jnp.full((1000,), sde.T)))
        one, _ = sj.sample(m, sde, jax.random.key(7), (n, 2), method="consistency", steps=1)
        two, _ = sj.sample(m, sde, jax.random.key(7), (n, 2), method="consistency", ts=[sde.T, args.t_mid])
        rows.append({"method": label, "map_rms": err, "w1_ratio_1": sw(one, ref) / floor,
                     "w1_ratio_2": sw(two, ref) / floor, "train_steps": args.steps,
                     "train_seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)

    teacher_score, steps = score, 64
    while steps > 1:
        steps //= 2
        student = sj.score_fn(net.apply, params, sde, "x0")
        t0 = time.perf_counter()
        res = fit(lambda p, tp, k, x, i, t=teacher_score, s=steps: pd_loss(p, student, t, k, x, s), params,
                  batch_fn, jax.random.key(10 + steps), steps=args.pd_steps, lr=1e-3)
        student = sj.score_fn(net.apply, res.ema_params, sde, "x0")
        x_map, _ = sj.sampling.sample_ddim(student, sde, jax.random.key(0), x_t, steps=steps)
        x, _ = sj.sampling.sample_ddim(student, sde, jax.random.key(0), prior, steps=steps)
        rows.append({"method": f"PD student, {steps} DDIM step(s)", "nfe": steps, "map_rms": rms(x_map),
                     "w1_ratio": sw(x, ref) / floor, "train_steps": args.pd_steps,
                     "train_seconds": time.perf_counter() - t0})
        print(rows[-1], flush=True)
        teacher_score, params = student, res.ema_params
    return {"machine": machine_info(), "noise_floor": floor, "n_samples": n, "rows": rows, "t_mid": args.t_mid,
            "data": "8 isotropic components (std 0.08) on the unit circle; VP SDE", "width": args.width}


def render(records) -> str:
    out = []
    for _, r in records:
        out += [f"Noise floor (sliced W1, {r['n_samples']} samples): {r['noise_floor']:.4f}. MLP width {r['width']}, "
                f"2-step consistency sampling re-noises at t = {r['t_mid']}.", "",
                "| method | map RMS to the exact ODE map | W1 / floor (1 step) | W1 / floor (2 steps) | training |",
                "|---|---|---|---|---|"]
        for x in r["rows"]:
            if "w1_ratio_1" in x:
                out.append(f"| {x['method']} | {x['map_rms']:.3f} | {x['w1_ratio_1']:.2f} | {x['w1_ratio_2']:.2f} | "
                           f"{x['train_steps']} steps, {x['train_seconds']:.0f} s |")
            elif "map_rms" in x:
                out.append(f"| {x['method']} | {x['map_rms']:.3f} | {x['w1_ratio']:.2f} ({x['nfe']} NFE) | - | "
                           f"{x['train_steps']} steps, {x['train_seconds']:.0f} s |")
            else:
                out.append(f"| {x['method']} | - | {x['w1_ratio']:.2f} ({x['nfe']} NFE) | - | - |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--pd_steps", type=int, default=2000)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--t_mid", type=float, default=0.3)
    p.add_argument("--no_readme", action="store_true")
    args = p.parse_args(argv)
    write_report("distill_toy", run(args), "distill_toy", render, "distill_toy", readme=not args.no_readme)


if __name__ == "__main__":
    main()
