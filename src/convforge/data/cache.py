"""The decode cache: each dataset is decoded once into memory-mapped uint8 NHWC arrays.

An entry is a folder `<cache>/datasets/<key>/` holding `<split>.images.npy` (N, H, W, C),
`<split>.labels.npy`, optional `<split>.masks.npy`, and `meta.json`. The key is a hash of the data
fingerprint (file list and sizes) and of everything that changes the decoded pixels (storage shape,
colour mode, decoder version). Entries are built in a temporary folder and renamed into place, so a
run killed while decoding never leaves a half-written entry behind. `.npy` files are read with
`allow_pickle=False`: the cache never unpickles.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convforge.files import cache_root

# 2: archive members with names outside the archive are refused and folder loops not walked; an entry
# of format 1 may hold what they listed (and a relative CSV's rows decoded as all missing)
CACHE_FORMAT = 2


def cache_key(**parts: Any) -> str:
    payload = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class CacheEntryWriter:
    """Collects the arrays of a new entry in a temporary folder; `commit` renames it into place."""

    def __init__(self, final_dir: Path):
        self.final_dir = final_dir
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))

    def new_array(self, name: str, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.memmap:
        """A memory-mapped array whose disk blocks are reserved first: writing pages of a sparse file on a
        full disk kills the process with SIGBUS, a reservation that fails is an OSError (ENOSPC) instead."""
        path = self.tmp_dir / f"{name}.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        reserve_blocks(path)
        return array

    def save_array(self, name: str, array: np.ndarray) -> None:
        np.save(self.tmp_dir / f"{name}.npy", array, allow_pickle=False)

    def commit(self, meta: dict[str, Any]) -> Path:
        (self.tmp_dir / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(self.tmp_dir, self.final_dir)
        except OSError:
            # Another process committed the same entry first; theirs is identical.
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        return self.final_dir

    def abort(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def reserve_blocks(path: Path) -> None:
    """Allocate every block of `path` now (posix_fallocate), where the system can."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # a file system that cannot: as before
            return
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


def open_entry(entry_dir: Path) -> tuple[dict[str, Any], Callable[[str], np.ndarray | None]] | None:
    """The meta of a committed entry and a reader for its arrays (memory-mapped), or None if absent."""
    meta_path = entry_dir / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None

    def read(name: str) -> np.ndarray | None:
        path = entry_dir / f"{name}.npy"
        if not path.is_file():
            return None
        return np.load(path, mmap_mode="r", allow_pickle=False)

    return meta, read


def build_or_open(
    key: str, build: Callable[[CacheEntryWriter], dict[str, Any]]
) -> tuple[dict[str, Any], Callable[[str], np.ndarray | None], Path]:
    """Open the entry `key`, building it with `build(writer) -> meta` first when it does not exist."""
    entry_dir = cache_root() / "datasets" / key
    opened = open_entry(entry_dir)
    if opened is None:
        writer = CacheEntryWriter(entry_dir)
        try:
            meta = build(writer)
        except BaseException:
            writer.abort()
            raise
        writer.commit(meta)
        opened = open_entry(entry_dir)
        if opened is None:  # the cache folder is not writable as a folder of files; should not happen
            raise OSError(f"could not create the dataset cache entry {entry_dir}")
    meta, read = opened
    return meta, read, entry_dir
