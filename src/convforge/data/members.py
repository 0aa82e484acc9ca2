"""What a folder or an archive holds, by names that stay inside it.

A tar member's name is whatever its writer put there: `/etc/x.png`, `../../x.png` and `C:/x.png` are all
legal in the format, and joining one to a folder (to spill it to disk, or to take its first part as a
class) writes or reads outside that folder. Every place convforge reads member names goes through
`safe_member_name`: a name is kept only as a relative POSIX path without `..`; anything else is refused,
counted and named (`Refused`), never joined. tarfile's own `filter="data"` guards `extractall` only, and
convforge never extracts: it reads members one by one.

A folder is walked following symbolic links (a dataset folder of links to a data disk is common), but a
folder already walked is not walked again: a link back to an ancestor (`loop -> ..`) would otherwise
list the tree again and again under longer names, with the wrong classes, or never end.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from convforge.data.imageset import SkippedFile
from convforge.errors import DatasetError

OUTSIDE = "refused: its name points outside the archive (an absolute path, a drive or '..')"
LOOP = "not followed: a symbolic link to a folder already listed (a loop, or the same folder twice)"
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_member_name(name: str) -> str | None:
    """`name` as a relative POSIX path (`./a//b` -> `a/b`), or None when it points outside the archive:
    absolute, a Windows drive or UNC name, a `..` part, or a NUL (which no file name holds)."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or _DRIVE.match(name):
        return None
    if ".." in re.split(r"[\\/]", name):  # a backslash separates folders where the archive may be unpacked
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return "/".join(parts) if parts else None


def archive_entries(path: Path) -> tuple[dict[str, int], list[SkippedFile]]:
    """Every member of the tar at `path` whose name is safe and not hidden (file name -> size, folder
    name + '/' -> 0), and the members refused for their names."""
    entries: dict[str, int] = {}
    refused: list[SkippedFile] = []
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                name = safe_member_name(member.name)
                if name is None:
                    refused.append(SkippedFile(f"{path}: {member.name}", OUTSIDE))
                    continue
                if any(part.startswith(".") for part in PurePosixPath(name).parts):
                    continue
                if member.isfile():
                    entries[name] = member.size
                elif member.isdir():
                    entries[name + "/"] = 0
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cannot read archive {path}: {exc}") from None
    return entries, refused


def archive_members(path: str, wanted: set[str], strip: str = "") -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the wanted members of the tar at `path`, in archive order (one sequential pass);
    names as `archive_entries` gives them, less the common top folder `strip`."""
    with tarfile.open(path) as archive:
        for member in archive:
            name = safe_member_name(member.name)
            if name is None or not member.isfile():
                continue
            name = name[len(strip) :] if strip and name.startswith(strip) else name
            if name in wanted:
                handle = archive.extractfile(member)
                yield name, handle.read() if handle else b""


def folder_entries(root: Path) -> tuple[dict[str, tuple[int, int]], list[SkippedFile]]:
    """Every file under root (relative POSIX path -> (size, mtime_ns)) and every folder (path + '/' ->
    (0, 0)), following symbolic links but never into a folder already walked; hidden entries skipped.
    The links not followed, as skipped entries."""
    entries: dict[str, tuple[int, int]] = {}
    not_followed: list[SkippedFile] = []
    seen = {_identity(root)}
    for directory, subdirs, files in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(d for d in subdirs if not d.startswith(".")):
            identity = _identity(Path(directory) / name)
            if identity in seen:
                not_followed.append(SkippedFile(os.path.join(directory, name), LOOP))
                continue
            seen.add(identity)
            kept.append(name)
        subdirs[:] = kept
        if Path(directory) != root:
            entries[PurePosixPath(Path(directory).relative_to(root)).as_posix() + "/"] = (0, 0)
        for name in files:
            if name.startswith("."):
                continue
            full = os.path.join(directory, name)
            entries[PurePosixPath(Path(full).relative_to(root)).as_posix()] = file_stat(full)
    return entries, not_followed


def _identity(folder: Path) -> tuple[int, int]:
    try:
        stat = os.stat(folder)
        return stat.st_dev, stat.st_ino
    except OSError:  # a dangling link: nothing under it to walk twice
        return -1, hash(str(folder))


def file_stat(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of a file, or (-1, -1) when it cannot be read."""
    try:
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return -1, -1
