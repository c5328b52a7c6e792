"""The PF-ODE's bound against the ELBO of the same VDM model on the same MNIST test images (paired per image).

    python -m benchmarks.ode_gap --data_dir ../shared/data/mnist --workdir experiments/checkpoints/mnist_vdm --n 100

For each ``--workdir`` (an ``experiments.mnist_likelihood`` run or exported folder): ``sj.vdm_elbo_bpd`` (4 stratified
times per image) and ``sj.pf_ode_bpd`` (the kernel-dequantised PF-ODE bound, Tsit5 at rtol = atol = 1e-4, one
Hutchinson probe) of the first ``--n`` test images with the keys of ``benchmarks.mnist_nll``, and the per-image
difference PF-ODE - ELBO with its standard error. A quick check of how far the ODE model is from the diffusion's own
bound as a model trains (``benchmarks.mnist_nll`` is the full table). Writes ``benchmarks/results/ode_gap.json``
(``--name``), one row per workdir, appended to the rows already there for other (workdir, step) pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import numpy as np

from benchmarks.common import device_info, results_dir, write_result


def gap_row(workdir: str, test: np.ndarray, n: int) -> dict:
    import jax

    import sde_jax as sj
    from sde_jax.train.checkpoint import restore

    m = restore(workdir)
    score, key = m.score_fn(), jax.random.key(0)
    t0 = time.perf_counter()
    el = sj.vdm_elbo_bpd(score, test[:n], jax.random.fold_in(key, 0), n_t=4, batch_size=n)
    ode = sj.pf_ode_bpd(score, test[:n], jax.random.fold_in(key, 2), n_t=4, batch_size=n, rtol=1e-4, atol=1e-4)
    d = ode["bpd"] - el["bpd"]
    se = lambda v: float(v.std(ddof=1) / np.sqrt(n))
    return {"workdir": workdir, "train_steps": m.step,
            "fourier_damping": list(m.config.model.get("fourier_damping", ()) or ()), "n": n,
            "elbo": float(el["bpd"].mean()), "elbo_stderr": se(el["bpd"]), "pf_ode": float(ode["bpd"].mean()),
            "pf_ode_stderr": se(ode["bpd"]), "gap": float(d.mean()), "gap_stderr": se(d),
            "nfe": float(ode["nfe"].mean()), "seconds": time.perf_counter() - t0, "device": device_info()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir")
    p.add_argument("--workdir", nargs="+", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--name", default="ode_gap")
    args = p.parse_args(argv)
    from sde_jax.data.pipeline import load_images

    test, _ = load_images("mnist", "test", args.data_dir)
    path = os.path.join(results_dir(), f"{args.name}.json")
    old = json.load(open(path))["rows"] if os.path.exists(path) else []
    rows = [gap_row(w, test, args.n) for w in args.workdir]
    keep = [r for r in old if (r["workdir"], r["train_steps"]) not in {(x["workdir"], x["train_steps"]) for x in rows}]
    command = "python -m benchmarks.ode_gap " + shlex.join(sys.argv[1:] if argv is None else argv)
    for r in rows:
        r["command"] = command
        print(json.dumps(r), flush=True)
    write_result(args.name, {"kind": "ode_gap", "rows": keep + rows})


if __name__ == "__main__":
    main()
