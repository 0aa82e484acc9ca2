"""Writing files whole or not at all, and where convforge keeps its caches. The ground floor:
run folders, the decode cache, model statistics and exported artifacts all write through here, so
the promise "a killed process leaves the previous version, never half of a new one" is kept in one
place (temporary file in the same folder, fsync, rename)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
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
def atomic_folder(path: str | os.PathLike, replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """A folder written whole or not at all: the caller fills the temporary folder this yields (beside
    `path`, so the rename stays on one file system); every file in it is fsynced and the folder renamed
    to `path` when the block ends without an error, or removed when it raises. `path` must not exist,
    unless `replace` is given: it removes what is at `path` just before the rename (`--force`)."""
    path = Path(path)
    if path.exists() and replace is None:
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".partial"))
    try:
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        for folder in (tmp, *(f for f in tmp.rglob("*") if f.is_dir())):
            os.chmod(folder, _file_mode() | (_file_mode() & 0o444) >> 2)  # mkdtemp's 0700 -> what mkdir gives
        if replace is not None and path.exists():
            replace()
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_TEMPORARY = re.compile(r"^\..+\.~(\d+)~\..*\.(tmp|partial)$")


def _temporary_prefix(path: Path) -> str:
    """`.NAME.~PID~.`: hidden, and naming the process that writes it, so a later run can tell the
    temporaries of a killed writer (its process gone) from those of one still writing."""
    return f".{path.name}.~{os.getpid()}~."


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Remove the temporary files and folders that killed writers left in `folder` (their process no
    longer exists); how many. Those of live processes, and anything else, are left alone."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


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
