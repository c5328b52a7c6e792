"""PF-ODE NLL on closed-form Gaussian mixtures with their exact score, against the analytic truth -log p_eps(x),
and the ELBO's gap to the data NLL.

    python -m benchmarks.nll_analytic --dataset gmm8gauss         # 2-D mixture (exact divergence)
    python -m benchmarks.nll_analytic --dataset gmm8d             # 8-D random mixture (exact divergence)
    python -m benchmarks.nll_analytic --dataset gmm64d            # 64-D random mixture (Hutchinson)
    python -m benchmarks.nll_analytic --suite                     # the three above at their standard sizes

Each run writes ``benchmarks/results/nll_analytic_<dataset>_<sde>.json`` and refreshes the table between the
``nll_analytic`` markers of ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj
from benchmarks.common import add_solve_args, run_benchmark, device_info, fmt, load_note

SUITE = [
    ["--dataset", "gmm8gauss", "--n_examples", "512", "--batch_size", "256"],
    ["--dataset", "gmm8d", "--n_examples", "256", "--batch_size", "128"],
    ["--dataset", "gmm64d", "--n_examples", "256", "--batch_size", "128", "--n_t", "64"],
]


def analytic_mixture(name: str) -> tuple[sj.GaussianMixture, str]:
    """Closed-form data sets, centred (the N(0, I) prior mismatch at T is then ~1e-4 nats on average)."""
    if name == "gmm8gauss":
        angles = jnp.arange(8) * (2 * math.pi / 8)
        means = 4.0 / math.sqrt(2) * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
        desc = "8 Gaussians (radius 2.83, std 0.354), as toy2d's 8gaussians"
        return sj.isotropic_mixture(means, 0.5 / math.sqrt(2)), desc
    match = re.fullmatch(r"gmm(\d+)d", name)
    if match:
        dim = int(match.group(1))
        mix = sj.random_mixture(jax.random.key(dim), 5, dim, spread=0.5, scale=0.4)
        mean = jnp.sum(mix.weights[:, None] * mix.means, axis=0)
        return sj.GaussianMixture(mix.weights, mix.means - mean, mix.covs), f"random 5-component mixture in {dim}-D"
    raise ValueError(f"unknown analytic data set {name!r}; use gmm8gauss or gmm<D>d (e.g. gmm8d, gmm64d).")


def run(args: argparse.Namespace) -> dict:
    mix, desc = analytic_mixture(args.dataset)
    sde = sj.get_sde(args.sde)
    key = jax.random.key(args.seed)
    x = np.asarray(mix.sample(jax.random.fold_in(key, 0), args.n_examples))
    divergence = args.divergence or ("exact" if mix.dim <= 8 else "hutchinson")
    score = mix.score_fn(sde)
    batch_fn = functools.partial(sj.log_likelihood, score, sde, divergence=divergence, n_probes=args.n_probes,
                                 eps=args.eps, rtol=args.rtol, atol=args.atol)
    res = sj.evaluate_nll(batch_fn, x, jax.random.fold_in(key, 1), batch_size=args.batch_size, desc="PF-ODE")
    truth = -np.asarray(mix.diffuse(sde, args.eps).log_prob(x))
    err = res.values - truth
    bound_fn = functools.partial(sj.elbo, score, sde, n_t=args.n_t, eps=args.eps)
    bound = sj.evaluate_nll(bound_fn, x, jax.random.fold_in(key, 2), batch_size=args.batch_size, desc="ELBO")
    gap = bound.values + np.asarray(mix.log_prob(x))  # -elbo minus the true NLL of the clean data
    return {
        "kind": "analytic",
        "dataset": args.dataset,
        "description": desc,
        "dim": mix.dim,
        "nll_nats": res.mean,
        "nll_nats_stderr": res.stderr,
        "nll_nats_per_dim": res.mean / mix.dim,
        "true_nll_nats": float(truth.mean()),
        "abs_error_nats_mean": float(abs(err.mean())),
        "abs_error_nats_max": float(np.abs(err).max()),
        "error_nats_stderr": float(err.std(ddof=1) / math.sqrt(err.size)),
        "elbo_nll_nats": bound.mean,
        "elbo_gap_nats": float(gap.mean()),
        "elbo_gap_nats_stderr": float(gap.std(ddof=1) / math.sqrt(gap.size)),
        "elbo_seconds": bound.seconds,
        "n_examples": res.n_examples,
        "nfe_mean": res.nfe_mean,
        "seconds": res.seconds,
        "device": device_info(),
        "train_steps": 0,
        "settings": {"sde": args.sde, "divergence": divergence, "n_probes": args.n_probes, "eps": args.eps,
                     "rtol": args.rtol, "atol": args.atol, "solver": "tsit5", "batch_size": args.batch_size,
                     "elbo_n_t": args.n_t, "seed": args.seed},
    }


def readme_section(rows: list[tuple[str, dict]]) -> str:
    """The table of every analytic record."""
    out = ["## PF-ODE NLL on closed-form mixtures (`python -m benchmarks.nll_analytic --suite`)", "",
           "PF-ODE NLL (nats per example, +- standard error over examples) against the closed-form truth "
           "-log p_eps(x), exact score. |mean err| +- se is the error of the data-set mean (for Hutchinson the "
           "se is the estimator's noise); max err is per example (Hutchinson: one probe, noisy by design). "
           "ELBO gap = E[-elbo] - E[-log p_data], ~0 for the exact score. Seconds include compilation.", "",
           "| result | n | D | divergence | NLL (nats) | truth | abs mean err +- se | max err | NFE | s | "
           "ELBO gap | device |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in rows:
        s = r["settings"]
        out.append(
            f"| {n} | {r['n_examples']} | {r['dim']} | {s['divergence']} | {fmt(r['nll_nats'])} +- "
            f"{fmt(r['nll_nats_stderr'])} | {fmt(r['true_nll_nats'])} | {fmt(r['abs_error_nats_mean'], 4)} +- "
            f"{fmt(r['error_nats_stderr'], 4)} | {fmt(r['abs_error_nats_max'], 4)} | {r['nfe_mean']:.0f} | "
            f"{r['seconds']:.1f} | {fmt(r['elbo_gap_nats'])} +- {fmt(r['elbo_gap_nats_stderr'])} | {r['device']} |")
    return "\n".join(out + [""] + load_note(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="gmm8gauss", help="gmm8gauss | gmm<D>d")
    p.add_argument("--suite", action="store_true", help="run the standard data sets (SUITE)")
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
    p.add_argument("--divergence", choices=["exact", "hutchinson"], help="default: exact up to 8-D, else hutchinson")
    p.add_argument("--n_probes", type=int, default=1)
    p.add_argument("--n_examples", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=200)
    p.add_argument("--n_t", type=int, default=128, help="time samples per example for the ELBO")
    add_solve_args(p, "nll_analytic_<dataset>_<sde>")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv), parse_args, run, lambda a: f"nll_analytic_{a.dataset}_{a.sde}", "nll_analytic_", readme_section, "nll_analytic",
                  SUITE)


if __name__ == "__main__":
    main()
