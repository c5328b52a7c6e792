"""MNIST test-set bits/dim: the VDM likelihood model of ``experiments.mnist_likelihood`` beside two baselines that
every diffusion model must beat, all computed here.

    python -m benchmarks.mnist_nll --data_dir ../shared/data/mnist                        # the baselines only
    python -m benchmarks.mnist_nll --data_dir ../shared/data/mnist --workdir /work/runs/mnist_vdm \
        --n_examples 1000 --pf_ode                          # + the model's ELBO and PF-ODE bits/dim

Every number is bits per dimension of the 8-bit test images, -log2 P(x) / 784 (or an upper bound on it), as a
mean over test images with its standard error (sd / sqrt(n), ddof 1; the model is held fixed).

Baselines (numpy/scipy, about a CPU-minute; always computed, on the full 10,000 test images):

* **Per-pixel categorical**: an independent distribution over the 256 values for each of the 784 pixels, fitted
  on the 60,000 training images with add-alpha smoothing, p_d(v) = (n_dv + alpha) / (N + 256 alpha). alpha is
  chosen from ``ALPHAS`` by the bits/dim of a held-out 10,000 of the training images (fitted on the other 50,000),
  then the model is refitted on all 60,000.
* **Mixture of K = 20 per-pixel categoricals**, fitted by EM on the training images: log-space E-step
  (logsumexp over components, float64), M-step with the same add-alpha smoothing of the soft counts (MAP-EM under
  a symmetric Dirichlet), initialised by assigning every image to the nearest of K random training images (fixed
  seed), iterated until the training bits/dim improves by less than ``--em_tol`` (or ``--em_iters`` iterations).
  alpha is chosen on the same held-out split: EM on the 50,000, then each alpha of ``ALPHAS`` applied to the
  final soft counts and scored on the held-out 10,000; EM is then rerun on all 60,000 with the chosen alpha.
  A pixel's value is read through a sparse one-hot of its non-zero values (80% of MNIST pixels are 0), so each EM
  iteration is two sparse (60,000 x 200,704) products with 20 columns.

The model (``--workdir``: a run of ``experiments.mnist_likelihood``; its latest checkpoint, EMA weights, with the
trained noise schedule, ``restore(workdir).score_fn()``), on the first ``--n_examples`` test images:

* **VDM ELBO** (``sj.vdm_elbo_bpd``, ``--n_t`` stratified times per image): an upper bound on -log2 P(x) / D of
  the discrete images through VDM's discretised decoder at t = 0, the data read at the bin centres on [-1, 1] as
  in training. This is the model's number.
* **PF-ODE, uniform dequantisation** (``--pf_ode``): ``sj.log_likelihood`` (Hutchinson, one Rademacher probe per
  image, adaptive Tsit5 with the joint error norm) of y = -1 + 2 (k + u) / 256 for the integer image k,
  u ~ U[0, 1)^D (``sj.evaluate_bpd``), i.e.
  E_u[-log2 p_ode(y)] / D + 7: an upper bound on -log2 of the discrete model P(x) = int_bin p_ode. Default
  rtol = atol = 1e-4: ``benchmarks/results/tolerance_mnist.json`` measured 2.5929 bits/dim at 1e-4 against
  2.5922 at 1e-5 (and 2.5926 with the RMS norm at 1e-5) on the same 20 MNIST test images and probes, at 259
  instead of 391 NFE. What it means for this model: p_ode is the PF-ODE density at t = eps = 1e-5 (the trained
  schedule at t = 0 to within 2e-4 in gamma), and this schedule starts at sigma_0 = sqrt(sigmoid(gamma_min)),
  about 1.3e-3 for gamma_min = -13.3, i.e. s = sigma_0 / alpha_0 * 128 = 0.17 bins. A model trained at the bin
  centres puts Gaussian bumps of that width at the centres, and a uniform dequantiser spreads its points over the
  whole bin, so the bound pays about E_u[-log2 N(u; 0, s^2)] = (log(2 pi s^2) / 2 + 1 / (24 s^2)) / ln 2 bits per
  dimension over the discrete NLL even for a pixel whose bin the model is sure of: 0.92 at gamma_min = -13.3,
  2.6 at -14, 9.5 at -15 (recorded as ``uniform_dequant_floor_bpd`` from the trained schedule). The number is
  therefore not comparable with the ELBO for this model; it is what the issue's protocol (score_sde's) measures.
* **PF-ODE, kernel dequantisation** (``--pf_ode_kernel``, ``sj.pf_ode_bpd``): the bound of the generative model
  "z ~ PF-ODE density at t = eps, then VDM's decoder p(x | z)" with the forward kernel as dequantiser,
  q(z | x) = N(alpha x, sigma^2 I) at t = eps (x at the bin centres):

      -log P(x) <= E_q[ -log p_ode(z) - log p(x | z) + log q(z | x) ],

  one z and one Hutchinson probe per image, log q(z | x) at that z (not its mean -D/2 log(2 pi e sigma^2): for a
  good model p_ode(z) ~ P(x) q(z | x) near x, so the sample's log q cancels most of log p_ode's spread over z).
  This is the PF-ODE counterpart of the ELBO (same decoder, same discrete data), the number to compare with it;
  ``tests/test_vdm.py`` checks it returns -log P(x) for a discrete 2-D distribution with its exact score.
* **PF-ODE above a split** (``--t_split s ...``): the same with the PF-ODE as the prior of z_s and VDM's diffusion
  term on [0, s] below it; its ``ode`` detail against the ELBO's prior + diffusion on [s, T] says whether the ODE
  model of the noisier part is better or worse than the diffusion's own bound there.

NFE is the mean number of score-network evaluations per batch solve. Writes ``benchmarks/results/mnist_nll.json``
(``--name``) and the table between the ``mnist_nll`` markers of ``benchmarks/README.md`` (``--no_readme``: not).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

import numpy as np
import scipy.sparse
from scipy.special import logsumexp

from benchmarks.common import add_solve_args, device_info, fmt, run_benchmark

NUM_VALUES = 256
ALPHAS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0)
LN2 = math.log(2.0)
ISSUE_BASELINES = {"categorical": 1.69, "mixture": 1.54}  # issue 15's own measurement of the same two models


# ------------------------------------------------------------------------------------------ baselines
def flat_pixels(images: np.ndarray, num_values: int = NUM_VALUES) -> np.ndarray:
    """Integer images (N, ...) -> (N, D) int64; ValueError unless every value lies in {0, ..., num_values - 1}."""
    x = np.asarray(images)
    if not np.issubdtype(x.dtype, np.integer) or x.ndim < 2:
        raise ValueError(f"expected integer images (N, ...); got {x.dtype} of shape {x.shape}.")
    x = x.reshape(len(x), -1).astype(np.int64)
    if x.size and (x.min() < 0 or x.max() >= num_values):
        raise ValueError(f"pixel values must lie in {{0, ..., {num_values - 1}}}; got [{x.min()}, {x.max()}].")
    return x


def sparse_one_hot(x: np.ndarray, num_values: int = NUM_VALUES) -> scipy.sparse.csr_matrix:
    """(N, D * V) CSR one-hot of the *non-zero* values of integer data (N, D): column d * V + x_nd. Value 0 is the
    reference: a per-pixel log-likelihood is sum_d logp[d, 0] + A @ (logp - logp[:, :1]).ravel()."""
    x = flat_pixels(x, num_values)
    n, d = x.shape
    rows, cols = np.nonzero(x)
    return scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols * num_values + x[rows, cols])),
                                   shape=(n, d * num_values))


def pixel_counts(x: np.ndarray, num_values: int = NUM_VALUES) -> np.ndarray:
    """(D, V) counts of each value at each pixel of integer data (N, D)."""
    x = flat_pixels(x, num_values)
    d = x.shape[1]
    return np.bincount((np.arange(d) * num_values + x).ravel(), minlength=d * num_values).reshape(d, num_values)


def smoothed_logp(counts: np.ndarray, alpha: float) -> np.ndarray:
    """log((n_v + alpha) / (sum_v n_v + V alpha)) over the last axis (counts may be soft)."""
    counts = np.asarray(counts, np.float64)
    return np.log(counts + alpha) - np.log(counts.sum(-1, keepdims=True) + counts.shape[-1] * alpha)


def fit_categorical(x: np.ndarray, alpha: float, num_values: int = NUM_VALUES) -> np.ndarray:
    """(D, V) log-probabilities of the add-alpha smoothed per-pixel categorical of integer data (N, D)."""
    return smoothed_logp(pixel_counts(x, num_values), alpha)


def categorical_bpd(logp: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bits/dim per example, (N,), of integer data (N, D) under per-pixel log-probabilities (D, V)."""
    x = flat_pixels(x, logp.shape[-1])
    return -logp[np.arange(x.shape[1]), x].sum(1) / (x.shape[1] * LN2)


def component_loglik(logp: np.ndarray, a: scipy.sparse.csr_matrix) -> np.ndarray:
    """(N, K) log-likelihood of each example under each component's per-pixel log-probabilities (K, D, V), the
    examples given by their :func:`sparse_one_hot` ``a``."""
    k = logp.shape[0]
    delta = (logp - logp[..., :1]).reshape(k, -1)
    return logp[..., 0].sum(-1)[None, :] + np.asarray(a @ delta.T)


def mixture_params(counts: np.ndarray, nk: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(log mixing weights (K,), smoothed log-probabilities (K, D, V)) from soft counts (K, D, V) and the
    components' total responsibilities nk (K,)."""
    nk = np.maximum(nk, np.finfo(np.float64).tiny)  # an emptied component keeps weight ~0, not log 0
    return np.log(nk / nk.sum()), smoothed_logp(counts, alpha)


def soft_counts(a_t: scipy.sparse.csr_matrix, r: np.ndarray, d: int, num_values: int) -> tuple[np.ndarray, np.ndarray]:
    """(soft counts (K, D, V), nk (K,)) of responsibilities r (N, K); ``a_t`` is the transposed sparse one-hot.
    Value 0 is the rest of each pixel's mass: nk minus the non-zero values' counts."""
    nk = r.sum(0)
    counts = np.asarray(a_t @ r).T.reshape(r.shape[1], d, num_values)
    counts[..., 0] = np.maximum(nk[:, None] - counts[..., 1:].sum(-1), 0.0)
    return counts, nk


def mixture_bpd(log_pi: np.ndarray, logp: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bits/dim per example, (N,), of integer data (N, D) under a mixture of per-pixel categoricals."""
    a = sparse_one_hot(x, logp.shape[-1])
    return -logsumexp(component_loglik(logp, a) + log_pi, axis=1) / (logp.shape[1] * LN2)


def init_responsibilities(x: np.ndarray, n_components: int, rng: np.random.Generator) -> np.ndarray:
    """Hard responsibilities (N, K): every example to the nearest (Euclidean) of K distinct random examples."""
    centres = x[rng.choice(len(x), n_components, replace=False)].astype(np.float32)
    xf = x.astype(np.float32)
    dist = (centres**2).sum(1)[None, :] - 2.0 * xf @ centres.T  # + |x|^2, the same for every centre
    r = np.zeros((len(x), n_components))
    r[np.arange(len(x)), dist.argmin(1)] = 1.0
    return r


def fit_mixture(x: np.ndarray, n_components: int, alpha: float, *, num_values: int = NUM_VALUES, seed: int = 0,
                max_iter: int = 100, tol: float = 1e-4) -> dict:
    """EM for a mixture of ``n_components`` per-pixel categoricals of integer data (N, D) (module docstring).

    Each iteration: M-step (smoothed soft counts), then the E-step's log-likelihood with those parameters, whose
    mean is the training bits/dim recorded in ``history``; stops when it improves by less than ``tol`` bits/dim or
    after ``max_iter`` iterations. Returns ``log_pi`` (K,), ``logp`` (K, D, V) (the last M-step's, scored by
    ``history[-1]``), the soft ``counts`` (K, D, V) and ``nk`` (K,) they came from, ``history`` and
    ``iterations``.
    """
    x = flat_pixels(x, num_values)
    d = x.shape[1]
    a = sparse_one_hot(x, num_values)
    a_t = a.T.tocsr()
    r = init_responsibilities(x, n_components, np.random.default_rng(seed))
    history: list[float] = []
    for _ in range(max_iter):
        counts, nk = soft_counts(a_t, r, d, num_values)
        log_pi, logp = mixture_params(counts, nk, alpha)
        joint = component_loglik(logp, a) + log_pi
        lse = logsumexp(joint, axis=1, keepdims=True)
        r = np.exp(joint - lse)
        history.append(float(-lse.mean() / (d * LN2)))
        if len(history) > 1 and history[-2] - history[-1] < tol:
            break
    return {"log_pi": log_pi, "logp": logp, "counts": counts, "nk": nk, "history": history,
            "iterations": len(history)}


def summary(values: np.ndarray) -> dict:
    """n, mean and standard error (sd / sqrt(n), ddof 1) of per-example values."""
    v = np.asarray(values, np.float64)
    return {"n": int(v.size), "bpd": float(v.mean()),
            "bpd_stderr": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")}


def holdout_split(n: int, n_valid: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of a fixed random split of n training examples."""
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_valid:], perm[:n_valid]


def baselines(train: np.ndarray, test: np.ndarray, *, n_components: int = 20, n_valid: int = 10_000,
              seed: int = 0, em_iters: int = 100, em_tol: float = 1e-4) -> list[dict]:
    """The rows of the two baselines (module docstring), fitted on ``train`` and scored on ``test``."""
    train, test = flat_pixels(train), flat_pixels(test)
    fit_idx, valid_idx = holdout_split(len(train), n_valid, seed)
    rows = []

    t0 = time.perf_counter()
    counts = pixel_counts(train[fit_idx])
    valid = {a: float(categorical_bpd(smoothed_logp(counts, a), train[valid_idx]).mean()) for a in ALPHAS}
    alpha = min(valid, key=valid.get)
    logp = fit_categorical(train, alpha)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_bpd = categorical_bpd(logp, test)
    rows.append({"model": "per-pixel categorical", "bound": "exact -log2 P(x)", **summary(test_bpd), "nfe": None,
                 "train_steps": None, "train_seconds": fit_s, "eval_seconds": time.perf_counter() - t0,
                 "details": {"alpha": alpha, "heldout_bpd_by_alpha": valid,
                             "train_bpd": float(categorical_bpd(logp, train).mean()),
                             "issue_15_measured": ISSUE_BASELINES["categorical"]}})

    t0 = time.perf_counter()
    em = fit_mixture(train[fit_idx], n_components, alpha, seed=seed, max_iter=em_iters, tol=em_tol)
    valid_m = {}
    for a in ALPHAS:
        log_pi, logp_a = mixture_params(em["counts"], em["nk"], a)
        valid_m[a] = float(mixture_bpd(log_pi, logp_a, train[valid_idx]).mean())
    alpha_m = min(valid_m, key=valid_m.get)
    select_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    em = fit_mixture(train, n_components, alpha_m, seed=seed, max_iter=em_iters, tol=em_tol)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_bpd = mixture_bpd(em["log_pi"], em["logp"], test)
    rows.append({"model": f"mixture of {n_components} per-pixel categoricals (EM)", "bound": "exact -log2 P(x)",
                 **summary(test_bpd), "nfe": None, "train_steps": em["iterations"], "train_seconds": fit_s,
                 "eval_seconds": time.perf_counter() - t0,
                 "details": {"components": n_components, "alpha": alpha_m, "heldout_bpd_by_alpha": valid_m,
                             "alpha_selection_em_alpha": alpha, "alpha_selection_seconds": select_s,
                             "em_iterations": em["iterations"], "em_tol": em_tol, "em_max_iter": em_iters,
                             "train_bpd_history": [round(h, 5) for h in em["history"]],
                             "mixing_weights": np.exp(em["log_pi"]).round(4).tolist(),
                             "init": "nearest of K random training images", "seed": seed,
                             "issue_15_measured": ISSUE_BASELINES["mixture"]}})
    return rows


# ------------------------------------------------------------------------------------------ the model
def uniform_dequant_floor_bpd(sde, eps: float, num_bins: int = NUM_VALUES) -> float:
    """Bits/dim that uniform dequantisation costs, over the discrete NLL, a model whose density at t = eps is a
    Gaussian bump of std sigma / alpha at the bin centre of a pixel it is sure of (module docstring):
    (log(2 pi s^2) / 2 + 1 / (24 s^2)) / ln 2 with s in bins. Approximate: neighbouring bins' mass is ignored."""
    alpha, sigma = (float(v) for v in sde.alpha_sigma(eps))
    s = sigma / alpha * num_bins / 2.0
    return (0.5 * math.log(2 * math.pi * s * s) + 1.0 / (24.0 * s * s)) / LN2


def model_rows(args: argparse.Namespace, test: np.ndarray) -> tuple[list[dict], dict]:
    """The ELBO row (and the PF-ODE rows with ``--pf_ode`` / ``--pf_ode_kernel``) of the model in ``args.workdir``,
    and a description of the model."""
    import functools

    import jax

    import sde_jax as sj
    from benchmarks.nll_checkpoint import train_seconds
    from sde_jax.data.images import to_model_scale
    from sde_jax.train.checkpoint import restore

    m = restore(args.workdir)
    score, sde, cfg = m.score_fn(), m.sde, m.config
    if cfg.data.get("scale", "minus_one_one") != "minus_one_one" or cfg.loss.get("kind") != "vdm":
        raise ValueError(f"{args.workdir} is not an experiments.mnist_likelihood run (VDM loss, data on [-1, 1]); "
                         "for other models use benchmarks.nll_checkpoint.")
    num_bins = int(cfg.loss.get("num_bins", NUM_VALUES))
    tt = train_seconds(args.workdir)
    if tt is None and os.path.exists(os.path.join(args.workdir, "eval.json")):
        with open(os.path.join(args.workdir, "eval.json")) as f:
            tt = json.load(f).get("train_seconds")
    gamma = getattr(sde, "gamma", None)
    info = {"workdir": os.path.abspath(args.workdir), "train_steps": m.step, "train_seconds": tt,
            "n_params": int(sum(a.size for a in jax.tree.leaves(m.params))), "sde": type(sde).__name__,
            "gamma_min": None if gamma is None else float(gamma(0.0)),
            "gamma_max": None if gamma is None else float(gamma(1.0)),
            "model": dict(cfg.model), "weights": "EMA"}
    common = {"nfe": None, "train_steps": m.step, "train_seconds": tt}
    key = jax.random.key(args.seed)
    k = test[: args.n_examples]
    rows = []

    t0 = time.perf_counter()
    elbo = sj.vdm_elbo_bpd(score, k, jax.random.fold_in(key, 0), num_bins=num_bins, n_t=args.n_t,
                           batch_size=args.batch_size, progress=True)
    rows.append({"model": "VDM (this repo), ELBO", "bound": "upper bound on -log2 P(x) (discretised decoder)",
                 **summary(elbo["bpd"]), **common, "eval_seconds": time.perf_counter() - t0,
                 "details": {"n_t": args.n_t, "prior": float(elbo["prior"].mean()),
                             "reconstruction": float(elbo["reconstruction"].mean()),
                             "diffusion": float(elbo["diffusion"].mean())}})

    solve = dict(divergence="hutchinson", n_probes=1, rtol=args.rtol, atol=args.atol, max_steps=args.max_steps)
    n_ode = args.n_examples if args.ode_examples is None else min(args.ode_examples, args.n_examples)
    ode_settings = {"solver": "tsit5 (adaptive, joint error norm)", "eps": args.eps, "rtol": args.rtol,
                    "atol": args.atol, "divergence": "hutchinson (1 Rademacher probe)",
                    "batch_size": args.ode_batch_size}
    if args.pf_ode:
        batch_fn = functools.partial(sj.log_likelihood, score, sde, eps=args.eps, **solve)
        res = sj.evaluate_bpd(batch_fn, k[:n_ode], jax.random.fold_in(key, 1), num_bins=num_bins,
                              data_range=(-1.0, 1.0), n_dequant=1, batch_size=args.ode_batch_size)
        rows.append({"model": "VDM (this repo), PF-ODE, uniform dequantisation",
                     "bound": "upper bound on -log2 P(x) of the PF-ODE density integrated over bins",
                     **summary(res.values), **common, "nfe": res.nfe_mean, "eval_seconds": res.seconds,
                     "details": {**ode_settings, "dequantization": "uniform",
                                 "uniform_dequant_floor_bpd": uniform_dequant_floor_bpd(sde, args.eps, num_bins)}})
    splits = ([args.eps] if args.pf_ode_kernel else []) + list(args.t_split or [])
    for t_split in splits:
        t0 = time.perf_counter()
        res = sj.pf_ode_bpd(score, k[:n_ode], jax.random.fold_in(key, 2), t_split=t_split, num_bins=num_bins,
                            n_t=args.n_t, batch_size=args.ode_batch_size, progress=True, **solve)
        gamma_split = None if gamma is None else float(gamma(t_split))
        top = "PF-ODE" if t_split == args.eps else f"PF-ODE above gamma = {gamma_split:.1f}, diffusion below"
        rows.append({"model": f"VDM (this repo), {top}, kernel dequantisation + decoder",
                     "bound": "upper bound on -log2 P(x) (PF-ODE prior on z_s, VDM's diffusion below s, decoder)",
                     **summary(res["bpd"]), **common, "nfe": float(res["nfe"].mean()),
                     "eval_seconds": time.perf_counter() - t0,
                     "details": {**ode_settings, "t_split": t_split, "gamma_split": gamma_split,
                                 "dequantization": "q(z_s | x) = N(alpha_s x, sigma_s^2) (the forward kernel)",
                                 "ode": float(res["ode"].mean()), "diffusion_below": float(res["diffusion"].mean()),
                                 "reconstruction": float(res["reconstruction"].mean()),
                                 "elbo_same_images": summary(elbo["bpd"][:n_ode]),
                                 "minus_elbo_paired": summary(res["bpd"] - elbo["bpd"][:n_ode])}})
    return rows, info


# ------------------------------------------------------------------------------------------ the benchmark
def run(args: argparse.Namespace) -> dict:
    from sde_jax.data.pipeline import load_images

    train, _ = load_images("mnist", "train", args.data_dir)
    test, _ = load_images("mnist", "test", args.data_dir)
    device = device_info()
    rows = baselines(train, test, n_components=args.components, seed=args.seed, em_iters=args.em_iters,
                     em_tol=args.em_tol)
    model = None
    if args.workdir:
        more, model = model_rows(args, test)
        rows += more
    for r in rows:
        r["device"] = device
    for r in rows:
        print(f"{r['model']}: {r['bpd']:.4f} +- {r['bpd_stderr']:.4f} bits/dim (n = {r['n']})", flush=True)
    return {"kind": "mnist_nll", "dataset": "mnist", "split": "test", "command": args.command, "device": device,
            "rows": rows, "model": model}


def readme_section(records: list[tuple[str, dict]]) -> str:
    """The table of every ``mnist_nll*`` record's rows."""
    out = ["## MNIST bits/dim against baselines (`python -m benchmarks.mnist_nll`)", "",
           "Test-set bits/dim of MNIST (lower is better; +- is the standard error over test images), of the VDM "
           "model of `experiments.mnist_likelihood` beside two baselines that the benchmark fits itself: an "
           "independent categorical distribution per pixel, and a mixture of per-pixel categoricals fitted by EM "
           "(add-alpha smoothing, alpha chosen on a held-out 10,000 of the training images). The ELBO and the "
           "kernel-dequantised PF-ODE bound -log2 P(x) of the discrete images through VDM's decoder; the "
           "uniformly dequantised PF-ODE (score_sde's protocol) pays, for a model trained at the bin centres "
           "whose schedule starts at sigma_0 ~ 1e-3, about the stated floor on top (the density is a narrow bump "
           "at each bin centre, the dequantiser spreads over the whole bin): see the module docstring. PF-ODE: "
           "Hutchinson with one probe, Tsit5, by default rtol = atol = 1e-4 (`tolerance_mnist.json`: within 0.001 "
           "bits/dim of 1e-5 on MNIST).", ""]
    many = len(records) > 1
    prefix = lambda name: f"{name}: " if many else ""
    out += [("| record " if many else "") + "| model | test images | bits/dim | NFE | train steps | train time | "
            "eval time | device |", ("|---" if many else "") + "|---|---|---|---|---|---|---|---|"]
    for name, rec in records:
        for r in rec["rows"]:
            tt = r.get("train_seconds")
            train_t = "-" if tt is None else (f"{tt:.0f} s" if tt < 600 else f"{tt / 60:.0f} min")
            steps = r.get("train_steps")
            if r["model"].startswith("mixture"):
                steps = f"{steps} EM iterations"
            note = ""
            if "uniform_dequant_floor_bpd" in r.get("details", {}):
                note = f" (floor ~{r['details']['uniform_dequant_floor_bpd']:.2f})"
            out.append(("| " + name + " " if many else "") +
                       f"| {r['model']} | {r['n']} | {r['bpd']:.3f} +- {r['bpd_stderr']:.3f}{note} | "
                       f"{fmt(None if r.get('nfe') is None else round(r['nfe']))} | {fmt(steps)} | {train_t} | "
                       f"{r['eval_seconds']:.1f} s | {r['device']} |")
    out.append("")
    for name, rec in records:
        cat = next((r for r in rec["rows"] if r["model"] == "per-pixel categorical"), None)
        mix = next((r for r in rec["rows"] if r["model"].startswith("mixture")), None)
        if cat and mix:
            d = mix["details"]
            out += [f"{prefix(name)}Baselines: alpha = {cat['details']['alpha']:g} (categorical) and "
                    f"{d['alpha']:g} (mixture: {d['em_iterations']} EM iterations, tolerance {d['em_tol']:g} "
                    f"bits/dim, at most {d['em_max_iter']}); issue 15 measured {ISSUE_BASELINES['categorical']} "
                    f"and {ISSUE_BASELINES['mixture']}.", ""]
        if rec.get("model"):
            mdl = rec["model"]
            out += [f"{prefix(name)}Model: {mdl['workdir']} ({mdl['n_params'] / 1e6:.2f}M parameters, EMA weights, "
                    f"{mdl['train_steps']} steps, trained gamma from {fmt(mdl['gamma_min'])} to "
                    f"{fmt(mdl['gamma_max'])}).", ""]
        out += [f"{prefix(name)}Command: `{rec['command']}`", ""]
    loads = sorted(r["load_avg_1min"] for _, r in records if r.get("load_avg_1min") is not None)
    if loads:
        span = f"{loads[0]}" if loads[0] == loads[-1] else f"{loads[0]}-{loads[-1]}"
        out += [f"Shared machine: 1-minute load average {span} on {os.cpu_count()} cores at the end "
                "of each run (`load_avg_1min`); times are of one run.", ""]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", help="folder of the MNIST IDX files; without it MNIST comes from tensorflow-datasets")
    p.add_argument("--workdir", help="an experiments.mnist_likelihood run: adds the model's ELBO (and PF-ODE) rows")
    p.add_argument("--n_examples", type=int, default=1000, help="test images for the model's rows (the baselines "
                   "always use all 10,000)")
    p.add_argument("--n_t", type=int, default=4, help="stratified times per image for the ELBO")
    p.add_argument("--batch_size", type=int, default=250, help="ELBO batch size")
    p.add_argument("--pf_ode", action="store_true", help="PF-ODE bits/dim with uniform dequantisation")
    p.add_argument("--pf_ode_kernel", action="store_true",
                   help="PF-ODE bound with the forward kernel as dequantiser and VDM's decoder")
    p.add_argument("--t_split", type=float, nargs="*", help="times s for rows of the bound with the PF-ODE above s "
                   "and VDM's diffusion term below (sj.pf_ode_bpd)")
    p.add_argument("--ode_examples", type=int, help="test images for the PF-ODE rows (default: --n_examples)")
    p.add_argument("--ode_batch_size", type=int, default=100)
    p.add_argument("--max_steps", type=int, default=4096, help="PF-ODE solver step limit")
    p.add_argument("--components", type=int, default=20, help="mixture components")
    p.add_argument("--em_iters", type=int, default=100, help="most EM iterations")
    p.add_argument("--em_tol", type=float, default=1e-4, help="EM stops when training bits/dim improves by less")
    add_solve_args(p, "mnist_nll")
    p.set_defaults(rtol=1e-4, atol=1e-4)
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    args.command = "python -m benchmarks.mnist_nll " + shlex.join(a for a in argv if a != "--no_readme")
    return args


def main(argv: list[str] | None = None) -> None:
    run_benchmark(parse_args(argv), parse_args, run, lambda a: "mnist_nll", "mnist_nll", readme_section,
                  "mnist_nll")


if __name__ == "__main__":
    main()
