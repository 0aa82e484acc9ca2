"""Datasets shipped as arrays: MNIST-style idx files and the CIFAR-10 python batches.

The CIFAR-10 "python version" is a set of pickles. They are read with an unpickler that only
accepts the handful of NumPy constructors those files use, so a tampered or foreign file cannot run
code; anything else in it is refused with a clear error.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from pathlib import Path

import numpy as np

from convforge.errors import DatasetError

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (gzip-compressed or not) into an array of its declared shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DatasetError(f"{path} is a damaged gzip file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an idx file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path} is truncated: {len(raw) - header} data bytes, shape {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, prefix: str, kind: str) -> Path:
    """`train-images-idx3-ubyte(.gz)` and its usual renamings (`train-images.idx3-ubyte`, ...)."""
    candidates = sorted(folder.glob(f"{prefix}*{kind}*"))
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise DatasetError(
            f"no {prefix} {kind} idx file in {folder}: expected {prefix}-{kind}-idx?-ubyte or the same with .gz"
        )
    return candidates[0]


def load_idx_dataset(folder: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """{'train': (images NHWC, labels), 'test': ...} from an MNIST-layout folder, and its fingerprint."""
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder with MNIST-style idx files")
    splits = {}
    digest = hashlib.sha256()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path = _find_idx(folder, prefix, "images")
        label_path = _find_idx(folder, prefix, "labels")
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(
                f"{image_path} and {label_path} do not match: images {images.shape}, labels {labels.shape}"
            )
        splits[split] = (np.ascontiguousarray(images[..., None], dtype=np.uint8), labels.astype(np.int64))
        digest.update(images.tobytes())
        digest.update(labels.tobytes())
    return splits, digest.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other global is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 wrap raw bytes with it
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> dict:
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-10 python batch ({exc})") from None


def is_cifar_batches(folder: Path) -> Path | None:
    """The folder holding data_batch_1..5 and test_batch (it may be a cifar-10-batches-py child), or None."""
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def load_cifar_batches(folder: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], str]:
    """CIFAR-10 python batches: {'train': (N,32,32,3) uint8 + labels, 'test': ...}, classes, fingerprint."""
    digest = hashlib.sha256()
    splits = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"CIFAR-10 batch {path} is missing")
            batch = _read_cifar_batch(path)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                batch_labels = np.asarray(batch[b"labels"], dtype=np.int64)
            except (KeyError, ValueError) as exc:
                raise DatasetError(f"{path} does not have CIFAR-10's data/labels layout ({exc})") from None
            images.append(data.transpose(0, 2, 3, 1))
            labels.append(batch_labels)
            digest.update(data.tobytes())
        splits[split] = (np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))
    classes = CIFAR10_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        names = _read_cifar_batch(meta_path).get(b"label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return splits, classes, digest.hexdigest()
