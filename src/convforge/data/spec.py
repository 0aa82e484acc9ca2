"""`load_dataset(spec)`: turn a dataset spec string into decoded, cached splits.

Specs (DESIGN.md, Datasets): a folder (ImageFolder, optional train/ val/ test/ splits) or a
.tar/.tar.gz of one, `mnist:PATH`, `fashion-mnist:PATH`, `cifar10:PATH` (python batches, an
ImageFolder, or the .tar.gz of one), `csv:FILE` (path,label[,split] rows), `wds:FOLDER` or
`wds:PATTERN` (WebDataset shards, data/shards.py: streamed from the tars, never cached) and the built-in `shapes`
(options as `shapes:size=32,train=2000,seed=1`). Nothing is ever downloaded. Any spec takes a last
option `,limit=N`: at most N images per split, drawn stratified by class with a fixed seed (the same
subset every time, whatever the run's seed), for a small first run on a large dataset.

Files are decoded once into the memory-mapped cache (data/cache.py). A dataset whose decoded size
exceeds the memory budget (half the available memory unless told otherwise) is not cached but
streamed: its files are decoded on demand by DataLoader workers. The caller never chooses.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convforge.data import arrays, shapes
from convforge.data.cache import build_or_open, cache_key, open_entry
from convforge.data.decode import DEFAULT_MAX_PIXELS
from convforge.data.folder import (
    FileListing,
    choose_storage_shape,
    decode_files,
    is_archive,
    list_csv,
    list_image_folder,
    sha256_file,
)
from convforge.data.imageset import Dataset, FileImages, ImageSet, SkippedFile
from convforge.data.shard_manifest import shard_source
from convforge.data.shards import load_shards
from convforge.data.subsets import keep_splits, limit_listing, limit_splits, split_limit
from convforge.errors import DatasetError, did_you_mean
from convforge.files import cache_root

log = logging.getLogger(__name__)
SCHEMES = ("shapes", "mnist", "fashion-mnist", "cifar10", "csv", "wds")
_SPLIT_ORDER = ["train", "val", "test"]
_SCHEME_PATTERN = re.compile(r"^([a-z][a-z0-9-]+):(.*)$", re.IGNORECASE)


def load_dataset(
    spec: str,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    strict: bool = False,
    channels: int | None = None,
    storage_size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    memory_budget: int | None = None,
    workers: int | None = None,
    splits: Sequence[str] | None = None,
) -> Dataset:
    """Load a dataset spec into splits of uint8 NHWC images.

    `val_fraction` carves a stratified, seeded validation split out of train when the data has no
    val split of its own. Unreadable images are skipped and counted (`Dataset.skipped`), or with
    `strict=True` raise a `DatasetError` naming them. `channels` forces 1 (grayscale) or 3 (RGB).
    `splits` names the splits a caller will use, in order of preference: a folder, archive or CSV not
    yet cached decodes only the first of them it has (and train, when that is "val" carved from train).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError("empty dataset spec; give a folder, mnist:PATH, cifar10:PATH, csv:FILE or shapes")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels}")
    body, limit = split_limit(spec)
    scheme, target = parse_scheme(body)
    budget = memory_budget if memory_budget is not None else default_memory_budget()
    if scheme == "shapes":
        dataset = _load_shapes(body, target)
    elif scheme in ("mnist", "fashion-mnist"):
        dataset = _load_idx(body, Path(target).expanduser(), scheme)
    elif scheme == "cifar10" and (batches := arrays.is_cifar_batches(Path(target).expanduser())):
        dataset = _load_cifar_batches(body, batches)
    elif scheme == "wds":
        dataset = load_shards(body, target, channels=channels, storage_size=storage_size, max_pixels=max_pixels,
                              strict=strict)  # fmt: skip
    elif scheme == "csv":
        listing = keep_splits(limit_listing(list_csv(Path(target).expanduser()), limit), splits, val_fraction > 0)
        dataset = _load_files(body, listing, channels or 3, storage_size, max_pixels, budget, workers, strict)
    else:  # a folder, an archive, or cifar10: pointing at either
        path = Path(target).expanduser()
        dataset = _load_archive_from_cache(body, path, channels or 3, storage_size, max_pixels)
        if dataset is None:
            listing = keep_splits(limit_listing(list_image_folder(path), limit), splits, val_fraction > 0)
            dataset = _load_files(
                body, listing, channels or 3, storage_size, max_pixels, budget, workers, strict
            )
    if limit is not None:
        dataset = limit_splits(dataset, limit)
        dataset.spec = spec
    dataset.splits = {name: dataset.splits[name] for name in sorted(dataset.splits, key=_SPLIT_ORDER.index)}
    if channels is not None and dataset.channels != channels:
        raise DatasetError(f"{spec} has {dataset.channels}-channel images; it cannot be read with {channels}")
    if strict and dataset.skipped:
        listed = "\n".join(f"  {s.path}: {s.reason}" for s in dataset.skipped[:10])
        more = f"\n  ... and {len(dataset.skipped) - 10} more" if len(dataset.skipped) > 10 else ""
        raise DatasetError(
            f"{len(dataset.skipped)} image(s) in {spec} cannot be read (strict mode):\n{listed}{more}\n"
            "Remove or repair them, or drop --strict to skip them."
        )
    if val_fraction > 0 and "val" not in dataset.splits and "train" in dataset.splits:
        train, val = split_off_validation(dataset.splits["train"], val_fraction, seed)
        dataset.splits = {
            "train": train,
            "val": val,
            **{k: v for k, v in dataset.splits.items() if k != "train"},
        }
        dataset.val_from_train = {"fraction": val_fraction, "seed": seed}
    return dataset


def parse_scheme(spec: str) -> tuple[str, str]:
    if spec == "shapes":
        return "shapes", ""
    match = _SCHEME_PATTERN.match(spec)
    if match and len(match.group(1)) > 1:  # a single letter is a Windows drive, not a scheme
        scheme = match.group(1).lower()
        if scheme in SCHEMES:
            return scheme, match.group(2)
        if not Path(spec).exists():
            raise DatasetError(
                f"unknown dataset scheme {scheme!r} in {spec!r}; known: {', '.join(SCHEMES)} "
                f"or a folder path.{did_you_mean(scheme, SCHEMES)}"
            )
    return "folder", spec


def is_dataset_spec(items: list[str]) -> bool:
    """One argument that names a dataset: a scheme (shapes, mnist:...), an archive, or a folder of class
    folders. Anything else (image files, folders of images) is not."""
    if len(items) != 1:
        return False
    try:
        body, _ = split_limit(items[0])
        scheme, target = parse_scheme(body)
    except DatasetError:  # an unknown scheme or a bad limit: not a dataset, so taken for file names
        return False
    if scheme != "folder":
        return True
    path = Path(target).expanduser()
    return (path.is_file() and is_archive(path)) or (path.is_dir() and any(p.is_dir() for p in path.iterdir()))


def absolute_spec(spec: str) -> str:
    """The same spec with its path made absolute, so a run folder can be resumed from anywhere."""
    body, limit = split_limit(spec)
    scheme, target = parse_scheme(body)
    if scheme == "shapes":
        return spec
    path = str(Path(target).expanduser().resolve())
    absolute = path if scheme == "folder" else f"{scheme}:{path}"
    return absolute if limit is None else f"{absolute},limit={limit}"


def mirror_invariant(spec: str) -> bool:
    """Whether a mirrored image keeps its class: not for digits (a mirrored 2, 3, 7 is no digit),
    so horizontal flips are off by default for `mnist:` data (and for shards written from it)."""
    scheme, target = parse_scheme(split_limit(spec)[0])
    if scheme == "wds":
        source = shard_source(target)
        return mirror_invariant(source) if source else True
    return scheme != "mnist"


def default_memory_budget() -> int:
    """Half of the memory available now: decoded datasets below it are cached, larger ones streamed."""
    if os.environ.get("CONVFORGE_MEMORY_BUDGET"):
        return int(float(os.environ["CONVFORGE_MEMORY_BUDGET"]))
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def split_off_validation(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Stratified, seeded split: `fraction` of each class (at least one image) moves to val."""
    rng = np.random.default_rng(seed)
    val_positions = []
    for label in range(train.num_classes):
        positions = np.flatnonzero(train.labels == label)
        if len(positions) < 2:
            continue
        take = min(len(positions) - 1, max(1, round(fraction * len(positions))))
        val_positions.append(rng.permutation(positions)[:take])
    val_positions = np.sort(np.concatenate(val_positions)) if val_positions else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(train)), val_positions)
    return train.subset(keep, "train"), train.subset(val_positions, "val")


# ------------------------------------------------------------------------------------ sources


def _load_shapes(spec: str, options: str) -> Dataset:
    config = _shapes_config(options)
    key = cache_key(source="shapes", config=dataclasses.asdict(config), version=shapes.GENERATOR_VERSION)

    def build(writer):
        log.info("drawing %s shapes images into the cache (once)", f"{sum(config.split_sizes().values()):,}")
        for split, count in config.split_sizes().items():
            images = writer.new_array(f"{split}.images", (count, config.size, config.size, 3))
            masks = writer.new_array(f"{split}.masks", (count, config.size, config.size))
            labels = writer.new_array(f"{split}.labels", (count,), np.int64)
            for start, (chunk_images, chunk_labels, chunk_masks) in _render_chunks(config, split):
                stop = start + len(chunk_labels)
                images[start:stop], labels[start:stop], masks[start:stop] = (
                    chunk_images,
                    chunk_labels,
                    chunk_masks,
                )
            images.flush(), masks.flush(), labels.flush()
        return {"splits": list(config.split_sizes())}

    meta, read, entry = build_or_open(key, build)
    classes = config.class_names
    splits = {
        split: ImageSet(
            read(f"{split}.images"),
            np.array(read(f"{split}.labels")),
            classes,
            masks=read(f"{split}.masks"),
            name=split,
        )
        for split in meta["splits"]
    }
    return Dataset(spec, classes, splits, fingerprint=key, cache_path=str(entry))


def _shapes_config(options: str) -> shapes.ShapesConfig:
    fields = {f.name: f.type for f in dataclasses.fields(shapes.ShapesConfig)}
    values = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        name, _, value = item.partition("=")
        if name not in fields or not value:
            raise DatasetError(
                f"bad shapes option {item!r}; use name=value with names {', '.join(fields)}"
                f".{did_you_mean(name, fields)}"
            )
        try:
            values[name] = float(value) if fields[name] in ("float", float) else int(value)
        except ValueError:
            raise DatasetError(f"shapes option {name} needs a number, got {value!r}") from None
    config = shapes.ShapesConfig(**values)
    if config.size < 16 or config.train < 0 or config.val < 0 or config.test < 0:
        raise DatasetError("shapes needs size >= 16 and non-negative split sizes")
    if not 2 <= config.classes <= len(shapes.SHAPE_CLASSES):
        raise DatasetError(f"shapes has 2 to {len(shapes.SHAPE_CLASSES)} classes, not {config.classes}")
    return config


def _render_chunks(config: shapes.ShapesConfig, split: str, chunk: int = 500):
    count = config.split_sizes()[split]
    jobs = [(config, split, start, min(start + chunk, count)) for start in range(0, count, chunk)]
    workers = min(os.cpu_count() or 1, 8, len(jobs))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from zip((job[2] for job in jobs), pool.imap(_render_job, jobs), strict=True)
    else:
        yield from zip((job[2] for job in jobs), map(_render_job, jobs), strict=True)


def _render_job(job):
    config, split, start, stop = job
    return shapes.render_split(config, split, start, stop)


def _load_idx(spec: str, folder: Path, scheme: str) -> Dataset:
    data, fingerprint = arrays.load_idx_dataset(folder)
    classes = arrays.MNIST_CLASSES if scheme == "mnist" else arrays.FASHION_MNIST_CLASSES
    splits = {name: ImageSet(images, labels, classes, name=name) for name, (images, labels) in data.items()}
    return Dataset(spec, classes, splits, fingerprint)


def _load_cifar_batches(spec: str, folder: Path) -> Dataset:
    data, classes, fingerprint = arrays.load_cifar_batches(folder)
    splits = {name: ImageSet(images, labels, classes, name=name) for name, (images, labels) in data.items()}
    return Dataset(spec, classes, splits, fingerprint)


def _load_files(
    spec: str,
    listing: FileListing,
    channels: int,
    storage_size: int,
    max_pixels: int,
    memory_budget: int,
    workers: int | None,
    strict: bool,
) -> Dataset:
    mode = "RGB" if channels == 3 else "L"
    key = _files_key(listing.cache_identity, mode, storage_size, max_pixels)
    total = sum(len(items) for items in listing.splits.values())
    shape = None

    def build(writer):
        nonlocal shape
        shape = shape or choose_storage_shape(listing, mode, storage_size, max_pixels)
        log.info("decoding %s images of %s into the cache at %s (once; later runs reuse it)",
                 f"{total:,}", spec, "x".join(map(str, shape)))  # fmt: skip
        skipped = []
        for split, items in listing.splits.items():
            images = writer.new_array(f"{split}.images", (len(items), *shape))
            decoded, split_skipped = decode_files(listing, items, images, max_pixels, workers)
            images.flush()
            writer.save_array(f"{split}.labels", np.array([label for _, label in items], dtype=np.int64))
            writer.save_array(f"{split}.decoded", np.flatnonzero(decoded))
            # Relative to the root: an archive's entry is shared by every copy of the same bytes.
            skipped.extend(
                {"path": os.path.relpath(s.path, listing.root), "reason": s.reason} for s in split_skipped
            )
        return {
            "splits": list(listing.splits),
            "shape": list(shape),
            "skipped": skipped,
            "classes": listing.classes,
            "ignored_files": listing.ignored_files,
            "empty_classes": listing.empty_classes,
            "refused": [s.to_dict() for s in listing.refused],
        }

    cached = open_entry(cache_root() / "datasets" / key)
    if cached is None:
        shape = choose_storage_shape(listing, mode, storage_size, max_pixels)
        if total * int(np.prod(shape)) > memory_budget and not listing.archive:
            log.info("%s decodes to more than the memory budget (%s bytes): streaming it instead of caching",
                     spec, f"{memory_budget:,}")  # fmt: skip
            return _streaming_dataset(spec, listing, shape, max_pixels, strict)
    meta, read, entry = build_or_open(key, build)
    return _dataset_from_entry(spec, listing.fingerprint, meta, read, entry, listing.root)


def _files_key(identity: str, mode: str, storage_size: int, max_pixels: int) -> str:
    return cache_key(
        source="files", identity=identity, mode=mode, storage_size=storage_size, max_pixels=max_pixels
    )


def _load_archive_from_cache(
    spec: str, path: Path, channels: int, storage_size: int, max_pixels: int
) -> Dataset | None:
    """An archive already decoded: found by the archive's hash alone, without listing its members."""
    if not (path.is_file() and is_archive(path)):
        return None
    fingerprint = sha256_file(path)
    key = _files_key(fingerprint, "RGB" if channels == 3 else "L", storage_size, max_pixels)
    entry = cache_root() / "datasets" / key
    opened = open_entry(entry)
    if opened is None:
        return None
    meta, read = opened
    return _dataset_from_entry(spec, fingerprint, meta, read, entry, str(path))


def _dataset_from_entry(spec: str, fingerprint: str, meta: dict, read, entry: Path, root: str) -> Dataset:
    classes = meta["classes"]
    splits = {}
    for split in meta["splits"]:
        decoded = np.asarray(read(f"{split}.decoded"))
        labels = np.asarray(read(f"{split}.labels"))[decoded]
        splits[split] = ImageSet(read(f"{split}.images"), labels, classes, indices=decoded, name=split)
    return Dataset(
        spec,
        classes,
        splits,
        fingerprint,
        skipped=[
            SkippedFile(os.path.normpath(os.path.join(root, s["path"])), s["reason"]) for s in meta["skipped"]
        ] + [SkippedFile(s["path"], s["reason"]) for s in meta.get("refused", [])],
        ignored_files=meta["ignored_files"],
        empty_classes=meta["empty_classes"],
        cache_path=str(entry),
    )


def _streaming_dataset(
    spec: str, listing: FileListing, shape: tuple, max_pixels: int, strict: bool
) -> Dataset:
    """Too large to cache: decoded on demand (bad files are counted as they are met, or with
    `strict` stop the run when met, since they cannot be known in advance without decoding all)."""
    splits = {}
    for split, items in listing.splits.items():
        reader = FileImages([listing.path(name) for name, _ in items], shape, max_pixels, strict)
        labels = np.array([label for _, label in items], dtype=np.int64)
        splits[split] = ImageSet(reader, labels, listing.classes, name=split)
    return Dataset(
        spec,
        listing.classes,
        splits,
        listing.fingerprint,
        skipped=list(listing.refused),
        ignored_files=listing.ignored_files,
        empty_classes=listing.empty_classes,
    )
