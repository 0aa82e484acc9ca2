"""Writing files whole or not at all, and where convforge keeps its caches. The ground floor:
run folders, the decode cache, model statistics and exported artifacts all write through here, so
the promise "a killed process leaves the previous version, never half of a new one" is kept in one
place (temporary file in the same folder, fsync, rename)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """`$CONVFORGE_CACHE`, else `$XDG_CACHE_HOME/convforge`, else `~/.cache/convforge`."""
    if os.environ.get("CONVFORGE_CACHE"):
        return Path(os.environ["CONVFORGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convforge"


@functools.cache
def _file_mode() -> int:
    """The mode `open()` would give a new file: 0666 less the umask (read once; reading it means
    setting it, which is not thread-safe to repeat)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole file or nothing: temporary file, fsync, rename. The file gets the mode an
    ordinary write would (mkstemp's 0600 would make a published run folder unreadable to others)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A folder written whole or not at all: the caller fills the temporary folder this yields (beside
    `path`, so the rename stays on one file system); every file in it is fsynced and the folder renamed
    to `path` when the block ends without an error, or removed when it raises. `path` must not exist."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        for folder in (tmp, *(f for f in tmp.rglob("*") if f.is_dir())):
            os.chmod(folder, _file_mode() | (_file_mode() & 0o444) >> 2)  # mkdtemp's 0700 -> what mkdir gives
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=json_default) + "\n").encode())


def json_default(value: Any) -> Any:
    """What `json.dumps` cannot write by itself: dataclasses with `to_dict`, arrays, paths, sets."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
