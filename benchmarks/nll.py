"""NLL benchmark: PF-ODE log-likelihood on closed-form mixtures or a trained checkpoint, and a speed comparison
against the host-loop likelihood of the reference implementation.

    python -m benchmarks.nll --analytic --dataset gmm8gauss         # 2-D mixture, exact score, vs analytic truth
    python -m benchmarks.nll --analytic --dataset gmm8d             # 8-D random mixture (exact divergence)
    python -m benchmarks.nll --analytic --dataset gmm64d            # 64-D random mixture (Hutchinson)
    python -m benchmarks.nll --compare --model mlp2d                # ours vs scipy host loop, same model and batch
    python -m benchmarks.nll --compare --model unet28               # same for an MNIST-size U-Net (28x28x1)
    python -m benchmarks.nll --workdir DIR --dataset 8gaussians     # a trained checkpoint (toy 2-D: nats)
    python -m benchmarks.nll --workdir DIR --dataset mnist --data_file test.npz   # integer images: bits/dim
    python -m benchmarks.nll --workdir runs/mnist --dataset mnist --data_dir ../shared/data/mnist \
        --n_examples 10000 --batch_size 125 --name mnist_nll  # test-set bits/dim of an experiments.mnist run
    python -m benchmarks.nll --suite                                # all of the analytic + compare runs above

Each run writes ``benchmarks/results/<name>.json`` and refreshes the table between the ``nll`` markers of
``benchmarks/README.md``.

The baseline ("host loop") is built the way score_sde's ``likelihood.py`` does it: ``scipy.integrate.solve_ivp``
(RK45, rtol = atol = 1e-5) on a flat float64 state, calling a jitted drift and a jitted divergence (the gradient
of <drift, v> dotted with v, i.e. a VJP) from Python at every evaluation -- two network passes per evaluation and
a host round-trip per stage. Ours is one jitted diffrax solve (same tolerances; Dopri5 = RK45's tableau for a
like-for-like comparison, and our default Tsit5) whose stages make one fused forward + JVP pass each. Both use the
same Rademacher probe v, so they estimate the same integral.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import time
from typing import Any, Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import sde_jax as sj
from benchmarks.common import device_info, write_readme_section
from sde_jax import likelihood as lik
from sde_jax.data import TOY_SETS

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.environ.get("SDE_JAX_RESULTS_DIR") or os.path.join(HERE, "results")  # tests write elsewhere
README = os.path.join(HERE, "README.md")
BEGIN, END = "<!-- nll:begin -->", "<!-- nll:end -->"


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


def write_result(name: str, result: dict) -> str:
    result = {**result, "load_avg_1min": round(os.getloadavg()[0], 2)}  # the CPU is shared: context for timings
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    print(f"wrote {path}")
    return path


def perturbed_params(params: Any, key: jax.Array, scale: float) -> Any:
    """params + scale * N(0, 1) on every leaf (the networks zero-initialise their output layers)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


# ------------------------------------------------------------------------------- analytic mixtures
def analytic_mixture(name: str) -> tuple[sj.GaussianMixture, str]:
    """Closed-form data sets, centred (the N(0, I) prior mismatch at T is then ~1e-4 nats on average)."""
    if name == "gmm8gauss":
        angles = jnp.arange(8) * (2 * math.pi / 8)
        means = 4.0 / math.sqrt(2) * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
        return sj.isotropic_mixture(means, 0.5 / math.sqrt(2)), "8 Gaussians (radius 2.83, std 0.354), as toy2d's 8gaussians"
    match = re.fullmatch(r"gmm(\d+)d", name)
    if match:
        dim = int(match.group(1))
        mix = sj.random_mixture(jax.random.key(dim), 5, dim, spread=0.5, scale=0.4)
        mean = jnp.sum(mix.weights[:, None] * mix.means, axis=0)
        return sj.GaussianMixture(mix.weights, mix.means - mean, mix.covs), f"random 5-component mixture in {dim}-D"
    raise ValueError(f"unknown analytic data set {name!r}; use gmm8gauss or gmm<D>d (e.g. gmm8d, gmm64d).")


def run_analytic(args: argparse.Namespace) -> dict:
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
                     "rtol": args.rtol, "atol": args.atol, "solver": "Tsit5", "batch_size": args.batch_size,
                     "elbo_n_t": args.n_t, "seed": args.seed},
    }


# ------------------------------------------------------------------------------- trained checkpoints
def _cfg_get(cfg: Any, path: str, default: Any) -> Any:
    node = cfg
    for part in path.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return default
    return node


def train_seconds(workdir: str) -> float | None:
    """Wall seconds of the training steps of ``workdir``, from its metrics log (sum of interval / steps_per_sec)."""
    from sde_jax.train.metrics import read_metrics

    rows = [m for m in read_metrics(workdir) if m.get("steps_per_sec")]
    if not rows:
        return None
    total, last = 0.0, 0
    for m in rows:
        total += (m["step"] - last) / float(m["steps_per_sec"])
        last = m["step"]
    return total


def _integer_images(args: argparse.Namespace) -> np.ndarray:
    """The evaluation images (uint8 NHWC): a data set's test split (``--data_dir`` or tfds) or an npz file."""
    if args.data_file is None:
        from sde_jax.data.pipeline import load_images

        k, _ = load_images(args.dataset, "test", args.data_dir)
    else:
        with np.load(args.data_file) as f:
            k = f[f.files[0]] if "x" not in f.files else f["x"]
    k = np.asarray(k)[: args.n_examples]
    return k[..., None] if k.ndim == 3 else k  # (N, H, W) -> NHWC


def run_checkpoint(args: argparse.Namespace) -> dict:
    from sde_jax.train.loop import restore

    model = restore(args.workdir)
    sde, cfg = model.sde, model.config
    key = jax.random.key(args.seed)
    divergence = args.divergence or "hutchinson"

    @jax.jit
    def logp(params, x, k):  # class-conditional networks get their null label: the unconditional p(x)
        score = sj.score_fn(model.model.apply, params, sde, cfg.loss.parameterization)
        return sj.log_likelihood(score, sde, x, k, divergence=divergence, n_probes=args.n_probes, eps=args.eps,
                                 rtol=args.rtol, atol=args.atol)

    batch_fn = functools.partial(logp, model.params)

    common = {"dataset": args.dataset, "device": device_info(), "train_steps": model.step,
              "train_seconds": train_seconds(args.workdir), "workdir": os.path.abspath(args.workdir),
              "model": {"name": cfg.model.name, "n_params": int(sum(a.size for a in jax.tree.leaves(model.params))),
                        "num_classes": _cfg_get(cfg, "model.num_classes", None),
                        "p_uncond": _cfg_get(cfg, "loss.p_uncond", 0.0), "weighting": cfg.loss.weighting}}
    settings = {"sde": type(sde).__name__, "divergence": divergence, "n_probes": args.n_probes,
                "eps": args.eps, "rtol": args.rtol, "atol": args.atol, "batch_size": args.batch_size,
                "seed": args.seed, "solver": "tsit5 (adaptive)"}
    if args.data_file is None and args.data_dir is None and args.dataset in TOY_SETS:
        from sde_jax.data import ENTROPY, sample_toy

        x = np.asarray(sample_toy(args.dataset, jax.random.fold_in(key, 0), args.n_examples))
        res = sj.evaluate_nll(batch_fn, x, jax.random.fold_in(key, 1), batch_size=args.batch_size)
        return {**common, "kind": "checkpoint", "nll_nats": res.mean, "nll_nats_stderr": res.stderr,
                "nll_nats_per_dim": res.mean / x.shape[1], "data_entropy_nats": ENTROPY.get(args.dataset),
                "n_examples": res.n_examples, "nfe_mean": res.nfe_mean, "seconds": res.seconds, "settings": settings}
    k = _integer_images(args)
    num_bins = int(_cfg_get(cfg, "data.num_bins", 256))
    data_range = (0.0, 1.0) if _cfg_get(cfg, "data.scale", "minus_one_one") == "zero_one" else (-1.0, 1.0)
    res = sj.evaluate_bpd(batch_fn, k, jax.random.fold_in(key, 1), num_bins=num_bins, data_range=data_range,
                          n_dequant=args.n_dequant, batch_size=args.batch_size)
    settings.update(num_bins=num_bins, data_range=list(data_range), n_dequant=args.n_dequant,
                    dequantization="uniform")
    return {**common, "kind": "checkpoint_bpd", "bpd": res.mean, "bpd_stderr": res.stderr,
            "n_examples": res.n_examples, "nfe_mean": res.nfe_mean, "seconds": res.seconds, "settings": settings}


# ------------------------------------------------------------------------------ host-loop baseline
def host_loop_log_likelihood(score_fn: Callable, sde: Any, x: jax.Array, probe: jax.Array, *, eps: float,
                             rtol: float, atol: float) -> tuple[np.ndarray, int]:
    """score_sde's likelihood.py, minus pmap: solve_ivp(RK45) calling a jitted drift and a jitted divergence.

    The divergence is score_sde's ``get_div_fn``: grad_x <drift(x), v> . v, a second network pass (a VJP).
    Returns (log p per example, solve_ivp's nfev).
    """
    from scipy import integrate

    shape, batch = x.shape, x.shape[0]

    @jax.jit
    def drift_fn(y, t):
        return sj.probability_flow_drift(sde, score_fn, y, t)

    @jax.jit
    def div_fn(y, t, v):
        grad = jax.grad(lambda z: jnp.sum(sj.probability_flow_drift(sde, score_fn, z, t) * v))(y)
        return jnp.sum(grad * v, axis=tuple(range(1, y.ndim)))

    def ode_func(t, state):
        sample = state[:-batch].reshape(shape).astype(np.float32)
        vec_t = np.full((batch,), t, np.float32)
        drift = np.asarray(drift_fn(sample, vec_t)).reshape(-1)
        logp_grad = np.asarray(div_fn(sample, vec_t, probe)).reshape(-1)
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros((batch,))], axis=0)
    sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    zp = sol.y[:, -1]
    z = zp[:-batch].reshape(shape).astype(np.float32)
    logp = np.asarray(sde.prior_logp(jnp.asarray(z))) + zp[-batch:]
    return logp, int(sol.nfev)


@functools.lru_cache(maxsize=4)
def _bare_jvp(score_fn: Callable, sde: Any) -> Callable:
    return jax.jit(lambda y, v, s: jax.jvp(lambda z: sj.probability_flow_drift(sde, score_fn, z, s), (y,), (v,)))


def pass_costs(score_fn: Callable, sde: Any, x: jax.Array, probe: jax.Array, repeats: int = 20) -> dict:
    """Process CPU seconds per call of the jitted pieces: forward (drift), forward+JVP (ours, one per stage) and
    the reference's divergence grad_x <drift, v> (a VJP; the host loop pays forward + VJP per evaluation)."""
    t = jnp.full((x.shape[0],), 0.5, x.dtype)
    drift = lambda y, s: sj.probability_flow_drift(sde, score_fn, y, s)
    fns = {
        "forward": jax.jit(lambda y, v, s: drift(y, s)),
        "forward_jvp": _bare_jvp(score_fn, sde),
        "vjp_divergence": jax.jit(lambda y, v, s: jax.grad(lambda z: jnp.sum(drift(z, s) * v))(y)),
    }
    out = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(x, probe, t))
        cpu = time.process_time()
        for _ in range(repeats):
            jax.block_until_ready(fn(x, probe, t))
        out[name] = (time.process_time() - cpu) / repeats
    return out


def bare_stage_seconds(score_fn: Callable, sde: Any, x: jax.Array, probe: jax.Array,
                       repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one jitted forward + JVP of the PF drift on the same batch, after compilation.

    t is an argument, as inside the solve (a constant t would let XLA fold the time embedding away).
    """
    t = jnp.full((x.shape[0],), 0.5, x.dtype)
    fn = _bare_jvp(score_fn, sde)
    jax.block_until_ready(fn(x, probe, t))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        jax.block_until_ready(fn(x, probe, t))
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def fit_mlp(mix: sj.GaussianMixture, sde: Any, steps: int, key: jax.Array) -> tuple[Any, Any]:
    """A ScoreMLP fitted briefly by denoising score matching (eps-prediction, t ~ U[1e-5, 1]) to ``mix``."""
    import optax

    from sde_jax.nn import ScoreMLP

    model = ScoreMLP()
    params = model.init(key, jnp.zeros((1, mix.dim)), jnp.ones((1,)))
    opt = optax.adam(2e-3)
    state = opt.init(params)

    def loss(p, k):
        kx, kt, kz = jax.random.split(k, 3)
        x0 = mix.sample(kx, 256)
        t = jax.random.uniform(kt, (256,), minval=1e-5, maxval=sde.T)
        z = jax.random.normal(kz, x0.shape)
        alpha, sigma = sde.alpha_sigma(t)
        xt = alpha[:, None] * x0 + sigma[:, None] * z
        return jnp.mean(jnp.sum((model.apply(p, xt, t) - z) ** 2, axis=-1))

    @jax.jit
    def step(p, s, k):
        val, grad = jax.value_and_grad(loss)(p, k)
        upd, s = opt.update(grad, s)
        return optax.apply_updates(p, upd), s, val

    for i in range(steps):
        params, state, val = step(params, state, jax.random.fold_in(key, i))
        if i % 25 == 0:
            float(val)  # host sync (DESIGN.md: keep the dispatch queue short)
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
        from sde_jax.nn import UNet

        model = UNet(ch=24)
        x = jax.random.uniform(jax.random.fold_in(key, 1), (4, 28, 28, 1), minval=-1.0, maxval=1.0)
        params = model.init(jax.random.fold_in(key, 0), x, jnp.ones((4,)))
        params = perturbed_params(params, jax.random.fold_in(key, 2), 0.003)
        return model, params, x, {"model": "sde_jax.nn.UNet(ch=24) on 28x28x1",
                                  "params": "random init + 0.003 N(0,1) on every leaf (zero-init layers made live)"}
    raise ValueError(f"unknown --model {name!r}; choose mlp2d or unet28.")


SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}


def _summarise_ours(runs: list, bare: list, t_first: float, recompiled: bool) -> dict:
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


def run_compare(args: argparse.Namespace) -> dict:
    sde = sj.get_sde(args.sde)
    key = jax.random.key(args.seed)
    model, params, x, notes = compare_model(args.model, sde, key, args.fit_steps)
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
    score = sj.score_fn(model.apply, params, sde, "eps")
    kw = dict(eps=args.eps, rtol=args.rtol, atol=args.atol)
    probe_key = jax.random.fold_in(key, 3)
    probe = lik.hutchinson_probes(probe_key, x.shape, 1, "rademacher", x.dtype)[0]  # the probe ours draws too
    d = math.prod(x.shape[1:])
    solvers = args.solvers.split(",")
    ours_kw = {s: {**kw, "solver": SOLVERS[s]()} for s in solvers}

    # Warm-up: compile ours (first calls), and the baseline's two jitted functions with a short solve.
    t_first = {s: timed(sj.log_likelihood, score, sde, x, probe_key, **ours_kw[s])[1] for s in solvers}
    cache = lik._log_likelihood_jit._cache_size()
    host_loop_log_likelihood(score, sde, x, probe, eps=args.eps, rtol=1e-2, atol=1e-2)
    # Rounds: the host loop, then each of our solvers followed by as many bare forward+JVP calls as it has stages,
    # so that the timings being compared span similar stretches of the (shared) machine's load.
    host_runs, runs, bare, costs = [], {s: [] for s in solvers}, {s: [] for s in solvers}, []
    for _ in range(args.rounds):
        costs.append(pass_costs(score, sde, x, probe))
        host_runs.append(timed_cpu(host_loop_log_likelihood, score, sde, x, probe, **kw))
        for s in solvers:
            runs[s].append(timed_cpu(sj.log_likelihood, score, sde, x, probe_key, **ours_kw[s]))
            bare[s].append(bare_stage_seconds(score, sde, x, probe, int(runs[s][-1][0][1]["nfe"])))
    recompiled = lik._log_likelihood_jit._cache_size() != cache
    (lp_ref, nfe_ref) = host_runs[0][0]
    t_ref, cpu_ref = min(r[1] for r in host_runs), min(r[2] for r in host_runs)

    tight = None
    if args.model == "mlp2d":  # per-example solver error at rtol = atol = 1e-5, against a 1e-7 Tsit5 solve
        tight = np.asarray(sj.log_likelihood(score, sde, x, probe_key, eps=args.eps, rtol=1e-7, atol=1e-7)[0])
    ours = {}
    for s in solvers:
        r = _summarise_ours(runs[s], bare[s], t_first[s], recompiled)
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
            "cpu_seconds": cpu_ref, "nll_nats_per_dim": float(-lp_ref.mean() / d)}
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
        result.update(recompile_costs(model, params, sde, x, probe_key, kw))
    return result


def recompile_costs(model: Any, params: Any, sde: Any, x: jax.Array, key: jax.Array, kw: dict) -> dict:
    """New parameters: a new score_fn closure recompiles; jitting the whole call with params as an argument does not."""
    params2 = perturbed_params(params, jax.random.key(99), 1e-3)
    _, t_closure = timed(sj.log_likelihood, sj.score_fn(model.apply, params2, sde, "eps"), sde, x, key, **kw)

    @jax.jit
    def logp_fn(p, y, k):
        return sj.log_likelihood(sj.score_fn(model.apply, p, sde, "eps"), sde, y, k, **kw)[0]

    _, t_jit_first = timed(logp_fn, params, x, key)
    t_jit_new_params = min(timed(logp_fn, p, x, key)[1] for p in (params2, params))
    return {
        "seconds_new_closure_new_params": t_closure,
        "seconds_whole_call_jit_first": t_jit_first,
        "seconds_whole_call_jit_new_params": t_jit_new_params,
        "whole_call_jit_cache_size": int(logp_fn._cache_size()),
    }


# ------------------------------------------------------------------------------------------- README
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.1e}"
    return str(v)


def readme_section() -> str:
    """Markdown tables of every nll result in benchmarks/results."""
    rows = []
    for fname in sorted(os.listdir(RESULTS_DIR)) if os.path.isdir(RESULTS_DIR) else []:
        if fname.startswith("nll_") and fname.endswith(".json"):
            with open(os.path.join(RESULTS_DIR, fname)) as f:
                rows.append((fname[:-5], json.load(f)))
    out = ["## NLL (`python -m benchmarks.nll --suite`)", ""]
    analytic = [(n, r) for n, r in rows if r["kind"] in ("analytic", "checkpoint")]
    if analytic:
        out += ["PF-ODE NLL (nats per example, +- standard error over examples) against the closed-form truth "
                "-log p_eps(x), exact score. |mean err| +- se is the error of the data-set mean (for Hutchinson the "
                "se is the estimator's noise); max err is per example (Hutchinson: one probe, noisy by design). "
                "ELBO gap = E[-elbo] - E[-log p_data], ~0 for the exact score. Seconds include compilation.", "",
                "| result | n | D | divergence | NLL (nats) | truth | abs mean err +- se | max err | NFE | s | "
                "ELBO gap | train steps | device |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in analytic:
            s = r["settings"]
            out.append(
                f"| {n} | {r['n_examples']} | {r.get('dim', '-')} | {s['divergence']} | {_fmt(r.get('nll_nats'))} +- "
                f"{_fmt(r.get('nll_nats_stderr'))} | {_fmt(r.get('true_nll_nats'))} | "
                f"{_fmt(r.get('abs_error_nats_mean'), 4)} +- {_fmt(r.get('error_nats_stderr'), 4)} | "
                f"{_fmt(r.get('abs_error_nats_max'), 4)} | {r['nfe_mean']:.0f} | {r['seconds']:.1f} | "
                f"{_fmt(r.get('elbo_gap_nats'))} +- {_fmt(r.get('elbo_gap_nats_stderr'))} | "
                f"{_fmt(r.get('train_steps'))} | {r['device']} |")
        out.append("")
    images = [(n, r) for n, r in rows if r["kind"] == "checkpoint_bpd"]
    if images:
        out += ["Test-set bits/dim of trained image models (`experiments.mnist`): PF-ODE + Hutchinson (one Rademacher "
                "probe per image), uniform dequantization, adaptive Tsit5 at the stated tolerances; +- is the standard "
                "error over images. A class-conditional network is evaluated with its null label, i.e. as the "
                "unconditional model p(x).", "",
                "| result | data | n | bpd | NFE | rtol/atol | params | train steps | train time | eval time | "
                "device |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in images:
            s_ = r["settings"]
            tt = r.get("train_seconds")
            out.append(f"| {n} | {r['dataset']} | {r['n_examples']} | {r['bpd']:.3f} +- {r['bpd_stderr']:.3f} | "
                       f"{r['nfe_mean']:.0f} | {s_['rtol']:g}/{s_['atol']:g} | "
                       f"{r['model']['n_params'] / 1e6:.2f}M | {r['train_steps']} | "
                       f"{'-' if tt is None else f'{tt / 60:.0f} min'} | {r['seconds'] / 60:.0f} min | {r['device']} |")
        out.append("")
    compare = [(n, r) for n, r in rows if r["kind"] == "compare"]
    if compare:
        out += ["Ours (one jitted diffrax solve, one fused forward+JVP per stage) vs the reference's host loop (scipy "
                "RK45, a jitted drift and a jitted VJP divergence per evaluation: two passes), same model, batch and "
                "probe, rtol = atol = 1e-5. Dopri5 is RK45's tableau (like for like); Tsit5 is our default. Speedups "
                "in wall time and in process CPU time (robust to the other processes on this shared machine). Bare = "
                "one jitted forward+JVP call of the same network on the same batch.", "",
                "| model | params | batch | solver | NLL/dim | NLL/dim host | mean diff (bpd) | NFE | NFE host "
                "(x2 passes) | s | s host | speedup wall | speedup CPU | s/stage vs bare, wall | CPU | recompiles | "
                "device |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for n, r in compare:
            h = r["host_loop"]
            for solver, o in r["ours"].items():
                out.append(
                    f"| {r['dataset']} | {r['n_params'] / 1e6:.2f}M | {'x'.join(map(str, r['batch_shape']))} | "
                    f"{solver} | {o['nll_nats_per_dim']:.4f} | {h['nll_nats_per_dim']:.4f} | "
                    f"{_fmt(o['mean_diff_vs_host_loop_bpd'], 4)} | {o['nfe']} | {h['nfe']} | {o['seconds']:.2f} | "
                    f"{h['seconds']:.2f} | {o['speedup']:.2f}x | {o['speedup_cpu_time']:.2f}x | "
                    f"{o['seconds_per_stage'] * 1e3:.1f} vs {o['seconds_bare_forward_jvp'] * 1e3:.1f} ms "
                    f"({100 * o['stage_overhead_vs_bare']:+.0f}%) | {o['cpu_seconds_per_stage'] * 1e3:.1f} vs "
                    f"{o['cpu_seconds_bare_forward_jvp'] * 1e3:.1f} ms ({100 * o['stage_overhead_vs_bare_cpu_time']:+.0f}%)"
                    f" | {'yes' if o['second_call_recompiled'] else 'no'} | {r['device']} |")
        for n, r in compare:
            if "max_abs_err_vs_tight_nats_per_dim" in r["host_loop"]:
                errs = ", ".join(f"{k} {_fmt(o['max_abs_err_vs_tight_nats_per_dim'], 4)}" for k, o in r["ours"].items())
                out += ["", f"Per-example solver error at rtol = atol = 1e-5 ({r['dataset']}; max over the batch, nats/dim, "
                        f"against a Tsit5 1e-7 solve): {errs}, host loop "
                        f"{_fmt(r['host_loop']['max_abs_err_vs_tight_nats_per_dim'], 4)}."]
            c = r["cpu_seconds_per_call"]
            out += ["", f"Per-call CPU cost ({r['dataset']}): forward {c['forward'] * 1e3:.1f} ms, forward+JVP (ours, "
                    f"per stage) {c['forward_jvp'] * 1e3:.1f} ms, VJP divergence {c['vjp_divergence'] * 1e3:.1f} ms: the "
                    f"host loop pays forward + VJP = {(c['forward'] + c['vjp_divergence']) * 1e3:.1f} ms per evaluation "
                    f"({(c['forward'] + c['vjp_divergence']) / c['forward_jvp']:.2f}x ours) plus its Python round-trip."]
            if "seconds_whole_call_jit_new_params" in r:
                first = r["ours"].get("tsit5", next(iter(r["ours"].values())))  # recompile_costs uses the default
                out += ["", f"Recompilation ({r['dataset']}): first call {first['seconds_first_call']:.1f} s, later "
                        f"calls {first['seconds']:.2f} s (no recompilation). New parameters through a new "
                        f"`sj.score_fn` closure: {r['seconds_new_closure_new_params']:.1f} s (recompiles); jitting "
                        f"the whole call with params as an argument: {r['seconds_whole_call_jit_first']:.1f} s "
                        f"first, {r['seconds_whole_call_jit_new_params']:.2f} s with new params (cache size "
                        f"{r['whole_call_jit_cache_size']})."]
        out.append("")
    loads = sorted({r.get("load_avg_1min") for _, r in rows if r.get("load_avg_1min") is not None})
    if loads:
        out += [f"Shared machine: 1-minute load average {loads[0]}-{loads[-1]} on {os.cpu_count()} cores during these "
                "runs (each JSON has `load_avg_1min`); timings are minima over repeats.", ""]
    return "\n".join(out)


def update_readme() -> None:
    write_readme_section(readme_section(), BEGIN, END, README)
    print(f"updated {README}")


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="training workdir with checkpoints (not needed with --analytic/--compare)")
    p.add_argument("--dataset", default="gmm8gauss", help="gmm8gauss | gmm<D>d (analytic), toy 2-D name, or image set")
    p.add_argument("--data_file", help="npz of integer images (N, H, W[, C]) for bits/dim with a checkpoint")
    p.add_argument("--data_dir", help="folder of IDX files (MNIST format) for --dataset mnist|fashion_mnist; "
                   "without it named image sets come from tensorflow-datasets")
    p.add_argument("--analytic", action="store_true", help="closed-form mixture with its exact score")
    p.add_argument("--compare", action="store_true", help="ours vs the scipy host-loop baseline")
    p.add_argument("--model", default="mlp2d", help="model for --compare: mlp2d | unet28")
    p.add_argument("--suite", action="store_true", help="run the standard set of benchmarks")
    p.add_argument("--sde", default="vp", choices=["vp", "subvp", "ve"])
    p.add_argument("--divergence", choices=["exact", "hutchinson"], help="default: exact up to 8-D, else hutchinson")
    p.add_argument("--n_probes", type=int, default=1)
    p.add_argument("--n_examples", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=200)
    p.add_argument("--n_dequant", type=int, default=1)
    p.add_argument("--n_t", type=int, default=128, help="time samples per example for the ELBO")
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--fit_steps", type=int, default=400, help="DSM steps for the mlp2d comparison model")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds in --compare (minima reported)")
    p.add_argument("--solvers", default="dopri5,tsit5", help="our solvers to time in --compare (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="result name (default derived from the run)")
    p.add_argument("--no_readme", action="store_true", help="do not refresh benchmarks/README.md")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.compare:
        result, name = run_compare(args), args.name or f"nll_compare_{args.model}"
    elif args.analytic:
        result, name = run_analytic(args), args.name or f"nll_analytic_{args.dataset}_{args.sde}"
    else:
        if not args.workdir:
            raise SystemExit("give --workdir DIR (a trained checkpoint), or --analytic, --compare or --suite.")
        result, name = run_checkpoint(args), args.name or f"nll_{args.dataset}"
    write_result(name, result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
    return result


SUITE = [
    ["--analytic", "--dataset", "gmm8gauss", "--n_examples", "512", "--batch_size", "256"],
    ["--analytic", "--dataset", "gmm8d", "--n_examples", "256", "--batch_size", "128"],
    ["--analytic", "--dataset", "gmm64d", "--n_examples", "256", "--batch_size", "128", "--n_t", "64"],
    ["--compare", "--model", "mlp2d", "--rounds", "3"],
    ["--compare", "--model", "unet28", "--rounds", "2"],
]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.suite:
        start = time.perf_counter()
        for extra in SUITE:
            run(parse_args(extra + ["--seed", str(args.seed)]))
        print(f"suite: {time.perf_counter() - start:.0f} s")
    else:
        run(args)
    if not args.no_readme:
        update_readme()


if __name__ == "__main__":
    main()
