"""Images spread evenly over a split, relabelled to a model's classes: what explain, robust and the
adversarial validation look at, and what evaluation aligns to."""

from dataclasses import dataclass

import numpy as np

from convforge.data.imageset import ImageSet
from convforge.data.spec import load_dataset
from convforge.errors import DatasetError


def spread_positions(length: int, count: int) -> np.ndarray:
    """Up to `count` positions spread evenly over `range(length)`, first and last included, so that a
    split sorted by class shows every class."""
    if length < 1 or count < 1:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, length - 1, min(count, length)).round().astype(np.int64))


def stratified_positions(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` positions drawn without replacement, as evenly over the classes as their sizes allow
    (a class with too few images gives all it has; the others make up the rest), in a seeded order."""
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    # round-robin: every class's first image, then every class's second, ...
    positions = np.concatenate(pools)
    rank = np.concatenate([np.arange(len(pool)) for pool in pools])
    klass = np.concatenate([np.full(len(pool), i) for i, pool in enumerate(pools)])
    return np.sort(positions[np.lexsort((klass, rank))[:count]])


def align_classes(imageset: ImageSet, model_classes: list[str], where: str) -> ImageSet:
    """Relabel `imageset` to the model's class order, matching classes by name.

    Data with only some of the model's classes is evaluated on those (the others get no per-class
    accuracy; `missing_classes` names them); a class the model does not know is a user error."""
    if list(imageset.classes) == list(model_classes):
        return imageset
    extra = sorted(set(imageset.classes) - set(model_classes))
    if extra:
        missing = sorted(set(model_classes) - set(imageset.classes))
        raise DatasetError(
            f"{where} has {len(imageset.classes)} classes but the model was trained on {len(model_classes)}: "
            f"not in the data {missing[:10]}, not known to the model {extra[:10]}. Evaluate on data whose "
            "classes are among the model's (the class folder names must match)"
        )
    to_model = np.array([model_classes.index(name) for name in imageset.classes], dtype=np.int64)
    relabeled = imageset.subset(np.arange(len(imageset)))
    relabeled.labels = to_model[imageset.labels]
    relabeled.classes = list(model_classes)
    return relabeled


def missing_classes(data_classes: list[str], model_classes: list[str]) -> list[str]:
    """The model's classes that the data has no folder (or label) for, in the model's order."""
    present = set(data_classes)
    return [name for name in model_classes if name not in present]


@dataclass
class DatasetSample:
    """`count` images spread evenly over one split (so that every class shows up), as uint8 NHWC."""

    imageset: ImageSet
    positions: np.ndarray
    pixels: np.ndarray
    skipped: int

    @property
    def labels(self) -> np.ndarray:
        return self.imageset.labels[self.positions]


def sample_split(
    spec_text: str, classes: list[str], channels: int, split: str | None, count: int, strict: bool
) -> DatasetSample:
    """`count` images of `split` (default: test, else val, else all) of a dataset spec, labelled in the
    order of `classes`; unreadable images are skipped and counted (or refused with `strict`)."""
    dataset = load_dataset(spec_text, strict=strict, channels=channels)
    if split is not None and split not in dataset.splits:
        raise DatasetError(f"{spec_text} has no {split!r} split; it has {sorted(dataset.splits)}")
    chosen = dataset.splits[split] if split else dataset.eval_split()
    imageset = align_classes(chosen, classes, spec_text)
    raw, positions, unreadable = read_pixels(imageset, spread_positions(len(imageset), count))
    return DatasetSample(imageset, positions, raw, len(dataset.skipped) + unreadable)


def read_pixels(imageset: ImageSet, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """uint8 NHWC images at `positions` of any split (a streaming one is decoded file by file, its
    unreadable images left out): (pixels, the positions read, how many were unreadable)."""
    if not imageset.streaming:
        return imageset.gather(positions), positions, 0
    pixels = [imageset.storage.read(int(imageset.indices[p])) for p in positions]
    kept = [i for i, image in enumerate(pixels) if isinstance(image, np.ndarray)]
    return np.stack([pixels[i] for i in kept]), positions[kept], len(pixels) - len(kept)
