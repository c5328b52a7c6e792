"""Fixtures shared by test modules: the real MNIST files and a tiny classifier trained on them once per session."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(ROOT, "..", "shared", "data", "mnist")
NEEDS_MNIST = pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason=f"MNIST IDX files not found at {MNIST_DIR} "
                                 "(they ship beside the repository in CI, not in a user's clone)")
TINY_CLASSIFIER = ["--config.noise_conditional=True", "--config.model.ch=4", "--config.train.batch_size=16",
                   "--config.train.steps=4", "--config.train.decay_steps=0", "--config.train.warmup=1",
                   "--config.train.log_every=2", "--config.train.checkpoint_every=2",
                   "--config.eval.batch_size=1000", "--config.eval.fd_sizes=(100, 1000)",
                   "--config.eval.kid_subset_size=100", "--config.eval.kid_subsets=5"]


@pytest.fixture(scope="session")
def mnist_classifier(tmp_path_factory):
    """(workdir, completed process) of ``experiments.mnist_classifier``: a tiny noise-conditional network, 4 steps."""
    if not os.path.isdir(MNIST_DIR):
        pytest.skip(f"MNIST IDX files not found at {MNIST_DIR}")
    workdir = str(tmp_path_factory.mktemp("classifier") / "noisy_classifier")
    cmd = [sys.executable, "-m", "experiments.mnist_classifier", "--workdir", workdir,
           f"--config.data.dir={MNIST_DIR}", *TINY_CLASSIFIER]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc
