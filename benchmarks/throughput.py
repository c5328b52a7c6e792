"""Training throughput: the framework loop against a bare jitted step of the same model, and images/s of the
image experiments' networks.

    python -m benchmarks.throughput [--devices 1 4] [--models mlp_tiny mlp unet] [--rounds 3]
    python -m benchmarks.throughput --images [--image-models mnist ddpm ...] [--cifar-batch 4] [--steps 5]

* **framework**: ``sde_jax.train.train`` itself -- pmap over the local devices, the per-step host work (batch
  function, sharding), a host sync at least every 25 steps, non-finite checks, EMA, metrics.jsonl and TensorBoard
  logging -- timed by clock marks its ``batch_fn`` takes at every log interval, every interval but the first
  (compilation). Checkpoints are kept out of the timed steps (only the final one is written, after the last mark).
* **bare**: ``jit(value_and_grad(loss) + optax update)`` on 1 device; on N devices the same step under ``pmap``
  with ``pmean`` of the gradients (synced every 25 steps, as simulated CPU devices deadlock otherwise).

Both see the same host batch every step and the same loss (``dsm_loss``), optimiser and model. Each device count
runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Framework and bare alternate
for ``--rounds`` rounds. Every interval is timed by wall clock and by the process's CPU time (all threads). The
table shows the overhead of the fastest intervals (least disturbed by other load) and of the medians, next to the
noise floor: the spread (p90 - p10) / median of the bare step's own intervals. An overhead smaller than that
spread is not resolved by the measurement; on a shared CPU machine it usually is not.
FLOPs per step come from XLA's cost analysis of the bare step; the fraction of peak is only given on a GPU whose
FP32 peak is known (``PEAK_FP32_FLOPS``), never for CPUs.

Writes ``benchmarks/results/throughput.json`` and the throughput section of ``benchmarks/README.md``.

``--images``: the jitted train step of the loop (``make_train_step`` of ``loss_from_config``: dropout, EMA, clipping
and Adam included) of ``experiments.mnist``'s config and of the CIFAR-10 presets of ``experiments.cifar10`` at their
full size, on one device and a fixed random batch. Compilation is timed apart; then ``--steps`` steps after one
warm-up step, each synchronised, wall clock and process CPU time; images/s = batch / median seconds per step.
Writes ``benchmarks/results/throughput_images.json`` and its own README section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any
from benchmarks.common import machine_info, write_readme_section

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "throughput.json")
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
BEGIN, END = "<!-- throughput:begin -->", "<!-- throughput:end -->"
IMAGES_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "throughput_images.json")
IMAGES_BEGIN, IMAGES_END = "<!-- throughput-images:begin -->", "<!-- throughput-images:end -->"
# --images: "mnist" (experiments.mnist.get_config()) and experiments.cifar10's presets; the default set fits ~10 min
# of a 2-core CPU (the deep presets are ~1.7x the cost of their shallow versions)
IMAGE_MODELS = ("mnist", "ddpm", "ddpmpp_continuous_vp", "ddpmpp_continuous_subvp", "ddpmpp_deep_continuous_vp",
                "ddpmpp_deep_continuous_subvp", "ncsnpp_continuous_ve", "ncsnpp_deep_continuous_ve")
DEFAULT_IMAGE_MODELS = ("mnist", "ddpm", "ddpmpp_continuous_vp", "ncsnpp_continuous_ve")
SYNC = 25  # the framework's host-sync interval (sde_jax.train.loop.SYNC_EVERY)

# Dense FP32 (non-tensor-core) peak per device, from NVIDIA's data sheets; matched by substring of device_kind.
PEAK_FP32_FLOPS = {"H200": 67e12, "H100": 67e12, "A100": 19.5e12}

# name -> (model config, data shape, global batch, steps per timed interval, timed intervals)
MODELS: dict[str, tuple[dict, tuple[int, ...], int, int, int]] = {
    "mlp_tiny": ({"name": "mlp", "width": 32, "depth": 1, "embed": "fourier", "embed_dim": 16, "fourier_scale": 16.0},
                 (2,), 64, 25, 8),
    "mlp": ({"name": "mlp", "width": 256, "depth": 3, "embed": "fourier", "embed_dim": 64, "fourier_scale": 16.0},
            (2,), 512, 25, 8),
    "unet": ({"name": "unet", "ch": 16, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": (7,)},
             (28, 28, 1), 16, 5, 6),
}


# ------------------------------------------------------------------------------------------- worker side
def _config(model: str) -> Any:
    """A toy2d-style config for ``model`` with checkpoints out of the way of the timed steps: a compile interval,
    ``intervals`` timed ones, and one more whose end (and the final checkpoint) is not timed."""
    from ml_collections import ConfigDict

    from experiments.toy2d import get_config

    cfg_model, shape, batch, interval, intervals = MODELS[model]
    c = get_config()
    c.model = ConfigDict(cfg_model)
    c.data.shape = shape
    c.train.batch_size = batch
    c.train.log_every = interval
    c.train.steps = interval * (intervals + 2)
    c.train.checkpoint_every = c.train.steps
    c.train.warmup = 10
    return c


def _host_batch(shape: tuple[int, ...], batch: int):
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)


def _clock() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all its threads)."""
    return time.perf_counter(), time.process_time()


def _per_step(marks: list[tuple[float, float]], interval: int) -> dict[str, list[float]]:
    """Seconds per step between consecutive interval marks: {"wall": [...], "cpu": [...]}."""
    pairs = list(zip(marks[:-1], marks[1:]))
    return {"wall": [(b[0] - a[0]) / interval for a, b in pairs], "cpu": [(b[1] - a[1]) / interval for a, b in pairs]}


def framework_seconds_per_step(model: str) -> dict[str, list[float]]:
    """Seconds per step of ``sde_jax.train.train`` per interval after the first (compilation). The loop asks
    ``batch_fn`` for step k right after finishing (and, at multiples of the log interval, syncing and logging)
    step k - 1, so clock marks taken there time whole intervals of the real loop."""
    from sde_jax.train import train

    c = _config(model)
    interval = c.train.log_every
    x = _host_batch(tuple(c.data.shape), c.train.batch_size)
    marks: dict[int, tuple[float, float]] = {}

    def batch_fn(step: int, rows: slice):
        if step % interval == 0:
            marks[step] = _clock()
        return x[rows]

    with tempfile.TemporaryDirectory() as workdir:
        train(c, workdir, batch_fn, x, progress=False)
    return _per_step([marks[k] for k in sorted(marks) if k >= interval], interval)


def bare_seconds_per_step(model: str) -> tuple[dict[str, list[float]], float | None]:
    """Seconds per step of the bare step (per interval, after a compile interval), and XLA's FLOP count of one
    step (None if the backend does not report it)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from sde_jax.train.step import example_keys, make_optimizer
    from sde_jax.config import loss_from_config, model_from_config, sde_from_config

    c = _config(model)
    net = model_from_config(c.model)
    loss_fn = loss_from_config(c.loss, net.apply, sde_from_config(c.sde))
    opt = make_optimizer(c.train.lr, warmup=c.train.warmup, grad_clip=c.train.grad_clip)
    x = _host_batch(tuple(c.data.shape), c.train.batch_size)
    params = jax.jit(net.init)(jax.random.key(0), jnp.asarray(x), jnp.ones((x.shape[0],)))
    opt_state = opt.init(params)
    n = jax.local_device_count()
    axis = "batch" if n > 1 else None

    def step(params, opt_state, batch, key):
        keys = example_keys(key, batch.shape[0], 0 if axis is None else jax.lax.axis_index(axis) * batch.shape[0])
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, batch, keys)[0])(params)
        if axis is not None:
            grads = jax.lax.pmean(grads, axis)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    flops = None
    if n == 1:
        fn = jax.jit(step, donate_argnums=(0, 1))
        cost = fn.lower(params, opt_state, jnp.asarray(x), jax.random.key(0)).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost["flops"]) if cost and "flops" in cost else None
        params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))  # no buffer donated twice
        feed = lambda: x  # noqa: E731
    else:
        from sde_jax.train import parallel

        fn = jax.pmap(step, axis_name=axis, in_axes=(0, 0, 0, None), donate_argnums=(0, 1))
        params, opt_state = parallel.replicate(params), parallel.replicate(opt_state)
        feed = lambda: x.reshape((n, -1) + x.shape[1:])  # noqa: E731

    _, _, _, interval, intervals = MODELS[model]
    key, marks = jax.random.key(1), []
    for k in range(interval * (intervals + 1)):
        if k % interval == 0 and k:
            jax.block_until_ready(loss)
            marks.append(_clock())
        params, opt_state, loss = fn(params, opt_state, feed(), jax.random.fold_in(key, k))
        if (k + 1) % SYNC == 0:
            jax.block_until_ready(loss)
    jax.block_until_ready(loss)
    marks.append(_clock())
    assert np.all(np.isfinite(np.asarray(loss)))
    return _per_step(marks, interval), flops


def worker(models: list[str], rounds: int) -> dict:
    """All measurements on this process's devices: ``rounds`` alternations of framework and bare per model
    (recompiles come from a persistent compilation cache), so load changes hit both alike."""
    import jax
    import numpy as np

    cache = tempfile.TemporaryDirectory(prefix="sde_jax_bench_cache_")  # removed when the worker exits
    jax.config.update("jax_compilation_cache_dir", cache.name)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    dev = jax.devices()[0]
    out = {"devices": jax.device_count(), "backend": jax.default_backend(), "device_kind": dev.device_kind,
           "rounds": rounds, "models": {}}
    for model in models:
        fw, bare, flops = {"wall": [], "cpu": []}, {"wall": [], "cpu": []}, None
        for _ in range(rounds):
            for clock, times in framework_seconds_per_step(model).items():
                fw[clock] += times
            times, flops = bare_seconds_per_step(model)
            for clock in bare:
                bare[clock] += times[clock]
        _, shape, batch, interval, _ = MODELS[model]
        t_fw, t_bare = float(np.min(fw["wall"])), float(np.min(bare["wall"]))
        cpu_fw, cpu_bare = float(np.median(fw["cpu"])), float(np.median(bare["cpu"]))
        peak = next((v for k, v in PEAK_FP32_FLOPS.items() if k in dev.device_kind), None)
        if jax.default_backend() == "cpu":
            peak = None
        out["models"][model] = {
            "global_batch": batch, "data_shape": list(shape), "interval_steps": interval,
            "framework_s_per_step": t_fw, "bare_s_per_step": t_bare, "overhead": t_fw / t_bare - 1.0,
            "framework_median_s_per_step": float(np.median(fw["wall"])),
            "bare_median_s_per_step": float(np.median(bare["wall"])),
            "overhead_of_medians": float(np.median(fw["wall"]) / np.median(bare["wall"])) - 1.0,
            "bare_noise": float(np.subtract(*np.percentile(bare["wall"], [90, 10])) / np.median(bare["wall"])),
            "framework_cpu_s_per_step": cpu_fw, "bare_cpu_s_per_step": cpu_bare,
            "cpu_time_overhead": cpu_fw / cpu_bare - 1.0,
            "framework_intervals": fw, "bare_intervals": bare,
            "framework_examples_per_s": batch / t_fw, "bare_examples_per_s": batch / t_bare,
            "flops_per_step": flops,
            "framework_flops_per_s": None if flops is None else flops / t_fw,
            "peak_fp32_flops_per_device": peak,
            "fraction_of_peak": None if flops is None or peak is None else flops / t_fw / (peak * jax.device_count()),
        }
    cache.cleanup()
    return out


# ------------------------------------------------------------------------------------------- --images
def image_config(name: str) -> Any:
    """The experiment config benchmarked as ``name``: MNIST's, or a CIFAR-10 preset's."""
    if name == "mnist":
        from experiments.mnist import get_config

        return get_config()
    from experiments.cifar10 import get_config

    return get_config(name)


def time_image_step(name: str, batch: int, steps: int) -> dict:
    """Compile seconds, XLA FLOPs and per-step wall / CPU seconds of the loop's jitted train step for ``name``.

    Parameters are random numbers of the network's shapes (``jax.eval_shape`` of the initialiser: nothing to
    compile for them; the values do not change the work of a step). Class-conditional configs get random labels.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sde_jax.config import loss_from_config, model_from_config, optimizer_from_config, sde_from_config
    from sde_jax.train.step import init_params, init_train_state, make_train_step

    c = image_config(name)
    sde = sde_from_config(c.sde)
    model = model_from_config(c.model, sde)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (batch, *c.data.shape)).astype(np.float32)
    k = c.model.get("num_classes")
    data = x if k is None else {"x": x, "y": rng.integers(0, k, batch).astype(np.int32)}
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), x))
    params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape, np.float32)), shapes)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    opt = optimizer_from_config(c.train)
    state = init_train_state(params, opt)
    state = state.replace(ema_params=jax.tree.map(jnp.copy, params))  # own buffers: the state is donated
    step = jax.jit(make_train_step(loss_from_config(c.loss, model.apply, sde, c.model), opt, c.train.ema_decay),
                   donate_argnums=0)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = step.lower(state, data, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    wall, cpu = [], []
    for i in range(steps + 1):  # step 0: warm-up (first-run allocations)
        w0, c0 = _clock()
        state, metrics = compiled(state, data, jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
        w1, c1 = _clock()
        if i:
            wall.append(w1 - w0)
            cpu.append(c1 - c0)
    assert bool(metrics["finite"]), f"{name}: non-finite loss in the benchmark step"
    med = float(np.median(wall))
    return {
        "batch": batch, "data_shape": list(c.data.shape), "network": c.model.name, "params": n_params,
        "sde": c.sde.name, "loss": c.loss.kind, "dropout": float(c.model.get("dropout", 0.0)),
        "compile_s": compile_s, "steps_timed": steps, "wall_s": wall, "cpu_s": cpu,
        "median_s_per_step": med, "min_s_per_step": float(np.min(wall)),
        "median_cpu_s_per_step": float(np.median(cpu)), "images_per_s": batch / med,
        "images_per_s_best": batch / float(np.min(wall)), "flops_per_step": flops,
        "gflops_per_s": None if flops is None else flops / med / 1e9,
    }


def run_images(models: list[str], cifar_batch: int, mnist_batch: int, steps: int) -> dict:
    """``time_image_step`` for each of ``models`` on this process's first device."""
    import jax

    dev = jax.devices()[0]
    info = machine_info()
    info.update(device_kind=dev.device_kind, platform_name=dev.platform)
    out = {"machine": info, "models": {}}
    for name in models:
        batch = mnist_batch if name == "mnist" else cifar_batch
        r = out["models"][name] = time_image_step(name, batch, steps)
        print(f"{name}: batch {batch}, {r['params'] / 1e6:.2f}M params, compile {r['compile_s']:.0f} s, "
              f"{r['median_s_per_step']:.2f} s/step (median of {steps}), {r['images_per_s']:.2f} images/s",
              flush=True)
    out["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    return out


def images_markdown(result: dict) -> str:
    """The README section of ``--images``."""
    m = result["machine"]
    lines = [
        "## Image training throughput (`python -m benchmarks.throughput --images`)", "",
        "The loop's jitted train step (`make_train_step` of `loss_from_config`: dropout, gradient clipping, Adam, EMA) "
        "of `experiments.mnist`'s config (U-Net, 2x2 patches, class-conditional) and of `experiments.cifar10`'s "
        "presets at full size, one device, a fixed random batch. Compilation excluded (shown apart); s/step: median "
        "of the timed steps after a warm-up step (best in brackets); images/s = batch / median. CIFAR-10 presets "
        "run at a small batch on CPU; score_sde trains them at 128.", "",
        f"Device: `{m['device_kind']}` (backend {m['default_backend']}); CPU {m['cpu']}, {m['cpu_cores']} cores; "
        f"jax {m['jax']}; "
        f"load average {m['load_average_1m_start']:.1f} at start, {m['load_average_1m_end']:.1f} at end "
        "(other jobs shared the cores: absolute numbers are pessimistic, CPU s/step is this process's own time).",
        "",
        "| model | network | params | batch | compile s | s/step (best) | CPU s/step | images/s | GFLOP/step "
        "| GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        gflop = "-" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:.1f}"
        rate = "-" if r["gflops_per_s"] is None else f"{r['gflops_per_s']:.1f}"
        lines.append(
            f"| {name} | {r['network']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['compile_s']:.0f} "
            f"| {r['median_s_per_step']:.2f} ({r['min_s_per_step']:.2f}) | {r['median_cpu_s_per_step']:.2f} "
            f"| {r['images_per_s']:.3g} | {gflop} | {rate} |")
    lines += ["", "GFLOP/step from XLA's cost analysis of the compiled step. Every step's wall and CPU time is in "
              "`benchmarks/results/throughput_images.json`."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- driver side
def run_worker(devices: int, models: list[str], rounds: int, timeout: float) -> dict:
    """One worker process with ``devices`` simulated CPU devices (or the real accelerators, if ``devices`` is 0)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        env.setdefault("JAX_PLATFORMS", "cpu")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--worker", "--rounds", str(rounds),
                           "--models", *models],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"worker with {devices} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    """The README section: one row per (devices, model)."""
    m = result["machine"]
    rounds = result["runs"][0]["rounds"]
    lines = [
        "## Training throughput (`python -m benchmarks.throughput`)", "",
        "Framework loop (`sde_jax.train.train`: pmap, per-step host work, syncs, NaN checks, EMA, metrics + "
        "TensorBoard) against a bare `jit(value_and_grad)` + optax step (pmap + pmean on N devices) of the same model "
        f"and batch, {rounds} interleaved rounds each, wall-clock per interval after compilation. ms/step: the "
        "fastest interval (least disturbed by other load). Overhead = framework / bare - 1 (goal <= 5%), from the "
        "fastest intervals and from the medians. Noise = (p90 - p10) / median of the bare step's intervals: an "
        "overhead below it is not resolved. `mlp_tiny` exposes the fixed per-step host cost.", "",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores, jax {m['jax']}, backend {m['default_backend']}; "
        f"load average {m['load_average_1m_start']:.1f} at start, {m.get('load_average_1m_end', float('nan')):.1f} "
        f"at end (other jobs shared the cores). {m['note']}.", "",
        "| devices | model | global batch | framework ms/step | bare ms/step | overhead (fastest) "
        "| overhead (medians) | noise | framework examples/s | GFLOP/step | fraction of peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in result["runs"]:
        for name, r in run["models"].items():
            gflop = "-" if r["flops_per_step"] is None else f"{r['flops_per_step'] / 1e9:.3f}"
            frac = "n/a (CPU)" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.1%}"
            lines.append(
                f"| {run['devices']} | {name} | {r['global_batch']} | {r['framework_s_per_step'] * 1e3:.2f} "
                f"| {r['bare_s_per_step'] * 1e3:.2f} | {r['overhead']:+.1%} | {r['overhead_of_medians']:+.1%} "
                f"| {r['bare_noise']:.0%} | {r['framework_examples_per_s']:.0f} | {gflop} | {frac} |")
    lines += ["", "GFLOP/step from XLA's cost analysis of the 1-device bare step (same global batch). Every interval "
              "(wall and process CPU time) is in `benchmarks/results/throughput.json`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 4],
                   help="simulated CPU device counts, one worker process each (0: the real accelerators)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--readme", default=README, help="README to update ('' to skip)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of framework and bare per model")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--images", action="store_true", help="images/s of the MNIST config and the CIFAR-10 presets")
    p.add_argument("--image-models", nargs="+", default=list(DEFAULT_IMAGE_MODELS), choices=list(IMAGE_MODELS))
    p.add_argument("--cifar-batch", type=int, default=4, help="--images: batch of the CIFAR-10 presets")
    p.add_argument("--mnist-batch", type=int, default=64, help="--images: batch of the MNIST config")
    p.add_argument("--steps", type=int, default=5, help="--images: timed steps per model (after a warm-up step)")
    p.add_argument("--table-only", action="store_true", help="--images: rewrite the README table from the JSON")
    args = p.parse_args(argv)
    if args.images:
        out = IMAGES_RESULTS if args.out == RESULTS else args.out
        if args.table_only:
            with open(out) as f:
                result = json.load(f)
        else:
            from absl import logging

            logging.set_verbosity(logging.WARNING)
            result = run_images(args.image_models, args.cifar_batch, args.mnist_batch, args.steps)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(result, f, indent=2)
        if args.readme:
            write_readme_section(images_markdown(result), IMAGES_BEGIN, IMAGES_END, args.readme)
        print(f"table from {out}" if args.table_only else f"wrote {out}")
        return
    if args.worker:
        from absl import logging

        logging.set_verbosity(logging.WARNING)
        print(json.dumps(worker(args.models, args.rounds)))
        return
    result = {"machine": machine_info(), "runs": []}
    for devices in args.devices:
        run = run_worker(devices, args.models, args.rounds, args.timeout)
        result["runs"].append(run)
        for name, r in run["models"].items():
            print(f"{run['devices']} device(s) {name}: framework {r['framework_s_per_step'] * 1e3:.2f} ms/step, "
                  f"bare {r['bare_s_per_step'] * 1e3:.2f} ms/step, overhead {r['overhead']:+.1%} (fastest) "
                  f"{r['overhead_of_medians']:+.1%} (medians), noise {r['bare_noise']:.0%}", flush=True)
    result["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    if args.readme:
        write_readme_section(markdown(result), BEGIN, END, args.readme)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
