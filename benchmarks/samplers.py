"""Sampler accuracy against NFE on Gaussian mixtures with the exact score.

    python -m benchmarks.samplers               # the full table (~5 min on 2 CPU cores)
    python -m benchmarks.samplers --quick       # two budgets, a smoke run
    python -m benchmarks.samplers --nfe-table   # few-step table on a sharp 6-D mixture (~8 min on 2 CPU cores)

For every sampler of ``sj.sample`` and NFE budget (10, 20, 50, 100, 1000 score evaluations; the number of steps
is chosen so that the sampler spends the budget, plus one for the final Tweedie step), it reports the sliced
Wasserstein-1 distance of ``B`` samples to ``B`` fresh mixture samples, the noise floor (mean distance between
independent mixture sample sets of the same size, 8 pairs) and the wall time per sample after compilation
(``block_until_ready``, best of ``--repeats``). The adaptive probability-flow ODE (Tsit5, rtol = atol = 1e-5) is
one extra row with the NFE it chose.

The exact score is ``GaussianMixture.score_fn`` (closed form, one eigendecomposition per mixture).

Writes ``benchmarks/results/samplers.json`` and the section between the ``samplers`` markers of
``benchmarks/README.md``.

``--nfe-table``: every method at 5, 6, 8, 10, 15, 20 and 50 score evaluations (the final Tweedie step included;
two-evaluation steps take the largest step count within the budget) on a sharp, well-separated 6-D mixture (6
isotropic components of std 0.1, means of std 1.5, centred; VP SDE), where broad mixtures would hide sampler error.
Each cell is the sliced W1 of 4000 samples to 4000 exact ones, averaged over 3 seeds, divided by the noise floor
(mean W1 between independent exact sets); 1000-step Euler–Maruyama and the adaptive PF-ODE are rows of the same
table. Writes ``samplers_fast.json`` (``benchmarks.common.write_report``) and the ``samplers_fast`` README section.
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
from benchmarks.common import machine_info, write_readme_section, write_report

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


# ----------------------------------------------------------------------- accuracy per NFE, few steps
NFE_BUDGETS = (5, 6, 8, 10, 15, 20, 50)
FAST_SEEDS = (0, 1, 2)


def _one(steps_per_eval: int, **options) -> Callable[[int], dict]:
    """Options for a budget of b evaluations, the Tweedie step included: steps = (b - 1) // steps_per_eval."""
    return lambda b: {"steps": (b - 1) // steps_per_eval, **options}


# label -> (method, options for a budget b). Defaults of each method first, then the quadratic time grid (DDIM's
# choice, Song et al. 2021, App. D.2), which suits this sharp VP problem best.
FAST_SAMPLERS: dict[str, tuple[str, Callable[[int], dict]]] = {
    "sde euler-maruyama": ("sde", _one(1)),
    "sde shark": ("sde", _one(2, solver="shark")),
    "ode euler (uniform)": ("ode", _one(1, solver="euler")),
    "ode heun (diffrax, edm grid)": ("ode", _one(2, solver="heun", grid="edm")),
    "pc reverse-diffusion + langevin": ("pc", _one(2)),
    "ancestral": ("ancestral", _one(1)),
    "ddim (uniform)": ("ddim", _one(1)),
    "heun (EDM Alg. 1, edm grid)": ("heun", _one(2)),
    "heun + churn (s_churn = 5)": ("heun", _one(2, s_churn=5.0)),
    "dpmpp_2m (logsnr)": ("dpmpp_2m", _one(1)),
    "dpmpp_3m (logsnr)": ("dpmpp_3m", _one(1)),
    "dpmpp_2m_sde (logsnr)": ("dpmpp_2m_sde", _one(1)),
    "unipc order 2 bh2 (logsnr)": ("unipc", _one(1)),
    "unipc order 3 bh2 (logsnr)": ("unipc", _one(1, order=3)),
    "ddim (quadratic)": ("ddim", _one(1, grid="quadratic")),
    "dpmpp_2m (quadratic)": ("dpmpp_2m", _one(1, grid="quadratic")),
    "dpmpp_3m (quadratic)": ("dpmpp_3m", _one(1, grid="quadratic")),
    "unipc order 2 bh2 (quadratic)": ("unipc", _one(1, grid="quadratic")),
    "unipc order 3 bh2 (quadratic)": ("unipc", _one(1, order=3, grid="quadratic")),
    "unipc order 3 bh1 (quadratic)": ("unipc", _one(1, order=3, variant="bh1", grid="quadratic")),
}
FAST_REFERENCES = {  # label -> (method, options): one cell each, at their own NFE
    "sde euler-maruyama, 1000 steps": ("sde", {"steps": 1000}),
    "ode tsit5 adaptive (rtol = atol = 1e-5)": ("ode", {"solver": "tsit5", "rtol": 1e-5, "atol": 1e-5}),
}


def sharp_mixture() -> sj.GaussianMixture:
    """6 isotropic components of std 0.1 in 6-D, means 1.5 N(0, I) (key 6), equal weights, centred."""
    means = 1.5 * jax.random.normal(jax.random.key(6), (6, 6))
    return centred(sj.isotropic_mixture(means, 0.1))


def run_fast(budgets: tuple[int, ...], n: int, seeds: tuple[int, ...]) -> dict[str, Any]:
    """Every sampler of FAST_SAMPLERS at every budget (equal step counts run once), then FAST_REFERENCES."""
    mix, sde = sharp_mixture(), sj.VPSDE()
    score = mix.score_fn(sde)
    sw = jax.jit(lambda x, y: sj.sliced_wasserstein(jax.random.key(3), x, y))
    ref = mix.sample(jax.random.key(1), n)
    floors = [float(sw(mix.sample(jax.random.key(100 + i), n), ref)) for i in range(8)]
    floor = float(np.mean(floors))
    results = {"machine": machine_info(), "n_samples": n, "seeds": list(seeds), "budgets": list(budgets),
               "mixture": "6 isotropic components, std 0.1, means 1.5 N(0, I) (key 6), centred; 6-D",
               "sde": "VP (beta 0.1 -> 20), eps = 1e-3", "noise_floor": floor, "floor_std": float(np.std(floors)),
               "runs": []}
    print(f"noise floor W1 = {floor:.4f} (std {np.std(floors):.4f})", flush=True)

    def measure(label, method, options, budget):
        t0 = time.perf_counter()
        w1 = []
        for seed in seeds:
            x, info = sj.sample(score, sde, jax.random.key(seed), (n, mix.dim), method=method, **options)
            w1.append(float(sw(x, ref)))
        r = {"sampler": label, "method": method, "options": options, "budget": budget, "nfe": int(info["nfe"]),
             "sliced_w1": w1, "ratio_to_floor": float(np.mean(w1)) / floor, "seconds": time.perf_counter() - t0,
             "finite": bool(jnp.all(jnp.isfinite(x)))}
        print(f"{label:34s} budget={budget!s:5s} nfe={r['nfe']:5d} W1/floor={r['ratio_to_floor']:6.2f} "
              f"({r['seconds']:.1f} s)", flush=True)
        return r

    for label, (method, options_for) in FAST_SAMPLERS.items():
        done: dict[int, dict] = {}
        for b in budgets:
            options = options_for(b)
            if options["steps"] < 1:
                continue
            if options["steps"] not in done:
                done[options["steps"]] = measure(label, method, options, b)
            results["runs"].append({**done[options["steps"]], "budget": b})
    for label, (method, options) in FAST_REFERENCES.items():
        results["runs"].append(measure(label, method, options, None))
    results["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    return results


def markdown_fast(rows: list[tuple[str, dict]]) -> str:
    """The ``samplers_fast`` README section from its record(s)."""
    _, res = rows[-1]
    m, runs, budgets = res["machine"], res["runs"], res["budgets"]
    floor = res["noise_floor"]
    lines = [
        "## Few-step samplers: accuracy per NFE (`python -m benchmarks.samplers --nfe-table`)",
        "",
        f"Exact score of a sharp, well-separated 6-D mixture ({res['mixture']}), {res['sde']}. Each cell: sliced W1 of "
        f"{res['n_samples']} samples to {res['n_samples']} exact ones, mean over {len(res['seeds'])} seeds, divided by "
        f"the noise floor W1 = {floor:.4f} (mean W1 between independent exact sets; their scatter is "
        f"{res['floor_std'] / floor:.0%} of it, so ~1.0 is exact). Columns: NFE budgets, the final Tweedie step "
        "included (`steps = NFE - 1`); a method with two evaluations per step takes `(NFE - 1) // 2` steps, and its "
        "cell gives the NFE it used when that is less. Defaults of each method unless the label says otherwise; "
        '`(quadratic)` is `grid="quadratic"`. '
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, jax {m['jax']}, diffrax {m['diffrax']}.",
        "",
        "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for label in dict.fromkeys(r["sampler"] for r in runs if r["budget"] is not None):
        cells = []
        for b in budgets:
            hit = [r for r in runs if r["sampler"] == label and r["budget"] == b]
            cell = "" if not hit else f"{hit[0]['ratio_to_floor']:.2f}" + (
                f" ({hit[0]['nfe']})" if hit[0]["nfe"] != b else "")
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for r in [r for r in runs if r["budget"] is None]:
        lines.append(f"| {r['sampler']} | NFE = {r['nfe']}: {r['ratio_to_floor']:.2f} |" + " |" * (len(budgets) - 1))
    few = [r for r in runs if r["budget"] is not None and r["nfe"] <= 10]
    best = min(few, key=lambda r: r["ratio_to_floor"])
    em = [r for r in runs if r["budget"] is None and r["method"] == "sde"]
    lines += ["", f"Best at <= 10 NFE: {best['sampler']} at NFE {best['nfe']}, {best['ratio_to_floor']:.2f}x the noise "
              "floor" + (f" (1000-step Euler–Maruyama: {em[0]['ratio_to_floor']:.2f}x)." if em else "."), "",
              "Notes: at NFE 5 the multistep rows coincide (4 steps of first and second order: the warm-up and "
              "`lower_order_final`). EDM's Heun spends two evaluations per step, so at <= 9 NFE it crosses "
              "sigma / alpha = 152 (VP at T) to 0.01 in <= 4 steps on the rho = 7 grid. The order of every solver "
              "is measured in `tests/test_fast_samplers.py`.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="budgets 10 and 100 in 2-D only, no files written")
    p.add_argument("--dims", type=int, nargs="+", default=list(PLAN), choices=list(PLAN))
    p.add_argument("--n", type=int, default=2000, help="samples per run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nfe-table", action="store_true", help="the few-step table on the sharp 6-D mixture "
                   "(samplers_fast.json and its README section)")
    a = p.parse_args(argv)
    if a.nfe_table:
        results = run_fast(NFE_BUDGETS, 4000, FAST_SEEDS)
        write_report("samplers_fast", results, "samplers_fast", markdown_fast, "samplers_fast")
        print(markdown_fast([("samplers_fast", results)]))
        return
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
