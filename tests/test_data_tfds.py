"""Named data sets through tensorflow-datasets (mocked: no download, no TensorFlow), the error without it, and
``ImageBatches``: deterministic per step, per-host rows equal to rows of the global batch, epochs as permutations."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sde_jax.data.pipeline import TFDS_HINT, ImageBatches, load_images


# ------------------------------------------------------------------------------------ tensorflow-datasets
@pytest.fixture
def mocked_tfds(monkeypatch, tmp_path):
    """tfds with ``mock_data`` (random records from the builder's features, data_source included); any real
    download raises at once instead of retrying for minutes offline."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core.download import download_manager

    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download a data set")

    for name in ("download", "download_and_extract", "download_kaggle_data"):
        monkeypatch.setattr(download_manager.DownloadManager, name, no_download, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))

    def mock(num_examples):
        return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)

    return mock


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_load_images_through_tfds_data_source(mocked_tfds, name, shape):
    with mocked_tfds(num_examples=23):
        images, labels = load_images(name, "train")
        test_images, _ = load_images(name, "test")
    assert images.shape == (23, *shape) and images.dtype == np.uint8
    assert labels.shape == (23,) and labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < 10
    assert test_images.shape == (23, *shape)
    assert images.std() > 0  # records were decoded, not left as the zeros the array started from

    batches = ImageBatches(images, labels, 8, seed=0, scale="minus_one_one", flip=True)
    batch = batches(3)
    assert batch["x"].shape == (8, *shape) and batch["x"].dtype == np.float32 and batch["y"].dtype == np.int32
    assert -1.0 <= batch["x"].min() and batch["x"].max() < 1.0


def test_missing_tensorflow_datasets_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(ImportError, match=r'pip install "sde_jax\[tfds\]"'):
        load_images("cifar10", "train")
    assert 'pip install "sde_jax[tfds]"' in TFDS_HINT


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images("cifar10", "train", str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------ ImageBatches
def _indexed(n: int, shape=(4, 4, 1)):
    """Image i is constant i (so its index can be read back from any pixel); label i too."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, *shape)).copy()
    return images, np.arange(n, dtype=np.int32)


def _index_of(x: np.ndarray) -> np.ndarray:
    """Image index from a batch scaled without dequantisation to [0, 1]: x = (i + 1/2) / 256."""
    return np.rint(x[:, 0, 0, 0] * 256 - 0.5).astype(int)


def test_same_step_same_batch_from_any_instance():
    images, labels = _indexed(37)
    a = ImageBatches(images, labels, 8, seed=3, flip=True)
    b = ImageBatches(images, labels, 8, seed=3, flip=True)
    for step in (5, 0, 9, 5):  # out of order: the epoch permutation cache must not leak between steps
        np.testing.assert_array_equal(a(step)["x"], b(step)["x"])
        np.testing.assert_array_equal(a(step)["y"], b(step)["y"])
    assert not np.array_equal(a(1)["y"], ImageBatches(images, labels, 8, seed=4)(1)["y"])


@pytest.mark.parametrize("processes", [2, 4])
def test_rows_of_a_process_equal_rows_of_the_global_batch(processes):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 30).astype(np.int32)
    batches = ImageBatches(images, labels, 8, seed=1, dequantize=True, flip=True, pad_to_size=8)
    per = 8 // processes
    for step in (0, 3, 4):  # step 3 crosses the epoch boundary (30 = 3 * 8 + 6)
        full = batches(step)
        assert full["x"].shape == (8, 8, 8, 3)
        parts = [batches(step, slice(p * per, (p + 1) * per)) for p in range(processes)]
        np.testing.assert_array_equal(np.concatenate([q["x"] for q in parts]), full["x"])
        np.testing.assert_array_equal(np.concatenate([q["y"] for q in parts]), full["y"])


def test_epochs_are_permutations_and_labels_follow_images():
    n, b = 10, 4
    images, labels = _indexed(n)
    batches = ImageBatches(images, labels, b, seed=0, scale="zero_one", dequantize=False)
    seen = np.concatenate([_index_of(batches(s)["x"]) for s in range(3 * n // 2)])  # 60 = 6 epochs, 15 steps
    ys = np.concatenate([batches(s)["y"] for s in range(3 * n // 2)])
    np.testing.assert_array_equal(ys, seen)
    epochs = seen.reshape(-1, n)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(n))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled each epoch


def test_unlabelled_dequantised_and_flipped():
    images = np.zeros((16, 4, 4, 1), np.uint8)
    images[:, :, 0] = 255  # left column white: a flip moves it to the right
    batches = ImageBatches(images, None, 16, seed=0, scale="minus_one_one", dequantize=True, flip=True)
    x = batches(0)
    assert isinstance(x, np.ndarray) and x.shape == (16, 4, 4, 1)
    flipped = x[:, 0, -1, 0] > 0
    assert 0 < flipped.sum() < 16  # each image flipped with probability 1/2
    np.testing.assert_array_equal(x[:, 0, 0, 0] > 0, ~flipped)
    dark = np.where(flipped[:, None, None], x[:, :, 0], x[:, :, -1])
    assert -1.0 <= dark.min() and dark.max() < -1.0 + 2.0 / 256 and dark.std() > 0  # u ~ U[0, 1) within one bin


def test_bad_inputs_raise():
    images, labels = _indexed(8)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        ImageBatches(images.astype(np.float32), labels, 4)
    with pytest.raises(ValueError, match="uint8 NHWC"):
        ImageBatches(images[..., 0], labels, 4)
    with pytest.raises(ValueError, match="do not match"):
        ImageBatches(images, labels[:5], 4)
    with pytest.raises(ValueError, match="unknown scale"):
        ImageBatches(images, labels, 4, scale="minus_half_half")
    with pytest.raises(ValueError, match="batch_size"):
        ImageBatches(images, labels, 0)
