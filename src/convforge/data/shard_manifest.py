"""The manifest.json of a `convforge shard` folder, read as untrusted input.

A manifest names the shard files, their sample counts and SHA-256, the classes and the storage shape.
Each of those is used: a name is joined to the folder, a count sizes the record of lost samples, a
digest decides whether the shard is the one that was written. So every field is checked before use,
and a manifest that fails a check is refused with the field named: a shard name must be a relative path
inside the folder; a count a whole number no larger than the shard file could hold (a sample is at least
two tar members of a 512-byte header each); a digest 64 hexadecimal digits, compared with the file's
once, when its index is built (data/shards.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from convforge.data.members import safe_member_name
from convforge.errors import DatasetError

MANIFEST = "manifest.json"
FORMAT = "convforge-shards"
MIN_SAMPLE_BYTES = 1024  # two tar headers: the image member's and the label member's
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_manifest(folder: Path) -> dict:
    """The checked manifest of a shard folder (DatasetError naming the first field that is wrong)."""
    file = folder / MANIFEST
    if not file.is_file():
        raise DatasetError(f"{folder} has no {MANIFEST}, so it was not written by `convforge shard`; name its "
                           "shards with a brace pattern instead, e.g. "
                           f"wds:{folder}/shard-{{000000..000009}}.tar")  # fmt: skip
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise DatasetError(f"cannot read {file}: {exc}; write the shards again with `convforge shard`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{file} is not a convforge shard manifest (no \"format\": \"{FORMAT}\")")
    problem = _first_problem(manifest, folder)
    if problem:
        raise DatasetError(f"{file}: {problem}; write the shards again with `convforge shard`")
    return manifest


def manifest_near(shard: str) -> dict | None:
    """The manifest of a `convforge shard` folder a pattern points into (OUT/train/shard-*.tar)."""
    folder = Path(shard).parent.parent
    return read_manifest(folder) if (folder / MANIFEST).is_file() else None


def shard_source(target: str) -> str | None:
    """The spec a `convforge shard` folder (or a pattern inside one) was written from, when recorded."""
    path = Path(target).expanduser()
    folder = path if path.is_dir() else path.parent.parent
    try:
        source = read_manifest(folder).get("source") if (folder / MANIFEST).is_file() else None
    except DatasetError:
        return None
    return source if isinstance(source, str) else None


def _first_problem(manifest: dict, folder: Path) -> str | None:
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "\"classes\" must be a non-empty list of class names"
    if manifest.get("channels", 3) not in (1, 3):
        return "\"channels\" must be 1 or 3"
    shape = manifest.get("image_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) >= 2
                                  and all(_whole(side) and 0 < side <= 65536 for side in shape[:2])):  # fmt: skip
        return "\"image_shape\" must start with a height and a width in pixels"
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "\"splits\" must map split names to their shards"
    for split, info in splits.items():
        shards = info.get("shards") if isinstance(info, dict) else None
        if split not in ("train", "val", "test") or not isinstance(shards, list):
            return f"split {split!r} must be train, val or test with a list of \"shards\""
        for number, shard in enumerate(shards):
            problem = _shard_problem(shard, folder)
            if problem:
                return f"{split} shard {number}: {problem}"
    return None


def _shard_problem(shard: object, folder: Path) -> str | None:
    if not isinstance(shard, dict):
        return "must be an object with name, samples and sha256"
    name = shard.get("name")
    if not isinstance(name, str) or safe_member_name(name) != name:
        return f"name {name!r} must be a relative path inside the shard folder (no '/' first, no '..')"
    samples = shard.get("samples")
    if not _whole(samples) or samples < 0:
        return f"samples {samples!r} must be a whole number"
    path = folder / name
    if path.is_file() and samples > os.path.getsize(path) // MIN_SAMPLE_BYTES:
        return (f"samples {samples:,} is more than its {os.path.getsize(path):,} bytes can hold "
                f"(a sample takes at least {MIN_SAMPLE_BYTES} bytes)")  # fmt: skip
    digest = shard.get("sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
        return "sha256 must be 64 hexadecimal digits"
    return None


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
