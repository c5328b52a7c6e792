"""Sampler accuracy against NFE on Gaussian mixtures with the exact score.

    python -m benchmarks.samplers            # the full table (~5 min on 2 CPU cores)
    python -m benchmarks.samplers --quick    # two budgets, a smoke run

For every sampler of ``sj.sample`` and NFE budget (10, 20, 50, 100, 1000 score evaluations; the number of steps
is chosen so that the sampler spends the budget, plus one for the final Tweedie step), it reports the sliced
Wasserstein-1 distance of ``B`` samples to ``B`` fresh mixture samples, the noise floor (mean distance between
independent mixture sample sets of the same size, 8 pairs) and the wall time per sample after compilation
(``block_until_ready``, best of ``--repeats``). The adaptive probability-flow ODE (Tsit5, rtol = atol = 1e-5) is
one extra row with the NFE it chose.

The exact score is ``GaussianMixture.score_fn`` (closed form, one eigendecomposition per mixture).

Writes ``benchmarks/results/samplers.json`` and the section between the ``samplers`` markers of
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj
from benchmarks.common import machine_info, write_readme_section

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "samplers.json")
README = os.path.join(HERE, "README.md")
BEGIN, END = "<!-- samplers:begin -->", "<!-- samplers:end -->"

BUDGETS = (10, 20, 50, 100, 1000)
SDES = {"vp": sj.VPSDE(), "ve": sj.VESDE(sigma_max=10.0)}  # sigma_max ~ the data's largest pairwise distance
# dimension -> (SDEs, budgets): the full grid in 2-D, a cheaper slice in 8-D (the whole run stays ~5 min on 2 cores)
PLAN = {2: (("vp", "ve"), BUDGETS), 8: (("vp",), (10, 100, 1000))}

# label -> (method, options for a budget of b score evaluations (before the Tweedie step), SDEs)
SAMPLERS: dict[str, tuple[str, Callable[[int], dict], tuple[str, ...]]] = {
    "sde euler-maruyama": ("sde", lambda b: {"steps": b}, ("vp", "ve")),
    "sde shark": ("sde", lambda b: {"steps": b // 2, "solver": "shark"}, ("vp", "ve")),
    "ode euler (uniform)": ("ode", lambda b: {"solver": "euler", "steps": b}, ("vp", "ve")),
    "ode heun (edm rho=7)": ("ode", lambda b: {"solver": "heun", "steps": b // 2, "grid": "edm"}, ("vp", "ve")),
    "pc reverse-diffusion + langevin": ("pc", lambda b: {"steps": b // 2}, ("vp", "ve")),
    "ancestral": ("ancestral", lambda b: {"steps": min(b, 999)}, ("vp", "ve")),
    "ddim eta=0": ("ddim", lambda b: {"steps": b}, ("vp",)),
}
ADAPTIVE = ("ode tsit5 adaptive", "ode", {"solver": "tsit5", "rtol": 1e-5, "atol": 1e-5})


def centred(mix: sj.GaussianMixture) -> sj.GaussianMixture:
    """The mixture shifted to mean zero. The samplers start from the N(0, prior_std^2 I) prior; for VE the true
    p_T keeps the data mean m, and the deterministic samplers carry that mismatch through as a bias of about
    m sigma_data / sigma_max, which would otherwise dominate their error here."""
    mean = mix.weights @ mix.means
    return sj.GaussianMixture(mix.weights, mix.means - mean, mix.covs)


def run_one(score, sde, shape, method: str, options: dict, ref, floor: float, repeats: int) -> dict[str, Any]:
    """Compile and run once (accuracy on seed 0), then time ``repeats`` more runs with new keys."""
    t0 = time.perf_counter()
    x, info = sj.sample(score, sde, jax.random.key(0), shape, method=method, **options)
    x = jax.block_until_ready(x)
    first = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(sj.sample(score, sde, jax.random.key(r + 1), shape, method=method, **options))
        times.append(time.perf_counter() - t0)
    sw = float(sj.sliced_wasserstein(jax.random.key(3), x, ref))
    return {
        "method": method,
        "options": options,
        "nfe": int(info["nfe"]),
        "sliced_w1": sw,
        "ratio_to_floor": sw / floor,
        "us_per_sample": 1e6 * min(times) / shape[0],
        "first_call_s": first,
        "finite": bool(jnp.all(jnp.isfinite(x))),
    }


def run(plan: dict[int, tuple[tuple[str, ...], tuple[int, ...]]], n: int, repeats: int) -> dict[str, Any]:
    all_budgets = sorted({b for _, bs in plan.values() for b in bs})
    results = {"machine": machine_info(), "n_samples": n, "budgets": all_budgets, "runs": []}
    for dim, (sde_names, budgets) in plan.items():
        mix = centred(sj.random_mixture(jax.random.key(dim), 6, dim))
        ref = mix.sample(jax.random.key(1), n)
        floors = [
            float(sj.sliced_wasserstein(jax.random.key(3), mix.sample(jax.random.key(100 + i), n), ref)) for i in range(8)
        ]
        floor = float(np.mean(floors))
        for sde_name in sde_names:
            sde = SDES[sde_name]
            score = mix.score_fn(sde)
            rows = [(label, m, f(b), b) for label, (m, f, ok) in SAMPLERS.items() if sde_name in ok for b in budgets]
            rows.append((ADAPTIVE[0], ADAPTIVE[1], ADAPTIVE[2], None))
            for label, method, options, budget in rows:
                r = run_one(score, sde, (n, dim), method, options, ref, floor, repeats)
                r.update(dim=dim, sde=sde_name, sampler=label, budget=budget, noise_floor=floor,
                         floor_std=float(np.std(floors)))
                results["runs"].append(r)
                print(f"{dim}-D {sde_name:2s} {label:32s} budget={budget!s:5s} nfe={r['nfe']:5d} "
                      f"W1/floor={r['ratio_to_floor']:7.2f} {r['us_per_sample']:8.1f} us/sample", flush=True)
    results["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    return results


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "## Samplers (`python -m benchmarks.samplers`)",
        "",
        f"Exact mixture score, {results['n_samples']} samples per run; each cell is sliced W1 to fresh mixture samples "
        "divided by the noise floor (mean W1 between independent mixture sets of the same size; they scatter by "
        "~30 %, so ~1x is as good as it gets) and the wall time per sample after compilation. Columns are NFE "
        "budgets (score evaluations, +1 for the final Tweedie step; exact counts in the JSON). "
        "Mixtures: `random_mixture` (6 components, full covariances), centred. "
        "SDEs: VP (beta 0.1 -> 20) and VE (sigma 0.01 -> 10), eps = sde.eps. "
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, {', '.join(m['devices'])}, jax {m['jax']}, "
        f"diffrax {m['diffrax']}; load average {m['load_average_1m_start']:.1f} -> {m['load_average_1m_end']:.1f} "
        "(shared machine: times are the best of the repeats).",
        "",
    ]
    runs = results["runs"]
    for dim in sorted({r["dim"] for r in runs}):
        for sde in [s for s in SDES if any(r["sde"] == s and r["dim"] == dim for r in runs)]:
            sel = [r for r in runs if r["dim"] == dim and r["sde"] == sde]
            floor = sel[0]["noise_floor"]
            lines += [f"**{dim}-D mixture, {sde.upper()}** (noise floor W1 = {floor:.4f})", ""]
            budgets = sorted({r["budget"] for r in sel if r["budget"] is not None})
            lines += ["| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
                      "|---|" + "---|" * len(budgets)]
            for label in dict.fromkeys(r["sampler"] for r in sel if r["budget"] is not None):
                cells = []
                for b in budgets:
                    hit = [r for r in sel if r["sampler"] == label and r["budget"] == b]
                    cells.append(f"{hit[0]['ratio_to_floor']:.2f}x, {hit[0]['us_per_sample']:.0f} us" if hit else "")
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            for r in [r for r in sel if r["budget"] is None]:
                lines.append(f"| {r['sampler']} (rtol = atol = 1e-5) | NFE = {r['nfe']}: {r['ratio_to_floor']:.2f}x, "
                             f"{r['us_per_sample']:.0f} us |" + " |" * (len(budgets) - 1))
            lines.append("")
    return "\n".join(lines)


def write_readme(section: str) -> None:
    write_readme_section(section, BEGIN, END, README)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="budgets 10 and 100 in 2-D only, no files written")
    p.add_argument("--dims", type=int, nargs="+", default=list(PLAN), choices=list(PLAN))
    p.add_argument("--n", type=int, default=2000, help="samples per run")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    if a.quick:
        run({2: (("vp", "ve"), (10, 100))}, a.n, 1)
        return
    results = run({d: PLAN[d] for d in a.dims}, a.n, a.repeats)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    write_readme(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
