"""``python -m experiments.mnist_classifier`` end to end on the real MNIST files (tiny noise-conditional network,
a few steps), and sde_jax.eval reading what it trained: load_classifier, embed, predict, feature_distances."""

import json
import os

import numpy as np
import pytest

from tests.conftest import NEEDS_MNIST

pytestmark = NEEDS_MNIST


def test_trains_evaluates_and_loads(mnist_classifier, tmp_path):
    workdir, _ = mnist_classifier
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    with open(os.path.join(workdir, "eval.json")) as f:
        report = json.load(f)
    assert report["noise_conditional"] and report["train_steps"] == 4
    assert set(report["test_accuracy_at_t"]) == {"0", "0.25", "0.5", "0.75", "1"}
    assert all(0.0 <= a <= 1.0 for a in report["test_accuracy_at_t"].values())
    assert report["fd_classifier_real_vs_real"] == report["feature_floors"]["test_halves_1000"]["fd_classifier"]
    assert report["fd_classifier_real_vs_real"] >= 0 and "fd_classifier_train_vs_test" in report
    assert not any("fid" in k.lower() for k in report)  # classifier features: never called FID

    from sde_jax.eval import embed, feature_distances, load_classifier, predict

    apply_fn, params, config = load_classifier(workdir)
    assert config.model.noise_conditional and config.loss.kind == "noisy_classifier"
    x = np.random.default_rng(0).uniform(-1, 1, (7, 28, 28, 1)).astype(np.float32)
    assert apply_fn(params, x, np.full(7, 0.5, np.float32)).shape == (7, 10)
    f = embed(apply_fn, params, x, t=1e-3, batch_size=4)  # 7 images in padded batches of 4
    assert f.shape == (7, 16)
    labels = predict(apply_fn, params, x, t=1e-3, batch_size=4)
    assert labels.shape == (7,) and set(labels.tolist()) <= set(range(10))
    d = feature_distances(f, f + 1.0, kid_subset_size=5, kid_subsets=3)
    assert set(d) >= {"fd_classifier", "kid_classifier", "kid_classifier_std"}
    np.testing.assert_allclose(d["fd_classifier"], 16.0, rtol=1e-6)  # a shift by 1 in each of 16 dimensions
    with pytest.raises(FileNotFoundError):
        load_classifier(str(tmp_path / "nothing"))
