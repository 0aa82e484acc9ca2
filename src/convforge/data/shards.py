"""WebDataset shards as a dataset spec: `wds:FOLDER` (what `convforge shard` wrote, read through its
manifest.json) or `wds:PATTERN` (tar files named by a brace pattern, as WebDataset writes them:
`wds:out/train/shard-{000000..000009}.tar`).

A shard is a plain tar whose consecutive members sharing a key (the name up to its first dot) form a
sample: `000123.jpg` (the image's bytes as they were) and `000123.cls` (the class index as text).

Why not webdataset's own streaming pipeline: it reads each tar front to back and deals whole shards
to ranks and workers, so ranks get unequal sample counts while DDP needs equal steps (timm pads with
`with_epoch`, which repeats some samples and drops others). Here each shard's tar headers are
scanned once with the standard library (cached by file size and time) into an index of member
offsets and labels. An epoch's order is then computed before a byte is read, the way WebDataset
would stream it: shards in a seeded order, each rank one contiguous range of the same length, a
shuffle buffer over that range. Workers read it with positioned reads that move forward through the
shards. So every sample is seen once per epoch, every rank takes as many steps, a resumed epoch
continues exactly, and only the index (24 bytes a sample) is held in memory: the images stay in the
shards, never in the decode cache. tests/data/test_shards.py checks the samples equal webdataset's
reading of the same tars.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convforge.data.decode import decode_image
from convforge.data.folder import PEEK_FILES, sha256_file, storage_shape_from_sizes
from convforge.data.imageset import Dataset, ImageSet, SkippedFile
from convforge.data.members import OUTSIDE, safe_member_name
from convforge.data.shard_manifest import MANIFEST, manifest_near, read_manifest
from convforge.errors import DatasetError, ImageDecodeError
from convforge.files import atomic_write_bytes, cache_root

SHUFFLE_BUFFER = 10_000  # samples; WebDataset's examples use 1,000 to 10,000
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm")
LABEL_EXTENSIONS = ("cls", "class", "label")
_INDEX_VERSION = 2  # 2: shards checked against the manifest's SHA-256, unsafe member names refused


@dataclass
class ShardIndex:
    """Where every readable sample of some shards is: its shard, its image member's bytes, its label."""

    paths: list[str]
    shard: np.ndarray  # int32 per sample
    offset: np.ndarray  # int64: the image member's first data byte
    size: np.ndarray  # int64: its length
    label: np.ndarray  # int64
    problems: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.label)


def index_shards(paths: list[str], expected: list[int] | None = None, digests: list[str | None] | None = None
                 ) -> ShardIndex:  # fmt: skip
    """Scan the tar headers of `paths` (or read a cached scan of the same files). `expected` sample
    counts (from a manifest) turn a damaged tar's lost tail into one skipped entry per lost sample;
    `digests` (the manifest's SHA-256 of each shard) are compared with the files once, when the index is
    built: every sample of a shard changed since it was written is left out and counted."""
    stats = [os.stat(p) for p in paths]
    key = hashlib.sha256(
        json.dumps([_INDEX_VERSION, expected, digests, [[os.path.abspath(p), s.st_size, s.st_mtime_ns] for p, s in
                                                         zip(paths, stats, strict=True)]]).encode()  # fmt: skip
    ).hexdigest()[:32]
    cached = cache_root() / "shard-index" / f"{key}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as saved:
            problems = [SkippedFile(**p) for p in json.loads(str(saved["problems"]))]
            return ShardIndex(list(paths), saved["shard"], saved["offset"], saved["size"], saved["label"], problems)
    rows, problems = [], []
    for number, path in enumerate(paths):
        digest = digests[number] if digests else None
        if digest is not None and sha256_file(Path(path)) != digest:  # flipped labels read silently otherwise
            count = expected[number] if expected else 1
            reason = (f"the shard changed after `convforge shard` wrote it (its SHA-256 differs from the manifest's): "
                      f"its {count} samples are left out; write the shards again")  # fmt: skip
            problems.extend(SkippedFile(f"{path}#{i}", reason) for i in range(count))
            continue
        shard_rows, shard_problems = _scan_shard(path, expected[number] if expected else None)
        rows.extend((number, *row) for row in shard_rows)
        problems.extend(shard_problems)
    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    index = ShardIndex(list(paths), table[:, 0].astype(np.int32), table[:, 1], table[:, 2], table[:, 3], problems)
    buffer = io.BytesIO()
    np.savez(buffer, shard=index.shard, offset=index.offset, size=index.size, label=index.label,
             problems=np.array(json.dumps([p.to_dict() for p in problems])))  # fmt: skip
    atomic_write_bytes(cached, buffer.getvalue())
    return index


def _scan_shard(path: str, expected: int | None) -> tuple[list[tuple[int, int, int]], list[SkippedFile]]:
    rows: list[tuple[int, int, int]] = []
    problems: list[SkippedFile] = []
    file_size = os.path.getsize(path)
    try:
        with tarfile.open(path, "r:") as tar:
            key, members = None, []
            for member in tar:
                if not member.isfile():
                    continue
                if safe_member_name(member.name) is None:
                    problems.append(SkippedFile(f"{path}:{member.name}", OUTSIDE))
                    continue
                name_key, ext = split_member_name(member.name)
                if name_key != key and members:
                    _add_sample(tar, f"{path}:{key}", members, file_size, rows, problems)
                    members = []
                key = name_key
                members.append((ext, member))
            if members:
                _add_sample(tar, f"{path}:{key}", members, file_size, rows, problems)
            damage = _damage_after(path, tar.offset, file_size)
    except (tarfile.TarError, OSError) as exc:  # not a tar at all, or unreadable from the first header
        damage = f"not a readable tar file ({exc})"
    if damage:
        seen = len(rows) + len(problems)
        lost = max(expected - seen, 0) if expected is not None else None
        if lost is None:
            problems.append(SkippedFile(path, f"{damage}; the samples after the first {seen} are lost "
                                        "(how many is unknown without a manifest)"))  # fmt: skip
        else:
            reason = f"{damage}; {lost} of its {expected} samples are lost"
            problems.extend(SkippedFile(f"{path}#{seen + i}", reason) for i in range(lost))
    elif expected is not None and len(rows) + len(problems) < expected:
        lost = expected - len(rows) - len(problems)
        problems.extend(SkippedFile(f"{path}#{len(rows) + i}", "missing from the shard (the manifest lists "
                                    f"{expected} samples)") for i in range(lost))  # fmt: skip
    return rows, problems


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of its last part; the rest is the
    extension (`a/b.seg.png` -> (`a/b`, `seg.png`))."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _add_sample(tar, where, members, file_size, rows, problems) -> None:
    image = next((m for ext, m in members if ext in IMAGE_EXTENSIONS), None)
    label_member = next((m for ext, m in members if ext in LABEL_EXTENSIONS), None)
    if image is None:
        problems.append(SkippedFile(where, f"no image member (.{', .'.join(IMAGE_EXTENSIONS[:3])}, ...)"))
        return
    if label_member is None:
        problems.append(SkippedFile(where, "no .cls member with the class index"))
        return
    if image.offset_data + image.size > file_size:
        problems.append(SkippedFile(where, "the image member is cut short (truncated tar)"))
        return
    text = tar.extractfile(label_member).read(32).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:  # '²' is a digit to isdigit(), not to int()
        problems.append(SkippedFile(where, f"class index {text[:16]!r} is not a whole number below 10**9"))
        return
    rows.append((image.offset_data, image.size, int(text)))


def _damage_after(path: str, offset: int, file_size: int) -> str | None:
    """tarfile stops silently at a damaged header: whatever follows `offset` but the end-of-archive
    zeros means the tar is damaged there."""
    if offset >= file_size:
        return None
    with open(path, "rb") as handle:
        handle.seek(offset)
        rest = handle.read(1024)
    return None if not rest.strip(b"\0") else f"damaged tar header at byte {offset:,}"


class ShardImages:
    """A split's images, read from shards on demand (like `FileImages`, with an epoch order of its own)."""

    def __init__(self, index: ShardIndex, image_shape: tuple[int, int, int], max_pixels: int,
                 strict: bool = False, buffer: int = SHUFFLE_BUFFER):  # fmt: skip
        self.index = index
        self.image_shape = tuple(image_shape)
        self.max_pixels = max_pixels
        self.strict = strict
        self.buffer = buffer
        self._files: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):  # DataLoader workers open their own descriptors
        return {**self.__dict__, "_files": {}}

    def __del__(self):
        for fd in getattr(self, "_files", {}).values():
            if self._pid == os.getpid():
                os.close(fd)

    def raw(self, row: int) -> bytes:
        """The image member's bytes of sample `row` (positioned reads: no shared file offset to race on)."""
        if self._pid != os.getpid():  # a forked worker: the parent's descriptors are not ours to use
            self._files, self._pid = {}, os.getpid()
        shard = int(self.index.shard[row])
        if shard not in self._files:
            self._files[shard] = os.open(self.index.paths[shard], os.O_RDONLY)
        return os.pread(self._files[shard], int(self.index.size[row]), int(self.index.offset[row]))

    def read(self, row: int) -> np.ndarray | SkippedFile:
        height, width, channels = self.image_shape
        name = self.member_name(row)
        try:
            data = self.raw(row)
        except OSError as exc:
            return SkippedFile(name, f"cannot read the shard: {exc}")
        if len(data) < int(self.index.size[row]):
            return SkippedFile(name, "the image member is cut short (truncated tar)")
        try:
            return decode_image(data, mode="RGB" if channels == 3 else "L", size=(height, width),
                                max_pixels=self.max_pixels, name=name)  # fmt: skip
        except ImageDecodeError as exc:
            return SkippedFile(exc.path, exc.reason)

    def member_name(self, row: int) -> str:
        """`shard.tar:member` for messages, read from the ustar header before the member's data."""
        path = self.index.paths[int(self.index.shard[row])]
        try:
            with open(path, "rb") as handle:
                handle.seek(int(self.index.offset[row]) - 512)
                header = handle.read(512)
            name = header[:100].split(b"\0")[0].decode("utf-8", "replace")
            prefix = header[345:500].split(b"\0")[0].decode("utf-8", "replace")
            return f"{path}:{prefix + '/' if prefix else ''}{name}"
        except (OSError, ValueError):
            return f"{path}@{int(self.index.offset[row])}"

    def epoch_order(self, rows: np.ndarray, seed: int | None, rank: int, world_size: int) -> np.ndarray:
        """Positions (into `rows`, a split's samples) of one epoch for `rank`: without a seed, storage
        order dealt every world-th; with one, the shards in a seeded order, this rank's contiguous
        range of len(rows) // world_size samples of it, then a shuffle buffer over that range."""
        positions = np.arange(len(rows))
        if seed is None:
            return positions[rank::world_size]
        rng = np.random.default_rng(seed)
        shard_turn = np.empty(len(self.index.paths), dtype=np.int64)
        shard_turn[rng.permutation(len(self.index.paths))] = np.arange(len(self.index.paths))
        stream = positions[np.lexsort((rows, shard_turn[self.index.shard[rows]]))]
        share = len(rows) // world_size
        stream = stream[rank * share : (rank + 1) * share]
        return buffer_shuffle(stream, self.buffer, np.random.default_rng([seed, rank]))


def buffer_shuffle(stream: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """WebDataset's shuffle: fill a buffer of `size`, then each new item takes the place of a random
    one, which goes out; the rest leave in random order at the end."""
    if len(stream) <= 1:
        return stream.copy()
    buffer = list(stream[:size])
    draws = rng.integers(0, len(buffer), size=max(len(stream) - size, 0))
    out = np.empty(len(stream), dtype=stream.dtype)
    for n, (item, pick) in enumerate(zip(stream[size:], draws, strict=True)):
        out[n], buffer[pick] = buffer[pick], item
    rest = np.array(buffer, dtype=stream.dtype)
    out[len(stream) - len(rest) :] = rest[rng.permutation(len(rest))]
    return out


# ------------------------------------------------------------------------------------ the spec


def load_shards(spec: str, target: str, *, channels: int | None, storage_size: int, max_pixels: int,
                strict: bool) -> Dataset:  # fmt: skip
    """`wds:FOLDER` or `wds:PATTERN` -> a Dataset whose splits read the shards on demand."""
    path = Path(target).expanduser()
    if path.is_dir():
        manifest = read_manifest(path)
        listed = manifest["splits"].items()
        split_paths = {split: [str(path / s["name"]) for s in info["shards"]] for split, info in listed}
        expected = {split: [s["samples"] for s in info["shards"]] for split, info in listed}
        digests = {split: [s.get("sha256") for s in info["shards"]] for split, info in listed}
        missing = [p for paths in split_paths.values() for p in paths if not os.path.isfile(p)]
        if missing:
            raise DatasetError(f"{len(missing)} shard file(s) listed in {path / MANIFEST} are missing, "
                               f"first {missing[0]}; copy them back or write the shards again")  # fmt: skip
    else:
        shard_paths = expand_pattern(str(path))
        manifest = manifest_near(shard_paths[0])
        split_paths, expected, digests = {"train": shard_paths}, {"train": None}, {"train": None}
        if manifest:
            named = {str(Path(shard_paths[0]).parent.parent / s["name"]): (split, s["samples"], s.get("sha256"))
                     for split, info in manifest["splits"].items() for s in info["shards"]}  # fmt: skip
            found = [named.get(str(Path(p))) for p in shard_paths]
            if all(found) and len({split for split, _, _ in found}) == 1:
                split_paths = {found[0][0]: shard_paths}
                expected = {found[0][0]: [count for _, count, _ in found]}
                digests = {found[0][0]: [digest for _, _, digest in found]}
            else:
                manifest = None
    indexes = {split: index_shards(paths, expected[split], digests[split]) for split, paths in split_paths.items()}
    classes = manifest["classes"] if manifest else _classes_without_manifest(indexes, spec)
    for split, ix in indexes.items():
        if len(ix) and int(ix.label.max()) >= len(classes):
            raise DatasetError(f"a {split} shard has class index {int(ix.label.max())} but {path} names "
                               f"{len(classes)} classes; the shards and the manifest disagree")  # fmt: skip
    if not any(len(ix) for ix in indexes.values()):
        raise DatasetError(f"no readable sample in the shards of {spec}: {_first_problem(indexes)}")
    channels = channels or (manifest or {}).get("channels", 3)
    shape = _storage_shape(indexes, manifest, channels, storage_size, max_pixels)
    splits = {split: ImageSet(ShardImages(ix, shape, max_pixels, strict), ix.label, classes, name=split)
              for split, ix in indexes.items() if len(ix)}  # fmt: skip
    fingerprint = manifest["fingerprint"] if manifest else _index_fingerprint(indexes)
    skipped = [p for ix in indexes.values() for p in ix.problems]
    return Dataset(spec, classes, splits, fingerprint, skipped=skipped)


def expand_pattern(pattern: str) -> list[str]:
    """The files a brace pattern names (`shard-{000000..000012}.tar`, `{a,b}.tar`); all must exist."""
    from braceexpand import braceexpand

    try:
        names = list(braceexpand(pattern))
    except (ValueError, IndexError) as exc:
        raise DatasetError(f"bad brace pattern {pattern!r}: {exc}") from None
    present = [name for name in names if os.path.isfile(name)]
    if not present:
        example = "" if len(names) == 1 else f" ({len(names)} names, from {names[0]} to {names[-1]})"
        raise DatasetError(f"the shard pattern {pattern} matches no file{example}; check the folder and the "
                           "numbers, e.g. wds:out/train/shard-{000000..000009}.tar")  # fmt: skip
    if len(present) < len(names):
        missing = [name for name in names if name not in set(present)]
        raise DatasetError(f"{len(missing)} of the {len(names)} shards the pattern {pattern} names do not exist, "
                           f"first {missing[0]}; narrow the pattern to the shards there are")  # fmt: skip
    return names


def _classes_without_manifest(indexes: dict[str, ShardIndex], spec: str) -> list[str]:
    """Classes "0" .. "N-1" from the labels themselves, refused when some index below the largest has no
    sample: one stray label (5000 among 0s and 1s) would otherwise make a 5001-class model."""
    seen = np.unique(np.concatenate([ix.label for ix in indexes.values()]))
    if len(seen) and (seen[0] < 0 or len(seen) != int(seen[-1]) + 1):
        shown = ", ".join(str(int(c)) for c in seen[:8]) + (", ..." if len(seen) > 8 else "")
        raise DatasetError(f"the class indices of {spec} are not 0 to N-1 without gaps (found {len(seen)} "
                           f"distinct: {shown}); without a manifest the classes are counted from the labels, "
                           "so fix the stray labels or write the shards with `convforge shard`, whose "
                           "manifest names the classes")  # fmt: skip
    return [str(c) for c in range(len(seen))]


def _storage_shape(indexes, manifest, channels, storage_size, max_pixels) -> tuple[int, int, int]:
    if manifest and manifest.get("image_shape"):
        height, width = manifest["image_shape"][:2]
        return (height, width, channels)
    index = next(ix for ix in indexes.values() if len(ix))
    reader = ShardImages(index, (1, 1, channels), max_pixels)
    sizes = []
    for row in np.linspace(0, len(index) - 1, min(PEEK_FILES, len(index))).astype(int):
        try:
            image = decode_image(reader.raw(int(row)), mode="RGB" if channels == 3 else "L", max_pixels=max_pixels)
        except (ImageDecodeError, OSError):
            continue
        sizes.append(image.shape[:2])
    return storage_shape_from_sizes(sizes, channels, storage_size)


def _index_fingerprint(indexes: dict[str, ShardIndex]) -> str:
    digest = hashlib.sha256()
    for split, ix in sorted(indexes.items()):
        digest.update(split.encode())
        for array in (ix.shard, ix.offset, ix.size, ix.label):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _first_problem(indexes: dict[str, ShardIndex]) -> str:
    problems = [p for ix in indexes.values() for p in ix.problems]
    return f"{problems[0].path}: {problems[0].reason}" if problems else "the shards are empty"
