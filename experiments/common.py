"""What every experiment module shares: the command line, plots and the class-conditional sampler.

    python -m experiments.<name> --workdir DIR [--config.KEY=VALUE ...]
                                 [--coordinator HOST:PORT --num_processes P --process_id I]

Multi-host: start the same command on every host with its own ``--process_id`` (or the environment variables
SDE_JAX_COORDINATOR, SDE_JAX_NUM_PROCESSES, SDE_JAX_PROCESS_ID); ``jax.distributed.initialize`` runs before
anything else touches JAX. Mistakes a user can make by typing (a bad flag or config key, a batch that does not
split over the devices, an unknown data set, a workdir that is not writable or holds another model's
checkpoints) end with one line ``error: ...`` on stderr and exit code 2; a run stopped by NaN/Inf exits with 1.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags
from ml_collections import ConfigDict, config_flags

# Errors a user causes by what they typed: reported in one line, exit code 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, KeyError)
EXIT_USAGE = 2
EXIT_FAILED = 1


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    sys.exit(code)


def _override_keys(argv: Sequence[str]) -> list[tuple[str, str]]:
    """(the argument, its dotted key) for every ``--config.KEY[=VALUE]`` in ``argv``."""
    out = []
    for arg in argv:
        if arg.startswith("--config."):
            out.append((arg, arg[len("--config."):].split("=", 1)[0]))
    return out


def check_config_overrides(config: ConfigDict, argv: Sequence[str]) -> None:
    """ValueError in one line for the first ``--config.KEY`` that names no key of ``config`` (with
    ml_collections' own "did you mean" suggestion)."""
    for arg, dotted in _override_keys(argv):
        node = config
        for depth, key in enumerate(dotted.split(".")):
            if not isinstance(node, ConfigDict):
                raise ValueError(f"unknown config key {dotted!r} in {arg}: "
                                 f"{'.'.join(dotted.split('.')[:depth])!r} is not a group of keys.")
            try:
                node = node[key]
            except KeyError as e:
                hint = " ".join(str(e.args[0] if e.args else "").split("\n")[1:])
                raise ValueError(f"unknown config key {dotted!r} in {arg}. {hint}".strip()) from None


def define_flags(config: ConfigDict) -> None:
    """--workdir, --config (overridable key by key) and the multi-host flags; a mistyped config key ends the
    program with one line."""
    try:
        check_config_overrides(config, sys.argv[1:])
    except ValueError as e:
        fail(str(e))
    flags.DEFINE_string("workdir", None, "directory for metrics, checkpoints and figures (resumes if it has any)")
    flags.DEFINE_string("coordinator", None, "multi-host: address host:port of process 0 "
                        "(default: $SDE_JAX_COORDINATOR)")
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes (default: "
                         "$SDE_JAX_NUM_PROCESSES or 1)")
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index (default: $SDE_JAX_PROCESS_ID or 0)")
    flags.mark_flag_as_required("workdir")
    try:
        config_flags.DEFINE_config_dict("config", config, "experiment config; override with --config.KEY=VALUE")
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections parses overrides here
        fail(f"bad --config override: {e}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a parse error reported as one line (exit 2) instead of absl's FATAL block."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}. Run with --helpshort to list the flags.")


def run(main: Callable[[ConfigDict, str], None]) -> None:
    """absl entry point: initialise multi-host JAX if asked, then ``main(config, workdir)``.

    Expected user errors print one line and exit 2; NaN/Inf during training prints one line and exits 1.
    """

    def _main(argv):
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
        if len(argv) > 1:
            fail(f"unexpected arguments {argv[1:]}; use --config.KEY=VALUE")
        from sde_jax.train import parallel
        from sde_jax.train.checkpoint import CheckpointError
        from sde_jax.train.loop import NonFiniteLossError, WorkdirError

        f = flags.FLAGS
        try:
            parallel.initialize_distributed(f.coordinator, f.num_processes, f.process_id)
            main(f.config, os.path.abspath(f.workdir))
        except (*USER_ERRORS, CheckpointError, WorkdirError) as e:
            fail(str(e) if not isinstance(e, KeyError) else f"missing key {e}")
        except NonFiniteLossError as e:
            fail(str(e), EXIT_FAILED)

    app.run(_main, flags_parser=parse_flags)


def plot_loss(metrics: list[dict], path: str) -> None:
    """Training loss against step (log scale) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    loss = [float(m["loss"]) for m in metrics]  # "nan" (a skipped step) -> nan
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, loss, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def make_sampler(config: ConfigDict, model, sde):
    """``sample(params, key, y, w) -> x`` of shape (len(y), *config.data.shape) on the model scale: classifier-free
    guidance of weight w with labels y (w = 0: the conditional model alone; an unconditional model ignores y and w).
    Parameters, labels and w are leaves of the score pytree, so ``sj.sample`` compiles once per shape and reuses the
    program for new weights. Method and steps: ``config.sample.method``, ``config.sample.steps``."""
    import jax.numpy as jnp

    import sde_jax as sj

    data_shape = tuple(config.data.shape)
    null = config.model.get("num_classes")

    def sample(params, key, y, w: float):
        score = sj.score_fn(model.apply, params, sde, config.loss.parameterization)
        if null is not None:
            cond = score.with_labels(y)
            score = cond if w == 0 else sj.classifier_free_guidance(cond, score.with_labels(jnp.full_like(y, null)), w)
        x, _ = sj.sample(score, sde, key, (y.shape[0], *data_shape), method=config.sample.method,
                         steps=config.sample.steps)
        return x

    return sample
