"""Few-step MNIST generation: consistency distillation (CD), consistency training (CT) and progressive distillation
(PD) of a class-conditional score model, trained through ``sde_jax.train.train`` (resumable), with sample grids and
classifier accuracy / feature FD of class-conditional samples.

    python -m experiments.consistency --workdir runs/cd_mnist          # CD of experiments/checkpoints/mnist_cfg
    python -m experiments.consistency --workdir runs/pd4_mnist --config.method=pd --config.pd.final_steps=4
    python -m experiments.consistency --workdir runs/pd1_mnist --config.method=pd --config.pd.final_steps=1
    python -m experiments.consistency --workdir runs/ct_mnist --config.method=ct --config.data.dir=../shared/data/mnist

A killed run resumes from its latest checkpoint with the same command (PD: in the round it was in).

**Teacher** (CD, PD): ``teacher_dir`` holds a class-conditional score model trained with label dropout
(``experiments.mnist``, or the folder ``export_weights`` writes; default the committed
``experiments/checkpoints/mnist_cfg``). Its network, SDE, data scaling and shape become the run's; the fingerprint of
its weights is recorded in the run's ``config.json`` (``config.teacher``) and a resumed run refuses other weights. A
missing folder, one without weights, or one that holds something other than a class-conditional score model
(a classifier, a VAE, an unconditional model, a learned schedule) is an error before any work. The teacher's
probability-flow ODE is *guided*: classifier-free guidance of weight ``guidance_w``, (1 + w) s(x, t | y) - w s(x, t),
with the label and the null label (guided distillation: Meng et al. 2023; Luo et al. 2023, LCM); the student is
conditional on the label only and samples the guided model with no guidance of its own (w is fixed, not an input).

* ``method="cd"`` (Song et al. 2023, Alg. 2): the student is a :class:`sde_jax.distill.ConsistencyModel` over the
  teacher's SDE whose network is the teacher's U-Net read in the teacher's parameterisation through EDM's
  preconditioning (``ConsistencyModel.parameterization``), initialised from the teacher's weights, so it starts at
  the teacher's one-step denoiser. Loss :func:`sde_jax.distill.cd_loss` on ``consistency.levels`` Karras levels with
  one teacher step (``consistency.solver``: EDM's Heun, 2 guided evaluations, or DDIM, 1) between adjacent levels.
  **Target network: stop_gradient(theta), not an EMA.** ``train()`` keeps one EMA, the evaluation average (decay
  ``train.ema_decay``, warmed up); making it the target too would tie the target's lag to the evaluation average's
  (CD's theta- uses mu = 0.95, the evaluation EMA 0.9999 in Song et al. 2023), and a separate target EMA would be a
  new ``TrainState`` field, changing every experiment's checkpoints. Nor is it needed: Song & Dhariwal (2023,
  Sec. 3.2) dropped the target's EMA (mu = 0), which trains better and is what their analysis supports, and CD's
  guarantee (Song et al. 2023, Thm. 1) is stated for theta- = theta; so stop_gradient(theta) is the recipe here.
* ``method="ct"`` (improved CT, Song & Dhariwal 2023): no teacher; a class-conditional U-Net (``config.model``)
  from a random init, :func:`sde_jax.distill.ct_loss` (pseudo-Huber, log-normal level index, weight
  1 / (s_{n+1} - s_n), stop-gradient target) with the doubling curriculum :func:`sde_jax.distill.ct_levels` driven
  by the training step (``consistency.ct_s0`` -> ``ct_s1`` levels over ``train.steps``).
* ``method="pd"`` (Salimans & Ho 2022): rounds that halve DDIM steps from ``pd.teacher_steps`` to
  ``pd.final_steps``; round k trains a student of teacher_steps / 2^(k+1) steps on :func:`sde_jax.distill.pd_loss`
  (two teacher DDIM steps per student step, truncated-SNR weight max(SNR, 1)) for ``pd.steps_per_round`` steps,
  initialised from its teacher. Round 0's teacher is the guided ``teacher_dir`` model, round k's the EMA weights of
  round k - 1's student; the student reads its network in ``loss.parameterization`` ("v" or "x0"; default the
  teacher's: a student in another parameterisation starts from weights that mean something else). Round k trains in
  ``<workdir>/round_<k>/`` (a ``train()`` workdir of its own, restorable with ``sde_jax.train.restore`` as a score
  model: ``sj.sample(r.score_fn(y), r.sde, key, shape, method="ddim", steps=N, denoise=False)``); a finished round
  is not trained again.

Every loss is evaluated per example (``jax.vmap`` over examples of batch 1 with their own keys, so N devices give
the numbers of one, as the library's losses do), and the teacher's (or the previous student's) parameters reach the
compiled step as ``train(..., frozen=...)``, an argument, never a closed-over constant.

``train.steps``, ``train.lr`` and ``train.decay_steps`` left at 0 take the method's defaults (CD 2000 steps at 2e-4,
CT 3000 at 5e-4, PD ``pd.steps_per_round`` per round at 2e-4; the rate follows a cosine to 0 over the run or round).

Writes ``metrics.jsonl``, ``checkpoints/<step>/`` (PD: per round), a one-step grid ``samples_<step>.png`` at each
checkpoint (PD: the round's student at its step count), and at the end ``samples.png`` (one row per class; CD/CT:
``sample.per_class`` samples at 1 step, then as many at 2 steps, re-noised at the noise level s = sigma / alpha =
``sample.mid_level``; PD: the student of every round at its step count, from most steps to fewest) and
``eval.json``: per sampler (the students and the guided teacher with DDIM at each of ``eval.teacher_steps``, the
baseline at the students' step counts and at the 50 steps it is usually sampled with) the classifier's accuracy on ``eval.n_samples`` class-conditional samples (balanced
labels, +- binomial standard error) and the classifier-feature FD to as many test images beside the test-vs-test floor
(``eval.classifier_dir``; the measures of ``benchmarks/mnist_sampling.py``), with the training's steps (in all, and
run by this invocation), the wall time of this invocation's training (compilation included) and the median step
rate logged in ``metrics.jsonl``.

Step rates at the default batch of 32 (measured over 8 steps after compilation, on 2 CPU cores shared with three
other jobs, load ~5, so an idle machine is faster): CD with the Heun teacher and w = 1: 1.5 steps/s (DDIM teacher:
2.3); CT: 2.7 steps/s; PD round 0 (guided teacher): 2.0 steps/s, later rounds 2.1. Compiling a train step takes
35-45 s (once per run, per PD round and per resumption). The defaults thus train in about 25 min (CD, 2000 steps),
20 min (CT, 3000) and 5 min per PD round of 500 steps (20 min to 4 steps, 30 min to 1 step); the evaluation of
1000 samples per sampler adds 1-4 min (PD evaluates every round's student).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

import sde_jax as sj
from experiments import common
from sde_jax.config import base_config, model_from_config, optimizer_from_config, sde_from_config
from sde_jax.data.images import class_grid_labels, from_model_scale, save_grid, to_model_scale
from sde_jax.data.pipeline import ImageBatches, load_images
from sde_jax.distill import cd_loss, consistency_model, ct_levels, ct_loss, pd_loss, pseudo_huber, squared_l2
from sde_jax.eval import clean_time, embed, feature_distances, load_classifier, predict
from sde_jax.latent import params_fingerprint
from sde_jax.sampling import ddim_step, heun_step
from sde_jax.train import Restored, restore, train
from sde_jax.train.checkpoint import Checkpointer, config_differences, load_config, save_config
from sde_jax.train.loop import prepare_workdir
from sde_jax.train.metrics import logged_train_seconds, read_metrics

METHODS = ("cd", "ct", "pd")
TEACHER_STEPS = {"heun": heun_step, "ddim": ddim_step}
METRICS = {"l2": squared_l2, "pseudo_huber": pseudo_huber}
DEFAULTS = {"cd": (2000, 2e-4), "ct": (3000, 5e-4), "pd": (0, 2e-4)}  # (train.steps, train.lr) when left at 0
SCORE_LOSSES = ("dsm", "discrete", "vdm")


def get_config() -> ConfigDict:
    c = base_config()
    c.method = "cd"  # "cd" | "ct" | "pd"
    c.teacher_dir = "experiments/checkpoints/mnist_cfg"  # CD, PD: a class-conditional score model
    c.guidance_w = 1.0  # classifier-free guidance inside the teacher's ODE steps (CD, PD round 0)
    # CD/PD: name, shape, scale and num_classes are the teacher's, dir too when empty; CT: empty dir -> tfds.
    # limit > 0: train on the first `limit` training images only (tests)
    c.data = ConfigDict({"name": "mnist", "dir": "", "shape": (28, 28, 1), "scale": "minus_one_one",
                         "dequantize": True, "flip": False, "num_classes": 10, "limit": 0})
    # CT's network (experiments.mnist's U-Net, ~0.6M parameters); CD and PD take the teacher's
    c.model = ConfigDict({"name": "unet", "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1,
                          "attn_resolutions": (7,), "dropout": 0.0, "patch_size": 2, "num_classes": 10})
    # the student's network output: "" -> the teacher's (CD must keep it; PD: "v" or "x0"); CT: "" -> "v"
    c.loss = ConfigDict({"kind": "distill", "parameterization": ""})
    c.consistency = ConfigDict({"sigma_data": 0.5, "levels": 18, "solver": "heun", "metric": "l2", "rho": 7.0,
                                "ct_s0": 10, "ct_s1": 1280})
    c.pd = ConfigDict({"teacher_steps": 64, "final_steps": 4, "steps_per_round": 500})
    c.train.update(steps=0, batch_size=32, lr=0.0, warmup=100, decay_steps=0, ema_decay=0.995, log_every=50,
                   checkpoint_every=500)
    # 2-step consistency sampling re-noises at s = sigma / alpha = mid_level (Song et al. 2023: 0.821 on CIFAR-10; on
    # MNIST the CD student's FD is 1.01 at 0.1-0.2 against 1.89 at 0.8: benchmarks/results/distill_mnist.json)
    c.sample.update(per_class=8, mid_level=0.2)
    c.eval = ConfigDict({"classifier_dir": "experiments/checkpoints/mnist_classifier", "n_samples": 1000,
                         "batch_size": 250, "teacher_steps": (1, 2, 4, 50)})
    return c


# ------------------------------------------------------------------------------------------- the teacher
def load_teacher(teacher_dir: str, guidance_w: float) -> Restored:
    """The score model in ``teacher_dir`` (EMA weights), after checking that it is one this experiment distils:
    FileNotFoundError for a missing folder or weights, ValueError for another kind of model."""
    if not teacher_dir:
        raise ValueError("method cd and pd distil a teacher: set --config.teacher_dir to a class-conditional score "
                         "model (e.g. experiments/checkpoints/mnist_cfg).")
    if not os.path.isdir(teacher_dir):
        raise FileNotFoundError(f"teacher_dir {teacher_dir} does not exist; point --config.teacher_dir at a trained "
                                "experiments.mnist workdir or an exported folder (experiments/checkpoints/mnist_cfg).")
    cfg = ConfigDict(load_config(teacher_dir))  # FileNotFoundError naming config.json
    kind, name = cfg.get("loss", {}).get("kind"), cfg.get("model", {}).get("name")
    where = f"teacher_dir {teacher_dir}"
    if kind not in SCORE_LOSSES or name in ("classifier", "vae"):
        raise ValueError(f"{where} holds a {name!r} model trained with loss.kind={kind!r}, not a score model; point "
                         "--config.teacher_dir at an experiments.mnist run (e.g. experiments/checkpoints/mnist_cfg).")
    if cfg.sde.get("name") == "vdm_learned":
        raise ValueError(f"{where} learned its noise schedule (sde.name='vdm_learned'); distil a model of a fixed "
                         "SDE (e.g. experiments/checkpoints/mnist_cfg).")
    if cfg.model.get("num_classes") is None:
        raise ValueError(f"{where} holds an unconditional model; this experiment distils a class-conditional one "
                         "(model.num_classes set, e.g. experiments/checkpoints/mnist_cfg).")
    if guidance_w != 0 and not float(cfg.loss.get("p_uncond", 0.0)) > 0:
        raise ValueError(f"{where} was trained without label dropout (loss.p_uncond = 0), so its null label gives no "
                         "unconditional score for classifier-free guidance: use --config.guidance_w=0 or a teacher "
                         "trained with loss.p_uncond > 0.")
    if len(cfg.data.shape) != 3:
        raise ValueError(f"{where} models data of shape {tuple(cfg.data.shape)}, not images (H, W, C).")
    return restore(teacher_dir)  # FileNotFoundError without weights, CheckpointError / ValueError if they mismatch


def check_classifier(classifier_dir: str) -> None:
    """Before any work: FileNotFoundError / ValueError unless ``classifier_dir`` (if set) holds a classifier."""
    if not classifier_dir:
        return
    cfg = load_config(classifier_dir)
    if cfg.get("model", {}).get("name") != "classifier":
        raise ValueError(f"eval.classifier_dir {classifier_dir} holds a {cfg.get('model', {}).get('name')!r} model, "
                         "not a classifier (experiments.mnist_classifier).")


def resolve(config: ConfigDict) -> tuple[ConfigDict, Restored | None]:
    """The run's config (the teacher's network, SDE and data for CD/PD, the method's step and rate defaults, the
    teacher's fingerprint in ``config.teacher``) and the teacher (None for CT). Raises before any work."""
    config = ConfigDict(config.to_dict())
    method = config.method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    check_classifier(config.eval.classifier_dir)
    steps, lr = DEFAULTS[method]
    if method == "pd":
        if config.train.steps:
            raise ValueError("method pd trains pd.steps_per_round steps per round; leave train.steps at 0.")
        check_rounds(config.pd)
        steps = config.pd.steps_per_round
    config.train.steps = int(config.train.steps or steps)
    config.train.lr = float(config.train.lr or lr)
    config.train.decay_steps = int(config.train.decay_steps or config.train.steps)
    optimizer_from_config(config.train)  # a warm-up longer than the run is an error now, not after loading data
    config.loss.kind = method
    cc = config.consistency
    if cc.solver not in TEACHER_STEPS or cc.metric not in METRICS:
        raise ValueError(f"consistency.solver must be one of {list(TEACHER_STEPS)} and consistency.metric one of "
                         f"{list(METRICS)}; got {cc.solver!r}, {cc.metric!r}.")
    teacher = None
    if method == "ct":
        config.loss.parameterization = config.loss.parameterization or "v"
        if config.model.get("num_classes") is None:
            raise ValueError("the sample grid and accuracy need a class-conditional model: set model.num_classes.")
        config.data.num_classes = config.model.num_classes
    else:
        teacher = load_teacher(config.teacher_dir, config.guidance_w)
        tc = teacher.config
        config.model = ConfigDict(tc.model.to_dict())
        config.sde = ConfigDict(tc.sde.to_dict())
        for key in ("name", "shape", "scale"):
            value = tc.data[key]
            config.data[key] = tuple(value) if isinstance(value, list) else value
        config.data.num_classes = tc.model.num_classes
        config.data.dir = config.data.dir or tc.data.get("dir", "")
        param, t_param = config.loss.parameterization, tc.loss.parameterization
        if method == "cd" and param not in ("", t_param):
            raise ValueError(f"CD reads the student's network (initialised from the teacher's weights) in the "
                             f"teacher's parameterization {t_param!r}; leave loss.parameterization empty.")
        if method == "pd" and (param or t_param) not in ("v", "x0"):
            raise ValueError(f"PD's student predicts v or x0 (an eps-prediction is undefined at t = T); got "
                             f"loss.parameterization={param or t_param!r}: set it to 'v' or 'x0'.")
        config.loss.parameterization = param or t_param
        config.teacher = ConfigDict({"fingerprint": params_fingerprint(teacher.params), "step": teacher.step,
                                     "parameterization": t_param, "null_label": int(tc.model.num_classes)})
    return config, teacher


def check_rounds(pd: ConfigDict) -> int:
    """The number of PD rounds, log2(teacher_steps / final_steps); ValueError unless it is a whole number >= 1."""
    n, m = int(pd.teacher_steps), int(pd.final_steps)
    rounds = math.log2(n / m) if n > 0 and m > 0 else -1.0
    if rounds < 1 or rounds != int(rounds):
        raise ValueError(f"pd.teacher_steps={n} must be pd.final_steps={m} times a power of 2 (>= 2): each round "
                         "halves the number of steps.")
    if pd.steps_per_round < 1:
        raise ValueError(f"pd.steps_per_round must be >= 1; got {pd.steps_per_round}.")
    return int(rounds)


# keys a resumed run may change: how long and how it trains (not PD's rounds: each round's student is the next one's
# teacher), samples and evaluates, and where things are
RESUMABLE = ("train.", "sample.", "eval.", "teacher_dir", "data.dir", "data.limit", "teacher.step")


def check_workdir(workdir: str, config: ConfigDict) -> None:
    """Before resuming: ValueError if ``workdir`` holds a run of another method, teacher (weights fingerprint),
    network or distillation setting."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return
    diffs = [d for d in config_differences(load_config(workdir), config.to_dict()) if not d.startswith(RESUMABLE)]
    if diffs:
        raise ValueError(f"{workdir} holds a run made with another setting ({'; '.join(diffs[:4])}); resume it with "
                         "the command that started it, or use a new --workdir.")


# ------------------------------------------------------------------------------------------- models
def guided(apply: Callable, params: Any, sde: Any, parameterization: str, y: jax.Array, null: int, w: float):
    """The teacher's score for labels y: classifier-free guidance (1 + w) s(x, t | y) - w s(x, t | null) (w = 0: the
    conditional score)."""
    cond = sj.score_fn(apply, params, sde, parameterization, y)
    return cond if w == 0 else sj.classifier_free_guidance(cond, cond.with_labels(jnp.full_like(y, null)), w)


def student(config: ConfigDict, apply: Callable, sde: Any, params: Any, y: jax.Array | None = None):
    """The consistency model of the network (CD, CT): its output read in ``loss.parameterization`` through EDM's
    preconditioning, sigma_data = ``consistency.sigma_data``."""
    return consistency_model(apply, params, sde, sigma_data=config.consistency.sigma_data, y=y,
                             parameterization=config.loss.parameterization)


def per_example(one: Callable, keys: jax.Array, x0: jax.Array, y: jax.Array) -> jax.Array:
    """The mean over the batch of ``one(key, x[None], y[None])``, each example with its own key (the library losses'
    convention: a global batch split over N devices gives the losses of one)."""
    return jnp.mean(jax.vmap(lambda k, x, label: one(k, x[None], label[None]))(keys, x0, y))


# The losses below have train()'s custom-loss signature loss_fn(params, x0, keys, y, *, frozen, step).
def make_cd_loss(config: ConfigDict, apply: Callable, sde: Any) -> Callable:
    """CD's loss: the teacher's parameters arrive as ``frozen``; the target is stop_gradient(params)."""
    cc, tc, w = config.consistency, config.teacher, float(config.guidance_w)
    ode_step, metric = TEACHER_STEPS[cc.solver], METRICS[cc.metric]

    def loss(params, x0, keys, y, *, frozen, step):
        def one(key, x, label):
            teacher = guided(apply, frozen, sde, tc.parameterization, label, tc.null_label, w)
            teacher_step = lambda k, xx, t, tn: ode_step(teacher, sde, k, xx, t, tn)
            model = student(config, apply, sde, params, label)
            return cd_loss(params, params, model, teacher_step, key, x, cc.levels, metric, cc.rho)
        return per_example(one, keys, x0, y), {}

    return loss


def make_ct_loss(config: ConfigDict, apply: Callable, sde: Any) -> Callable:
    """Improved CT's loss: the number of levels follows the curriculum of the training step."""
    cc, total = config.consistency, int(config.train.steps)

    def loss(params, x0, keys, y, *, frozen, step):
        n_levels = ct_levels(step, total, cc.ct_s0, cc.ct_s1)
        one = lambda key, x, label: ct_loss(params, student(config, apply, sde, params, label), key, x, n_levels,
                                            cc.ct_s1 + 1, pseudo_huber, cc.rho)
        return per_example(one, keys, x0, y), {}

    return loss


def make_pd_loss(config: ConfigDict, apply: Callable, sde: Any, steps: int, teacher_parameterization: str,
                 w: float) -> Callable:
    """One PD round's loss for ``train``: a student of ``steps`` DDIM steps; the teacher's parameters (guided with
    weight ``w``, read in ``teacher_parameterization``) arrive as ``frozen``."""
    null, param = config.teacher.null_label, config.loss.parameterization

    def loss(params, x0, keys, y, *, frozen, step):
        def one(key, x, label):
            teacher = guided(apply, frozen, sde, teacher_parameterization, label, null, w)
            return pd_loss(params, sj.score_fn(apply, params, sde, param, label), teacher, key, x, steps)
        return per_example(one, keys, x0, y), {}

    return loss


# ------------------------------------------------------------------------------------------- sampling
class Sampler(NamedTuple):
    """``draw(key, y) -> x`` (model scale) of one sampler, with its label, its steps and its network evaluations per
    sample (``nfe``: a guided score costs two)."""

    label: str
    steps: int
    nfe: int
    draw: Callable


def consistency_samplers(config: ConfigDict, apply: Callable, sde: Any, params: Any) -> list[Sampler]:
    """The consistency model at 1 step and at 2 steps (re-noised at ``sample.mid_level``)."""
    model = student(config, apply, sde, params)
    lam = -2.0 * math.log(config.sample.mid_level)
    t_mid = float(jnp.clip(sde.t_from_log_snr(jnp.float32(lam)), sde.eps, sde.T))
    shape = tuple(config.data.shape)

    def draw(options):
        return lambda key, y: sj.sample(model.with_labels(y), sde, key, (len(y), *shape), method="consistency",
                                        **options)[0]
    return [Sampler(f"{config.method}, 1 step", 1, 1, draw({"steps": 1})),
            Sampler(f"{config.method}, 2 steps (t_mid {t_mid:.3f})", 2, 2, draw({"ts": [sde.T, t_mid]}))]


def ddim_sampler(label: str, apply: Callable, sde: Any, params: Any, parameterization: str, shape: tuple, steps: int,
                 null: int | None = None, w: float = 0.0) -> Sampler:
    """DDIM with ``steps`` steps and no denoising step (a PD student; with ``null`` and ``w`` the guided teacher)."""
    def draw(key, y):
        score = (sj.score_fn(apply, params, sde, parameterization, y) if null is None
                 else guided(apply, params, sde, parameterization, y, null, w))
        return sj.sample(score, sde, key, (len(y), *shape), method="ddim", steps=steps, denoise=False)[0]
    return Sampler(label, steps, steps * (1 if null is None or w == 0 else 2), draw)


def teacher_samplers(config: ConfigDict, apply: Callable, sde: Any, params: Any) -> list[Sampler]:
    """The guided teacher with DDIM at each of ``eval.teacher_steps`` steps: the students' baseline."""
    return [ddim_sampler(f"teacher, guided DDIM {n} step(s)", apply, sde, params, config.teacher.parameterization,
                         tuple(config.data.shape), int(n), config.teacher.null_label, config.guidance_w)
            for n in config.eval.teacher_steps]


def draw_all(sampler: Sampler, labels: np.ndarray, seed: int, batch: int) -> np.ndarray:
    """Samples (model scale) for ``labels`` in batches of ``batch`` (the last one padded: one compilation)."""
    out = []
    for i in range(0, len(labels), batch):
        y = labels[i:i + batch]
        y_full = np.concatenate([y, np.repeat(y[-1:], batch - len(y))]) if len(labels) > batch else y
        out.append(np.asarray(sampler.draw(jax.random.key(seed + i), jnp.asarray(y_full, jnp.int32)))[:len(y)])
    return np.concatenate(out)


def save_sample_grid(config: ConfigDict, samplers: list[Sampler], path: str) -> None:
    """One row per class: ``sample.per_class`` samples of each sampler in turn."""
    k, m = config.data.num_classes, config.sample.per_class
    labels = class_grid_labels(k, m)
    blocks = [from_model_scale(draw_all(s, labels, config.sample.seed, len(labels)), config.data.scale)
              for s in samplers]
    rows = [b[c * m:(c + 1) * m] for c in range(k) for b in blocks]
    save_grid(np.concatenate(rows), k, path)


# ------------------------------------------------------------------------------------------- evaluation
def evaluate(config: ConfigDict, samplers: list[Sampler]) -> list[dict]:
    """Per sampler: the classifier's accuracy on ``eval.n_samples`` class-conditional samples (balanced labels) and
    the classifier-feature FD to as many test images, beside the test-vs-test floor (benchmarks/mnist_sampling.py's
    measures); without ``eval.classifier_dir`` just the samplers."""
    rows = [{"sampler": s.label, "steps": s.steps, "nfe": s.nfe} for s in samplers]
    if not config.eval.classifier_dir:
        return rows
    c_apply, c_params, c_config = load_classifier(config.eval.classifier_dir)
    t = clean_time(c_config)
    k, n = config.data.num_classes, config.eval.n_samples
    labels = np.repeat(np.arange(k, dtype=np.int32), -(-n // k))[:n]
    test, _ = load_images(config.data.name, "test", config.data.dir or None, config.data.shape)
    real = [np.asarray(to_model_scale(test[i * n:(i + 1) * n], config.data.scale)) for i in (0, 1)]
    f_real, f_other = (embed(c_apply, c_params, r, t) for r in real)
    kid_size = min(1000, n)
    floor = feature_distances(f_real, f_other, kid_subset_size=kid_size)["fd_classifier"]
    for s, row in zip(samplers, rows):
        t0 = time.perf_counter()
        x = draw_all(s, labels, config.sample.seed + 100, config.eval.batch_size)
        seconds = time.perf_counter() - t0
        acc = float(np.mean(predict(c_apply, c_params, x, t) == labels))
        d = feature_distances(f_real, embed(c_apply, c_params, x, t), kid_subset_size=kid_size)
        row.update(accuracy=acc, accuracy_stderr=float(np.sqrt(acc * (1 - acc) / n)), fd_classifier=d["fd_classifier"],
                   kid_classifier=d["kid_classifier"], fd_floor=floor, n=n, sample_seconds=seconds)
        print(f"{s.label:40s} NFE {s.nfe:3d} accuracy {acc:.3f} +- {row['accuracy_stderr']:.3f} FD "
              f"{d['fd_classifier']:.3f} (floor {floor:.3f}) {seconds:.0f} s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------- training
class Trained(NamedTuple):
    samplers: list[Sampler]
    steps: int  # the students' training steps, all rounds
    steps_run: int  # of those, run by this invocation
    seconds: float  # wall time of this invocation's training (compilation included)
    workdirs: list[str]  # the train() workdirs (PD: one per round)


def logged_rate(workdirs: list[str]) -> float | None:
    """The median of the steps/s logged in ``metrics.jsonl`` (each over ``train.log_every`` steps; the median leaves
    out the compilation that the first interval of each invocation carries)."""
    rates = [m["steps_per_sec"] for d in workdirs for m in read_metrics(d) if m.get("steps_per_sec")]
    return float(np.median(rates)) if rates else None


def logged_seconds(workdirs: list[str]) -> float | None:
    """The training's wall time over every session (and PD round), from the metrics logs (``train_seconds`` is only
    this invocation's, 0 when it just evaluates a finished run)."""
    parts = [logged_train_seconds(read_metrics(d)) for d in workdirs]
    return None if None in parts else float(sum(parts))


def _batches(config: ConfigDict) -> ImageBatches:
    images, labels = load_images(config.data.name, "train", config.data.dir or None, config.data.shape)
    if config.data.limit:
        images, labels = images[:config.data.limit], labels[:config.data.limit]
    return ImageBatches(images, labels, config.train.batch_size, seed=config.seed, scale=config.data.scale,
                        dequantize=config.data.dequantize, flip=config.data.flip)


def run_consistency(config: ConfigDict, workdir: str, teacher: Restored | None, batches: ImageBatches,
                    progress: bool) -> Trained | None:
    """CD or CT in ``workdir`` (None if interrupted)."""
    sde = sde_from_config(config.sde)
    model = model_from_config(config.model, sde)
    y_grid = jnp.asarray(class_grid_labels(config.data.num_classes, config.sample.per_class))
    shape = (len(y_grid), *config.data.shape)

    def grid(step, state):
        m = student(config, model.apply, sde, state.ema_params, y_grid)
        x, _ = sj.sample(m, sde, jax.random.key(config.sample.seed), shape, method="consistency", steps=1)
        save_grid(from_model_scale(x, config.data.scale), config.data.num_classes,
                  os.path.join(workdir, f"samples_{step}.png"))

    if config.method == "cd":
        extra = {"loss_fn": make_cd_loss(config, model.apply, sde), "frozen": teacher.params,
                 "initial_params": teacher.params}
    else:
        extra = {"loss_fn": make_ct_loss(config, model.apply, sde)}
    result = train(config, workdir, batches, batches(0), progress=progress, on_checkpoint=grid, **extra)
    if result.interrupted:
        return None
    samplers = consistency_samplers(config, model.apply, sde, result.state.ema_params)
    if teacher is not None:
        samplers += teacher_samplers(config, model.apply, sde, teacher.params)
    return Trained(samplers, int(result.state.step), result.steps_run, result.seconds, [workdir])


def _finished(round_dir: str, steps: int) -> bool:
    """True if the round in ``round_dir`` has its checkpoint at ``steps``."""
    if not os.path.isdir(os.path.join(round_dir, "checkpoints")):
        return False
    ckpt = Checkpointer(os.path.join(round_dir, "checkpoints"), async_save=False)
    try:
        return (ckpt.latest_step() or 0) >= steps
    finally:
        ckpt.close()


def run_pd(config: ConfigDict, workdir: str, teacher: Restored, batches: ImageBatches,
           progress: bool) -> Trained | None:
    """PD's rounds, round k in ``<workdir>/round_<k>`` (None if interrupted); a finished round is read back."""
    sde = sde_from_config(config.sde)
    model = model_from_config(config.model, sde)
    shape, pd = tuple(config.data.shape), config.pd
    y_grid = jnp.asarray(class_grid_labels(config.data.num_classes, config.sample.per_class))
    if jax.process_index() == 0:
        save_config(prepare_workdir(workdir), config)
    params, t_param = teacher.params, config.teacher.parameterization
    samplers, steps_run, seconds, round_dirs = [], 0, 0.0, []
    for k in range(check_rounds(pd)):
        steps = pd.teacher_steps >> (k + 1)
        rc = ConfigDict(config.to_dict())
        rc.pd.round, rc.pd.student_steps = k, steps
        round_dir = os.path.join(workdir, f"round_{k}")
        round_dirs.append(round_dir)

        def grid(step, state, steps=steps, round_dir=round_dir):
            x, _ = sj.sample(sj.score_fn(model.apply, state.ema_params, sde, config.loss.parameterization, y_grid),
                             sde, jax.random.key(config.sample.seed), (len(y_grid), *shape), method="ddim",
                             steps=steps, denoise=False)
            save_grid(from_model_scale(x, config.data.scale), config.data.num_classes,
                      os.path.join(round_dir, f"samples_{step}.png"))

        if _finished(round_dir, pd.steps_per_round):
            params = restore(round_dir).params
        else:
            if progress:
                print(f"PD round {k}: {2 * steps} -> {steps} DDIM steps in {round_dir}", flush=True)
            loss = make_pd_loss(rc, model.apply, sde, steps, t_param, config.guidance_w if k == 0 else 0.0)
            result = train(rc, round_dir, batches, batches(0), progress=progress, on_checkpoint=grid, loss_fn=loss,
                           frozen=params, initial_params=params)
            steps_run, seconds = steps_run + result.steps_run, seconds + result.seconds
            if result.interrupted:
                return None
            params = result.state.ema_params
        t_param = config.loss.parameterization
        samplers.append(ddim_sampler(f"pd round {k}, DDIM {steps} step(s)", model.apply, sde, params, t_param,
                                     shape, steps))
    samplers += teacher_samplers(config, model.apply, sde, teacher.params)
    return Trained(samplers, check_rounds(pd) * pd.steps_per_round, steps_run, seconds, round_dirs)


# ------------------------------------------------------------------------------------------- main
def main(config: ConfigDict, workdir: str, progress: bool = True) -> None:
    config, teacher = resolve(config)
    check_workdir(workdir, config)
    batches = _batches(config)
    run = run_pd if config.method == "pd" else run_consistency
    trained = run(config, workdir, teacher, batches, progress)
    if trained is None or jax.process_index() != 0:
        return
    if config.method != "pd":
        common.plot_loss(read_metrics(workdir), os.path.join(workdir, "loss.png"))
    students = [s for s in trained.samplers if not s.label.startswith("teacher")]
    save_sample_grid(config, students, os.path.join(workdir, "samples.png"))
    report = {"method": config.method, "data": config.data.name, "teacher_dir": config.teacher_dir,
              "teacher": config.get("teacher", ConfigDict()).to_dict(), "guidance_w": config.guidance_w,
              "train_steps": trained.steps, "train_steps_run": trained.steps_run, "train_seconds": trained.seconds,
              "train_seconds_logged": logged_seconds(trained.workdirs),
              "steps_per_sec": logged_rate(trained.workdirs),
              "batch_size": config.train.batch_size, "rows": evaluate(config, trained.samplers)}
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    common.define_flags(get_config())
    common.run(main)
