"""IDX reader and image scaling. Real files come from ../shared/data (skipped where absent)."""

import gzip
import os
import shutil

import jax
import numpy as np
import pytest

from sde_jax.data.idx import DataFileError, load_idx_dataset, read_idx
from sde_jax.data.images import from_model_scale, pad_to, random_flip, to_model_scale

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "mnist")),
                                reason="../shared/data/mnist is absent (only the project's CI and dev machines have it)")


@needs_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_test_split_with_checksums(name):
    images, labels = load_idx_dataset(os.path.join(SHARED, name), "test", name=name)
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0


@needs_data
def test_wrong_checksum_and_truncation(tmp_path):
    src = os.path.join(SHARED, "mnist", "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataFileError, match="sha256 mismatch"):
        read_idx(src, sha256="0" * 64)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(open(src, "rb").read()[:2000])
    with pytest.raises(DataFileError, match="truncated"):
        read_idx(str(cut))
    # the fashion files in the mnist folder: right format, wrong checksum
    d = tmp_path / "mixed"
    d.mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(SHARED, "fashion_mnist", f), d / f)
    with pytest.raises(DataFileError, match="sha256 mismatch"):
        load_idx_dataset(str(d), "test", name="mnist")


def test_synthetic_idx_roundtrip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()
    p = tmp_path / "a-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(raw)
    np.testing.assert_array_equal(read_idx(str(p)), arr)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(raw[:-5])
    with pytest.raises(DataFileError, match="header promises shape"):
        read_idx(str(short))
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x89PNG....")
    with pytest.raises(DataFileError, match="not an IDX file"):
        read_idx(str(junk))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_idx(str(tmp_path / "missing.gz"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_idx_dataset(str(tmp_path / "nodir"))


@pytest.mark.parametrize("scale", ["zero_one", "minus_one_one"])
def test_scaling_roundtrip(scale):
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    y = np.asarray(to_model_scale(x, scale))
    lo, hi = (0.0, 1.0) if scale == "zero_one" else (-1.0, 1.0)
    assert lo < y.min() and y.max() < hi
    np.testing.assert_array_equal(from_model_scale(y, scale), x)
    u = jax.random.uniform(jax.random.key(0), x.shape)
    np.testing.assert_array_equal(from_model_scale(to_model_scale(x, scale, noise=u), scale), x)


def test_pad_and_flip():
    x = np.ones((2, 28, 28, 1), np.uint8)
    p = pad_to(x, 32)
    assert p.shape == (2, 32, 32, 1) and p.sum() == x.sum() and p[0, 0, 0, 0] == 0
    img = np.arange(4.0).reshape(1, 1, 4, 1).repeat(64, 0)
    f = np.asarray(random_flip(jax.random.key(0), img))
    flipped = np.all(f == img[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(flipped | np.all(f == img, axis=(1, 2, 3))) and 10 < flipped.sum() < 54
