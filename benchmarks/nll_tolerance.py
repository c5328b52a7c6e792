"""How tight must the PF-ODE likelihood solve be on images? Bits/dim of the same test images and probes under the
likelihood's joint error norm (``sde_jax.likelihood.augmented_state_norm``) and under diffrax's plain RMS norm
(what score_sde's scipy RK45 loop also uses), at several tolerances.

    python -m benchmarks.nll_tolerance --workdir runs/mnist --data_dir ../shared/data/mnist --n 20

Writes ``benchmarks/results/tolerance_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import diffrax
import jax
import numpy as np
import optimistix as optx

import sde_jax as sj
from benchmarks.common import device_info
from sde_jax import likelihood as lik
from sde_jax.data.pipeline import load_images
from sde_jax.train.loop import restore

RUNS = [("joint", 1e-3), ("rms", 1e-3), ("joint", 1e-4), ("rms", 1e-5), ("joint", 1e-5)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data_dir")
    p.add_argument("--n", type=int, default=20, help="test images (one batch)")
    args = p.parse_args(argv)
    m = restore(args.workdir)
    k, _ = load_images(args.dataset, "test", args.data_dir)
    lo = 0.0 if m.config.data.scale == "zero_one" else -1.0
    x = sj.dequantize(jax.random.key(3), k[: args.n], data_range=(lo, 1.0))[0]
    norms = {"joint": lik.augmented_state_norm, "rms": optx.rms_norm}
    out = {"device": device_info(), "workdir": os.path.abspath(args.workdir), "train_steps": m.step,
           "n_images": args.n, "solver": "tsit5", "eps": 1e-5, "runs": []}
    try:
        for name, tol in RUNS:
            lik.augmented_state_norm = norms[name]  # read when the solve is traced
            score = m.score_fn()
            fn = jax.jit(lambda x, key: lik._log_likelihood_impl(
                score, m.sde, x, key, diffrax.Tsit5(), 1e-5, tol, tol, divergence="hutchinson", noise="rademacher",
                n_probes=1, max_steps=100_000))
            t0 = time.perf_counter()
            logp, info = fn(x, jax.random.key(5))
            bpd = np.asarray(sj.bits_per_dim(logp, k.shape[1:], data_range=(lo, 1.0)))
            out["runs"].append({"norm": name, "tol": tol, "bpd_mean": float(bpd.mean()), "nfe": int(info["nfe"]),
                                "seconds_with_compile": time.perf_counter() - t0, "bpd": bpd.round(4).tolist()})
            print(f"{name} norm, rtol = atol = {tol:g}: {bpd.mean():.4f} bits/dim, {int(info['nfe'])} NFE", flush=True)
    finally:
        lik.augmented_state_norm = norms["joint"]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"tolerance_{args.dataset}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
