"""`convforge shard DATA OUT`: any dataset spec written as WebDataset tar shards, with a manifest.

OUT/train/shard-000000.tar, OUT/test/shard-000000.tar, ... (webdataset's TarWriter; a new shard starts
once one reaches `shard_size` bytes) and OUT/manifest.json: the classes, the storage shape, each
shard's sample count, size and SHA-256, a fingerprint over them, and the source spec. A sample is
`KEY.EXT` (the image's bytes as they were: a JPEG stays the same JPEG; images that only exist as
arrays - MNIST, CIFAR's python batches, shapes - become lossless PNGs) and `KEY.cls` (its class index).

Samples are written in a seeded random order: a stream read front to back through a shuffle buffer
mixes only as well as its shards are mixed, and folders list their images class by class.
The whole folder appears at once (files.atomic_folder): a killed run leaves no OUT, only a hidden
`.OUT.*.partial` beside it, which is removed when the writer stops with an error.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convforge.data.folder import (
    FileListing,
    choose_storage_shape,
    iter_archive,
    list_csv,
    list_image_folder,
    sha256_file,
)
from convforge.data.imageset import SkippedFile
from convforge.data.limits import DEFAULT_MAX_PIXELS
from convforge.data.shard_manifest import FORMAT, MANIFEST
from convforge.data.spec import absolute_spec, default_memory_budget, load_dataset, parse_scheme
from convforge.data.subsets import limit_listing, split_limit
from convforge.errors import DatasetError
from convforge.files import atomic_folder, atomic_write_json

log = logging.getLogger(__name__)
_ARRAY_SCHEMES = ("shapes", "mnist", "fashion-mnist")


@dataclass
class ShardSummary:
    out: str
    splits: dict[str, dict]  # split -> samples, shards, bytes
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"out": self.out, "splits": self.splits, "skipped": len(self.skipped),
                "skipped_files": [s.to_dict() for s in self.skipped[:100]],
                "seconds": round(self.seconds, 1)}  # fmt: skip


@dataclass
class _Source:
    """What is written: per split a list of items, and how to read one as (bytes, extension)."""

    classes: list[str]
    channels: int
    image_shape: tuple[int, int, int]
    fingerprint: str
    splits: dict[str, list[tuple[object, int]]]  # split -> (item, label)
    read: Callable[[object], tuple[bytes, str]]
    refused: list[SkippedFile] = field(default_factory=list)  # entries the listing left out (data/members.py)


def write_shards(spec: str, out: str | os.PathLike, *, shard_size: int = 10**9, seed: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> ShardSummary:  # fmt: skip
    """Write the dataset `spec` as shards of about `shard_size` bytes into the new folder `out`."""
    import webdataset

    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; give a new folder (convforge shard never writes into one that "
                           "exists, so no old shard can be mistaken for a new one)")  # fmt: skip
    if shard_size < 1:
        raise DatasetError(f"the shard size must be positive, got {shard_size}")
    start = time.perf_counter()
    with atomic_folder(out) as tmp:
        source = _open_source(spec, max_pixels, tmp / ".spill")
        skipped: list[SkippedFile] = list(source.refused)
        rng = np.random.default_rng(seed)
        manifest_splits = {}
        for split, items in source.splits.items():
            (tmp / split).mkdir()
            with _ShardFiles(webdataset.TarWriter, tmp / split, shard_size) as shards:
                for number, position in enumerate(rng.permutation(len(items))):
                    item, label = items[position]
                    try:
                        data, ext = source.read(item)
                    except OSError as exc:
                        skipped.append(SkippedFile(str(item), f"cannot read it: {exc.strerror or exc}"))
                        continue
                    shards.write({"__key__": f"{number:09d}", ext: data, "cls": int(label)})
            manifest_splits[split] = _describe_split(tmp, split, shards.counts)
        shutil.rmtree(tmp / ".spill", ignore_errors=True)
        manifest = {
            "format": FORMAT,
            "version": 1,
            "source": absolute_spec(spec),
            "source_fingerprint": source.fingerprint,
            "classes": source.classes,
            "channels": source.channels,
            "image_shape": list(source.image_shape),
            "seed": seed,
            "shard_size": shard_size,
            "splits": manifest_splits,
            "skipped": len(skipped),
            "skipped_files": [s.to_dict() for s in skipped[:100]],
        }
        manifest["fingerprint"] = hashlib.sha256(json.dumps(
            [source.classes, {k: [s["sha256"] for s in v["shards"]] for k, v in manifest_splits.items()}]
        ).encode()).hexdigest()  # fmt: skip
        atomic_write_json(tmp / MANIFEST, manifest)
    splits = {name: {"samples": s["samples"], "shards": len(s["shards"]), "bytes": s["bytes"]}
              for name, s in manifest_splits.items()}  # fmt: skip
    return ShardSummary(str(out), splits, skipped, time.perf_counter() - start)


class _ShardFiles:
    """shard-000000.tar, shard-000001.tar, ... each closed once its file reaches `size` bytes (webdataset's
    ShardWriter counts only the payload, so its shards of small images come out several times larger)."""

    def __init__(self, tar_writer, folder: Path, size: int):
        self.tar_writer, self.folder, self.size = tar_writer, folder, size
        self.number, self.file, self.tar = 0, None, None
        self.counts: list[int] = []  # samples in each shard written

    def write(self, sample: dict) -> None:
        if self.tar is None:
            self.file = open(self.folder / f"shard-{self.number:06d}.tar", "wb")  # noqa: SIM115 (closed in close())
            self.tar = self.tar_writer(self.file, mtime=0.0)  # fixed times: the same data gives the same bytes
            self.counts.append(0)
        self.tar.write(sample)
        self.counts[-1] += 1
        if self.file.tell() >= self.size:
            self.close()

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()  # writes the end-of-archive blocks; the file is ours to close
            self.file.close()
            self.tar, self.number = None, self.number + 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _describe_split(folder: Path, split: str, counts: list[int]) -> dict:
    paths = sorted((folder / split).glob("shard-*.tar"))
    shards = [{"name": f"{split}/{path.name}", "samples": count, "bytes": path.stat().st_size,
               "sha256": sha256_file(path)} for path, count in zip(paths, counts, strict=True)]  # fmt: skip
    return {"samples": sum(s["samples"] for s in shards), "bytes": sum(s["bytes"] for s in shards), "shards": shards}


def _open_source(spec: str, max_pixels: int, spill: Path) -> _Source:
    body, limit = split_limit(spec)
    scheme, target = parse_scheme(body)
    if scheme == "wds":
        raise DatasetError(f"{spec} is already shards; give the dataset they came from")
    if scheme in _ARRAY_SCHEMES or (scheme == "cifar10" and _is_cifar_batches(target)):
        return _array_source(spec)
    path = Path(target).expanduser()
    listing = list_csv(path) if scheme == "csv" else list_image_folder(path)
    listing = limit_listing(listing, limit)
    shape = choose_storage_shape(listing, "RGB", 256, max_pixels)
    splits = {name: [(file, label) for file, label in items] for name, items in listing.splits.items()}
    read = _archive_reader(listing, spill) if listing.archive else _file_reader(listing)
    return _Source(listing.classes, 3, shape, listing.fingerprint, splits, read, listing.refused)


def _is_cifar_batches(target: str) -> bool:
    from convforge.data.arrays import is_cifar_batches

    return bool(is_cifar_batches(Path(target).expanduser()))


def _array_source(spec: str) -> _Source:
    """Images that exist only as arrays, written as lossless PNGs."""
    from PIL import Image

    dataset = load_dataset(spec)

    def read(item):
        split, position = item
        pixels = dataset.splits[split].gather(np.array([position]))[0]
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
        return buffer.getvalue(), "png"

    splits = {name: [((name, i), int(label)) for i, label in enumerate(split.labels)]
              for name, split in dataset.splits.items()}  # fmt: skip
    return _Source(dataset.classes, dataset.channels, dataset.image_shape, dataset.fingerprint, splits, read)


def _file_reader(listing: FileListing):
    def read(name):
        with open(listing.path(name), "rb") as handle:
            return handle.read(), _extension(name)

    return read


def _archive_reader(listing: FileListing, spill: Path):
    """An archive is read once, in its own order; its members wait in memory (when the archive is
    smaller than the memory budget) or in a spill folder inside the output, for the shuffled writing.
    Spilled members are numbered files: a member's name is never joined to a folder (data/members.py)."""
    wanted = {name for items in listing.splits.values() for name, _ in items}
    in_memory = os.path.getsize(listing.root) < default_memory_budget()
    held: dict[str, bytes] = {}
    spilled: dict[str, Path] = {}
    if not in_memory:
        log.info("%s is larger than the memory budget: its members wait in %s while the shards are written",
                 listing.root, spill)  # fmt: skip
        spill.mkdir(parents=True, exist_ok=True)
    for name, data in iter_archive(listing, wanted):
        if in_memory:
            held[name] = data
        else:
            spilled[name] = spill / f"{len(spilled):09d}"
            spilled[name].write_bytes(data)

    def read(name):
        if name not in (held if in_memory else spilled):
            raise OSError("listed in the archive but not readable from it")
        return (held[name] if in_memory else spilled[name].read_bytes()), _extension(name)

    return read


def _extension(name: str) -> str:
    ext = Path(name).suffix.lower().lstrip(".")
    return ext or "jpg"

