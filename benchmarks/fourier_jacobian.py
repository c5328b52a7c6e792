"""Where the probability-flow ODE of a VDM-style U-Net gets its Jacobian: through the Fourier features of z or not.

    python -m benchmarks.fourier_jacobian --data_dir ../shared/data/mnist --workdir experiments/checkpoints/mnist_vdm

For MNIST training images x at the bin centres and z_t = alpha_t x + sigma_t eps, the Hutchinson estimates
v^T (df~/dz) v of the PF-ODE drift's divergence (``sj.sde.probability_flow_drift``; Rademacher v, ``--probes``
probes per image), once through the whole network and once with the gradient stopped at the Fourier features
(``sde_jax.nn.unet.fourier_features``; their values unchanged). Per time: the mean estimate (the divergence) and the
spread over probes (mean over images of the per-image standard deviation). Where the features carry no signal
(high noise), a spread far above the stopped one says the features put large, oscillating terms of size 2^n 2 pi
into the Jacobian: the ODE is stiff there and one probe's estimate is noisy. With ``model.fourier_damping`` the
features are damped by the noise level and those terms vanish. Writes ``benchmarks/results/fourier_jacobian.json``
and the README section between the ``fourier_jacobian`` markers.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import numpy as np

from benchmarks.common import device_info, run_benchmark

TIMES = (0.95, 0.8, 0.5, 0.2, 0.05, 0.01)


def divergence_stats(score, sde, x0, t: float, probes: int, stop_features: bool, seed: int) -> dict:
    """Mean Hutchinson divergence and its spread over probes at time t, with or without the features' gradient."""
    import jax
    import jax.numpy as jnp

    import sde_jax as sj
    import sde_jax.nn.unet as unet

    original = unet.fourier_features
    if stop_features:
        unet.fourier_features = lambda x, e: jax.lax.stop_gradient(original(x, e))
    try:
        b = x0.shape[0]
        tt = jnp.full((b,), t, jnp.float32)
        alpha, sigma = sde.alpha_sigma(tt[0])
        z = alpha * x0 + sigma * jax.random.normal(jax.random.key(seed), x0.shape)
        drift = lambda zz: sj.sde.probability_flow_drift(sde, score, zz, tt)
        ests = []
        for i in range(probes):
            v = jax.random.rademacher(jax.random.key(seed + 1 + i), x0.shape, jnp.float32)
            _, jv = jax.jvp(drift, (z,), (v,))
            ests.append(np.asarray(jnp.sum((jv * v).reshape(b, -1), axis=-1)))
    finally:
        unet.fourier_features = original
    ests = np.stack(ests)  # (probes, images)
    return {"divergence": float(ests.mean()), "probe_spread": float(ests.std(axis=0, ddof=1).mean())}


def run(args: argparse.Namespace) -> dict:
    import jax.numpy as jnp

    from sde_jax.data.images import to_model_scale
    from sde_jax.data.pipeline import load_images
    from sde_jax.train.checkpoint import restore

    images, _ = load_images("mnist", "train", args.data_dir)
    x0 = jnp.asarray(to_model_scale(images[: args.n_images].astype(np.int32), "minus_one_one", 256))
    models = []
    for workdir in args.workdir:
        m = restore(workdir)
        score, sde = m.score_fn(), m.sde
        rows = []
        for t in TIMES:
            full = divergence_stats(score, sde, x0, t, args.probes, False, args.seed)
            stop = divergence_stats(score, sde, x0, t, args.probes, True, args.seed)
            rows.append({"t": t, "gamma": float(-sde.log_snr(t)), "full": full, "features_stopped": stop})
            print(f"{workdir} t={t} gamma={rows[-1]['gamma']:.2f} spread {full['probe_spread']:.1f} "
                  f"(stopped {stop['probe_spread']:.1f})", flush=True)
        models.append({"workdir": workdir, "train_steps": m.step,
                       "fourier_damping": list(m.config.model.get("fourier_damping", ()) or ()), "rows": rows})
    return {"kind": "fourier_jacobian", "command": args.command, "device": device_info(), "n_images": args.n_images,
            "probes": args.probes, "models": models}


def render(records: list[tuple[str, dict]]) -> str:
    out = ["## Fourier features and the PF-ODE's Jacobian (`python -m benchmarks.fourier_jacobian`)", "",
           "Hutchinson estimates of the PF-ODE drift's divergence at z_t of MNIST training images: the mean (the "
           "divergence) and the spread over Rademacher probes, through the whole network and with the gradient "
           "stopped at the Fourier features of z. A spread far above the stopped one at high noise means the "
           "features, which carry no signal there, put terms of size 2^n 2 pi into the Jacobian.", ""]
    for _, rec in records:
        for m in rec["models"]:
            damp = f", damped {tuple(m['fourier_damping'])}" if m["fourier_damping"] else ", undamped"
            out += [f"`{m['workdir']}` ({m['train_steps']} steps{damp}; {rec['n_images']} images, {rec['probes']} "
                    "probes each):", "",
                    "| t | gamma | divergence | probe spread | divergence, features stopped | probe spread, stopped |",
                    "|---|---|---|---|---|---|"]
            for r in m["rows"]:
                f, s = r["full"], r["features_stopped"]
                out.append(f"| {r['t']} | {r['gamma']:.2f} | {f['divergence']:.0f} | {f['probe_spread']:.0f} | "
                           f"{s['divergence']:.0f} | {s['probe_spread']:.0f} |")
            out.append("")
        out += [f"Command: `{rec['command']}`. Device: {rec['device']}.", ""]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", help="folder of the MNIST IDX files; without it tensorflow-datasets")
    p.add_argument("--workdir", nargs="+", required=True, help="experiments.mnist_likelihood runs or exported folders")
    p.add_argument("--n_images", type=int, default=8)
    p.add_argument("--probes", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None)
    p.add_argument("--no_readme", action="store_true")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    args.command = "python -m benchmarks.fourier_jacobian " + shlex.join(a for a in argv if a != "--no_readme")
    return args


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv), parse_args, run, lambda a: "fourier_jacobian", "fourier_jacobian", render,
                  "fourier_jacobian")


if __name__ == "__main__":
    main()
