"""How tight must the PF-ODE likelihood solve be on images? Bits/dim of the same test images and probes under the
likelihood's joint error norm (``norm="joint"``, ``sde_jax.likelihood.augmented_state_norm``) and under diffrax's
plain RMS norm (``norm="rms"``, what score_sde's scipy RK45 loop also uses), at several tolerances.

    python -m benchmarks.nll_tolerance --workdir runs/mnist --data_dir ../shared/data/mnist --n 20

Writes ``benchmarks/results/tolerance_<dataset>.json``; the README table under "PF-ODE tolerance on images" is
written by hand from it.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import sde_jax as sj
from benchmarks.common import device_info, write_result
from sde_jax.data.pipeline import load_images
from sde_jax.train.checkpoint import restore

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
    score = m.score_fn()
    out = {"device": device_info(), "workdir": os.path.abspath(args.workdir), "train_steps": m.step,
           "n_images": args.n, "solver": "tsit5", "eps": 1e-5, "runs": []}
    for norm, tol in RUNS:
        t0 = time.perf_counter()
        logp, info = sj.log_likelihood(score, m.sde, x, jax.random.key(5), eps=1e-5, rtol=tol, atol=tol, norm=norm,
                                       max_steps=100_000)
        bpd = np.asarray(sj.bits_per_dim(logp, k.shape[1:], data_range=(lo, 1.0)))
        out["runs"].append({"norm": norm, "tol": tol, "bpd_mean": float(bpd.mean()), "nfe": int(info["nfe"]),
                            "seconds_with_compile": time.perf_counter() - t0, "bpd": bpd.round(4).tolist()})
        print(f"{norm} norm, rtol = atol = {tol:g}: {bpd.mean():.4f} bits/dim, {int(info['nfe'])} NFE", flush=True)
    write_result(f"tolerance_{args.dataset}", out)


if __name__ == "__main__":
    main()
