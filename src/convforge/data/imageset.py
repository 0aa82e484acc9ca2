"""The in-memory shape of a dataset: splits of uint8 NHWC images with integer labels.

An `ImageSet` is one split. Its images are either materialized (a NumPy array, usually memory-mapped
from the decode cache, so a second epoch or a second run never decodes again) or, for datasets
larger than memory, a `FileImages` reader that decodes on demand inside DataLoader workers. Both
kinds look the same to the loader: `len`, `labels`, `subset`, and uint8 batches of one shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convforge.data.decode import decode_image
from convforge.errors import ImageDecodeError

EVAL_SPLIT_ORDER = ("test", "val", "train")  # the split a final evaluation uses: the first there is


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class FileImages:
    """Decodes images on demand, resized to one storage shape, for datasets that do not fit in memory."""

    def __init__(
        self, paths: Sequence[str], image_shape: tuple[int, int, int], max_pixels: int, strict: bool = False
    ):
        self.paths = list(paths)
        self.image_shape = image_shape
        self.max_pixels = max_pixels
        self.strict = strict

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> np.ndarray | SkippedFile:
        """The image at `index`, or a SkippedFile saying why it cannot be decoded. The loader counts
        those, or in strict mode stops with them: raising here, inside a DataLoader worker, would
        reach the user as a worker traceback instead of a message."""
        height, width, channels = self.image_shape
        try:
            return decode_image(
                self.paths[index],
                mode="RGB" if channels == 3 else "L",
                size=(height, width),
                max_pixels=self.max_pixels,
            )
        except ImageDecodeError as exc:
            return SkippedFile(exc.path, exc.reason)


class AlignedImages:
    """A split's images in the order of its labels: `split.images[i]` is the image of `split.labels[i]`,
    whatever rows of the storage the split keeps (a limited or carved-out split shares its storage)."""

    def __init__(self, imageset: ImageSet):
        self._set = imageset

    def __len__(self) -> int:
        return len(self._set)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._set), *self._set.image_shape)

    def __getitem__(self, key) -> np.ndarray:
        positions = np.arange(len(self._set))[key]
        if np.ndim(positions) == 0:
            return self[[int(positions)]][0]
        if not self._set.streaming:
            return self._set.gather(positions)
        rows = [self._set.storage.read(int(self._set.indices[p])) for p in positions]
        bad = next((r for r in rows if isinstance(r, SkippedFile)), None)
        if bad is not None:
            raise ImageDecodeError(bad.path, bad.reason)
        return np.stack(rows) if rows else np.empty((0, *self._set.image_shape), dtype=np.uint8)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class ImageSet:
    """One split: `images[i]` is image i and `labels[i]` its class index into `classes`. The images are
    kept in `storage` (often shared with other splits of the same data), image i at `storage[indices[i]]`."""

    storage: Any  # np.ndarray (often memory-mapped), FileImages or data.shards.ShardImages
    labels: np.ndarray
    classes: list[str]
    indices: np.ndarray | None = None
    masks: np.ndarray | None = None  # (N, H, W) uint8 ground-truth object masks, when the source has them
    name: str = "train"

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = np.arange(len(self.storage), dtype=np.int64)
        if len(self.labels) != len(self.indices):
            raise ValueError(f"{len(self.labels)} labels for {len(self.indices)} images")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def streaming(self) -> bool:
        """Read on demand (`FileImages`, `data.shards.ShardImages`: `read(row)`, `image_shape`, `strict`)
        rather than held as an array."""
        return not isinstance(self.storage, np.ndarray)

    @property
    def images(self) -> AlignedImages:
        """The images in the order of `labels` (`images[:8]` goes with `labels[:8]`)."""
        return AlignedImages(self)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.streaming:
            return self.storage.image_shape
        return tuple(self.storage.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, positions: np.ndarray, name: str | None = None) -> ImageSet:
        """The images at `positions` (indices into this split), sharing the underlying storage."""
        positions = np.asarray(positions, dtype=np.int64)
        return ImageSet(
            storage=self.storage,
            labels=self.labels[positions],
            classes=self.classes,
            indices=self.indices[positions],
            masks=self.masks,
            name=name or self.name,
        )

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) images at `positions`; only for materialized splits."""
        if self.streaming:
            raise TypeError("a streaming split is read through a DataLoader, not gathered")
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        if isinstance(self.storage, np.memmap):
            # Reading a memory map in ascending order touches each page once.
            order = np.argsort(rows, kind="stable")
            out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
            out[order] = self.storage[rows[order]]
            return out
        return self.storage[rows]

    def gather_masks(self, positions: np.ndarray) -> np.ndarray | None:
        if self.masks is None:
            return None
        return self.masks[self.indices[np.asarray(positions, dtype=np.int64)]]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


@dataclass
class Dataset:
    """A parsed dataset spec: its splits, classes and what happened while reading it."""

    spec: str
    classes: list[str]
    splits: dict[str, ImageSet]
    fingerprint: str
    skipped: list[SkippedFile] = field(default_factory=list)
    ignored_files: int = 0
    empty_classes: list[str] = field(default_factory=list)
    cache_path: str | None = None
    val_from_train: dict | None = None  # {"fraction", "seed"} when val was carved out of train

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return next(iter(self.splits.values())).image_shape[2]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return next(iter(self.splits.values())).image_shape

    @property
    def train(self) -> ImageSet | None:
        return self.splits.get("train")

    @property
    def val(self) -> ImageSet | None:
        return self.splits.get("val")

    @property
    def test(self) -> ImageSet | None:
        return self.splits.get("test")

    def eval_split(self) -> ImageSet:
        """The split a final evaluation uses: test, else val, else everything there is."""
        for name in EVAL_SPLIT_ORDER:
            if name in self.splits:
                return self.splits[name]
        raise ValueError("dataset has no splits")

    def summary(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "classes": self.classes,
            "image_shape": list(self.image_shape),
            "splits": {name: len(split) for name, split in self.splits.items()},
            "class_counts": {name: split.class_counts().tolist() for name, split in self.splits.items()},
            "val_from_train": self.val_from_train,
            "streaming": any(split.streaming for split in self.splits.values()),
            "fingerprint": self.fingerprint,
            "skipped_files": len(self.skipped),
            "skipped": [s.to_dict() for s in self.skipped[:100]],
            "ignored_non_image_files": self.ignored_files,
            "empty_classes": self.empty_classes,
        }
