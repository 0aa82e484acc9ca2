"""Image files on disk: ImageFolder trees (a folder or a .tar/.tar.gz of one) and CSV lists.

Listing finds the splits (`train/`, `val/`, `test/` and their usual aliases) and classes (one
sub-folder per class, searched recursively), counts non-image files and empty class folders, and
fingerprints the data by its file list and sizes (path-independent, for run.json) and identifies it for
the decode cache by its absolute location, sizes and modification times (or, for an archive, by the
hash of its bytes), so an edited file or another folder of same-sized files never reuses stale pixels.
Decoding fills the memory-mapped cache in parallel
worker processes; a file that cannot be decoded is recorded by path and left out, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from convforge.data.decode import decode_image, is_image_file
from convforge.data.imageset import SkippedFile
from convforge.data.members import archive_entries, archive_members, file_stat, folder_entries
from convforge.errors import DatasetError, ImageDecodeError, did_you_mean

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PEEK_FILES = 32
_MAX_NATIVE_SIDE = 512
_PARALLEL_THRESHOLD = 2_000


@dataclass
class FileListing:
    """What a folder, archive or CSV holds: per split, (file name, class index) pairs."""

    root: str
    archive: bool
    classes: list[str]
    splits: dict[str, list[tuple[str, int]]]
    fingerprint: str
    ignored_files: int = 0
    empty_classes: list[str] = field(default_factory=list)
    archive_prefix: str = ""  # a top folder every archive member shares, stripped from the names
    refused: list[SkippedFile] = field(default_factory=list)  # unsafe member names, links not followed
    cache_identity: str = ""  # what the decode cache is keyed by (see the module docstring)

    def path(self, name: str) -> str:
        return name if os.path.isabs(name) else os.path.join(self.root, name)


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def list_image_folder(root: str | os.PathLike) -> FileListing:
    """List an ImageFolder tree (or an archive of one): splits, classes, files, fingerprint."""
    root = Path(root)
    if not root.exists():
        hint = did_you_mean(root.name, os.listdir(root.parent)) if root.parent.is_dir() else ""
        raise DatasetError(f"dataset path {root} does not exist.{hint}")
    if root.is_file() and not is_archive(root):
        raise DatasetError(
            f"{root} is a file, not a dataset: give a folder with one sub-folder per class, a .tar.gz of "
            "one, or a spec such as mnist:PATH, cifar10:PATH, csv:FILE or shapes"
        )
    prefix = ""
    if root.is_file():
        entries, refused = archive_entries(root)
        entries, prefix = _strip_common_top_folder(entries)
        fingerprint = identity = sha256_file(root)
    else:
        stats, refused = folder_entries(root)
        entries = {name: size for name, (size, _) in stats.items()}
        fingerprint = _digest(f"{name}\0{size}" for name, size in sorted(entries.items()))
        identity = _digest([str(root.resolve())] + [f"{n}\0{s}\0{t}" for n, (s, t) in sorted(stats.items())])
    if refused:
        log.warning("%s: %d entries left out, first %s (%s)", root, len(refused), refused[0].path, refused[0].reason)
    listing = _listing_from_entries(str(root), entries, archive=root.is_file())
    listing.archive_prefix, listing.refused = prefix, refused
    listing.fingerprint, listing.cache_identity = fingerprint, identity
    return listing


def _digest(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def list_csv(csv_path: str | os.PathLike) -> FileListing:
    """A CSV of `path,label[,split]` rows (a header row is recognised); paths relative to the CSV."""
    csv_path = Path(csv_path).absolute()  # rows are relative to it, and listing.path() joins its folder once
    if not csv_path.is_file():
        raise DatasetError(f"CSV file {csv_path} does not exist")
    rows: list[tuple[str, str, str]] = []
    with open(csv_path, newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if line_number == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
                continue
            if len(row) < 2:
                raise DatasetError(f"{csv_path}:{line_number}: expected 'path,label[,split]', got {row!r}")
            split = row[2].strip().lower() if len(row) > 2 and row[2].strip() else "train"
            rows.append((row[0].strip(), row[1].strip(), _canonical_split(split, csv_path, line_number)))
    if not rows:
        raise DatasetError(f"CSV file {csv_path} lists no images")
    classes = sorted({label for _, label, _ in rows})
    class_index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {}
    content, identity = [], [str(csv_path.resolve())]
    ignored = 0
    for path, label, split in rows:
        full = path if os.path.isabs(path) else str(csv_path.parent / path)
        if not is_image_file(full):
            ignored += 1
            continue
        splits.setdefault(split, []).append((full, class_index[label]))
        size, mtime = file_stat(full)
        content.append(f"{path}\0{label}\0{split}\0{size}")
        identity.append(f"{os.path.abspath(full)}\0{label}\0{split}\0{size}\0{mtime}")
    missing = [full for files in splits.values() for full, _ in files if not os.path.exists(full)]
    listed = sum(len(files) for files in splits.values())
    if missing:
        where = f"paths are read relative to the CSV's folder {csv_path.parent}"
        if len(missing) == listed:
            raise DatasetError(
                f"none of the {listed:,} image files listed in {csv_path} exists (first: {missing[0]}); {where}"
            )
        log.warning("%s of the %s image files listed in %s do not exist and will be skipped (first: %s); %s",
                    f"{len(missing):,}", f"{listed:,}", csv_path, missing[0], where)  # fmt: skip
    listing = FileListing(str(csv_path.parent), False, classes, splits, _digest(content), ignored)
    listing.cache_identity = _digest(identity)
    _check_classes(listing, str(csv_path))
    return listing


def _canonical_split(name: str, source: Path, line_number: int) -> str:
    for split, aliases in SPLIT_ALIASES.items():
        if name in aliases:
            return split
    raise DatasetError(f"{source}:{line_number}: unknown split {name!r}; use train, val or test")


def _strip_common_top_folder(entries: dict[str, int]) -> tuple[dict[str, int], str]:
    """`cifar10-jpg/train/cat/1.jpg` -> `train/cat/1.jpg` when every entry shares one top folder."""
    files = [name for name in entries if not name.endswith("/")]
    tops = {PurePosixPath(name).parts[0] for name in entries}
    if len(tops) != 1 or any(len(PurePosixPath(n).parts) < 3 for n in files):
        return entries, ""
    top = tops.pop()
    if top.lower() in {alias for aliases in SPLIT_ALIASES.values() for alias in aliases}:
        return entries, ""
    stripped = {}
    for name, size in entries.items():
        relative = PurePosixPath(name).relative_to(top).as_posix()
        if relative != ".":
            stripped[relative + ("/" if name.endswith("/") else "")] = size
    return stripped, top + "/"


def _listing_from_entries(root: str, entries: dict[str, int], archive: bool) -> FileListing:
    top_dirs = {PurePosixPath(name).parts[0] for name in entries if len(PurePosixPath(name).parts) > 1}
    split_of_dir = {
        d: split for d in top_dirs for split, aliases in SPLIT_ALIASES.items() if d.lower() in aliases
    }
    ignored = 0
    # split -> class folder -> files
    tree: dict[str, dict[str, list[str]]] = {}
    for name in sorted(entries):
        parts = PurePosixPath(name).parts
        if name.endswith("/"):  # a folder: a class folder exists even when it holds no image
            if len(parts) == (2 if split_of_dir else 1) and (not split_of_dir or parts[0] in split_of_dir):
                split = split_of_dir[parts[0]] if split_of_dir else "train"
                tree.setdefault(split, {}).setdefault(parts[-1], [])
            continue
        if split_of_dir:
            if len(parts) < 3 or parts[0] not in split_of_dir:
                ignored += 1
                continue
            split, class_name = split_of_dir[parts[0]], parts[1]
        else:
            if len(parts) < 2:
                ignored += 1
                continue
            split, class_name = "train", parts[0]
        files = tree.setdefault(split, {}).setdefault(class_name, [])
        if is_image_file(name):
            files.append(name)
        else:
            ignored += 1
    if not tree:
        raise DatasetError(
            f"{root} has no class folders: an ImageFolder dataset needs one sub-folder per class "
            "(optionally inside train/, val/ and test/)"
        )
    class_source = tree.get("train") or {k: v for split in tree.values() for k, v in split.items()}
    empty = sorted(name for name, files in class_source.items() if not files)
    classes = sorted(name for name, files in class_source.items() if files)
    class_index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, class_folders in tree.items():
        for class_name, files in class_folders.items():
            if not files:
                continue
            if class_name not in class_index:
                raise DatasetError(
                    f"{root}: class folder {split}/{class_name} has no counterpart in the training classes "
                    f"{classes}; every split must use the same class folders"
                )
            splits.setdefault(split, []).extend((name, class_index[class_name]) for name in files)
    listing = FileListing(root, archive, classes, splits, "", ignored, empty)
    _check_classes(listing, root)
    return listing


def _check_classes(listing: FileListing, where: str) -> None:
    total = sum(len(items) for items in listing.splits.values())
    if total == 0:
        raise DatasetError(
            f"{where} holds no image files ({listing.ignored_files} other files); "
            "expected .jpg, .png, .bmp, .gif, .tif or .webp images"
        )
    if len(listing.classes) < 2:
        raise DatasetError(
            f"{where} has a single class ({listing.classes[0]!r}); a classifier needs at least two "
            "class folders"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------- decoding


def choose_storage_shape(listing: FileListing, mode: str, storage_size: int, max_pixels: int) -> tuple:
    """The (H, W, C) every image is stored at.

    When the first files all share one size no larger than 512 px (CIFAR, MNIST, most curated
    sets) images keep it; otherwise they are resized (shorter side) and centre-cropped to a square
    no larger than `storage_size`, and no larger than the typical image, so nothing is upsampled
    only to be stored.
    """
    channels = 3 if mode == "RGB" else 1
    names = [name for items in listing.splits.values() for name, _ in items]
    step = max(1, len(names) // PEEK_FILES)
    sizes = []
    for name, data in _read_some(listing, names[::step][:PEEK_FILES]):
        try:
            image = decode_image(data, mode=mode, max_pixels=max_pixels, name=name)
        except ImageDecodeError:
            continue
        sizes.append(image.shape[:2])
    return storage_shape_from_sizes(sizes, channels, storage_size)


def storage_shape_from_sizes(sizes: list[tuple[int, int]], channels: int, storage_size: int) -> tuple:
    """`choose_storage_shape`'s rule on the (H, W) of some decoded images (shards use it too)."""
    if not sizes:
        return (storage_size, storage_size, channels)
    if len(set(sizes)) == 1 and max(sizes[0]) <= _MAX_NATIVE_SIDE:
        return (*sizes[0], channels)
    typical_short_side = int(np.median([min(s) for s in sizes]))
    side = max(16, min(storage_size, typical_short_side))
    return (side, side, channels)


def _read_some(listing: FileListing, names: list[str]) -> Iterator[tuple[str, bytes]]:
    if not listing.archive:
        for name in names:
            try:
                with open(listing.path(name), "rb") as handle:
                    yield listing.path(name), handle.read()
            except OSError:
                continue
        return
    yield from iter_archive(listing, set(names))


def iter_archive(listing: FileListing, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the wanted members, in archive order (one sequential pass)."""
    return archive_members(listing.root, wanted, listing.archive_prefix)


def _decode_job(job: tuple[int, str, bytes | None, tuple[int, int, int], int]):
    index, name, data, shape, max_pixels = job
    mode = "RGB" if shape[2] == 3 else "L"
    try:
        source = data if data is not None else name
        image = decode_image(source, mode=mode, size=shape[:2], max_pixels=max_pixels, name=name)
        return index, name, image, None
    except ImageDecodeError as exc:
        return index, name, None, exc.reason


def decode_files(
    listing: FileListing,
    items: list[tuple[str, int]],
    out: np.ndarray,
    max_pixels: int,
    workers: int | None = None,
) -> tuple[np.ndarray, list[SkippedFile]]:
    """Decode `items` into `out[i]` (uint8 NHWC); return the mask of decoded rows and the skipped files."""
    shape = tuple(out.shape[1:])
    if listing.archive:
        position = {name: i for i, (name, _) in enumerate(items)}
        jobs = (
            (position[name], listing.path(name), data, shape, max_pixels)
            for name, data in iter_archive(listing, set(position))
        )
    else:
        jobs = ((i, listing.path(name), None, shape, max_pixels) for i, (name, _) in enumerate(items))
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if workers > 1 and len(items) >= _PARALLEL_THRESHOLD:
        # fork: workers only run Pillow and NumPy, and start instantly without re-importing torch.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return _collect(pool.imap_unordered(_decode_job, jobs, chunksize=64), out, items, listing)
    return _collect(map(_decode_job, jobs), out, items, listing)


def _collect(results, out: np.ndarray, items, listing: FileListing) -> tuple[np.ndarray, list[SkippedFile]]:
    decoded = np.zeros(len(items), dtype=bool)
    seen = np.zeros(len(items), dtype=bool)
    skipped = []
    for index, name, image, reason in results:
        seen[index] = True
        if image is None:
            skipped.append(SkippedFile(name, reason))
        else:
            out[index] = image
            decoded[index] = True
    skipped.extend(
        SkippedFile(listing.path(items[i][0]), "listed but not found when reading")
        for i in np.flatnonzero(~seen)
    )
    skipped.sort(key=lambda s: s.path)
    return decoded, skipped
