"""IDX files (MNIST, Fashion-MNIST) read from a local directory, with checksum verification.

IDX format (LeCun et al.): a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
sizes, then the data, row-major. Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# sha256 of the original .gz files (identical to the TFDS url_checksums entries)
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}
_SPLITS = {"train": "train", "test": "t10k"}


class DataFileError(ValueError):
    """A data file is missing, truncated, corrupt or not what its name says."""


def sha256sum(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path: str, sha256: str | None = None) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or raw). With ``sha256`` the file's bytes are verified first."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file {path} not found.")
    if sha256 is not None and sha256sum(path) != sha256:
        raise DataFileError(f"{path}: sha256 mismatch (expected {sha256[:12]}…); the file is corrupt or a different "
                            "file. Download it again.")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataFileError(f"{path}: cannot decompress ({e}); the file is truncated or not gzip.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataFileError(f"{path}: not an IDX file (bad magic {raw[:4].hex()}).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFileError(f"{path}: header promises shape {shape} ({expected} bytes) but the file holds "
                            f"{len(raw) - header} bytes; it is truncated or corrupt.")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def load_idx_dataset(directory: str, split: str = "train", name: str | None = None,
                     verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28, 1), labels int32 (N,)) of an MNIST-format directory.

    ``name`` ("mnist" | "fashion_mnist") selects the known checksums to verify; without it a directory's own
    ``SHA256SUMS`` file, if present, is used.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'.")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"dataset directory {directory} does not exist; pass the folder holding the "
                                "four *-idx?-ubyte.gz files.")
    sums = _checksums(directory, name) if verify else {}
    prefix = _SPLITS[split]
    files = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    images, labels = (read_idx(os.path.join(directory, f), sums.get(f)) for f in files)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataFileError(f"{directory}: images {images.shape} and labels {labels.shape} do not match.")
    return images[..., None], labels.astype(np.int32)


def _checksums(directory: str, name: str | None) -> dict[str, str]:
    if name is not None:
        if name not in SHA256:
            raise ValueError(f"no known checksums for {name!r}; choose one of {sorted(SHA256)} or name=None.")
        return SHA256[name]
    path = os.path.join(directory, "SHA256SUMS")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {fn.strip(): h for h, fn in (line.split(None, 1) for line in f if line.strip())}
