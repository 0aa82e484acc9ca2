"""Errors a user can cause, each with a message that says what to do.

The CLI prints a `UserError` without a traceback and exits with status 2; anything else is a bug
in convforge and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Base class for mistakes the user can fix: bad paths, bad data, unknown names, bad options."""


class DatasetError(UserError):
    """A dataset spec, folder or file cannot be used as given."""


class ImageDecodeError(DatasetError):
    """An image file cannot be decoded safely; the message names the file."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}")


class ModelNotFoundError(UserError):
    """An architecture name that neither timm nor convforge knows."""


class CheckpointError(UserError):
    """A checkpoint or run folder that is missing, truncated, tampered with or does not fit the model."""


class RunFolderError(UserError):
    """A path that should be a run folder and is not one."""


class ConfigError(UserError):
    """An option value that cannot work (negative epochs, unknown optimizer, ...)."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def did_you_mean(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest candidates, or '' when nothing is close."""
    pool = list(candidates)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.6)
    if not close:
        lowered = name.lower()
        close = [c for c in pool if lowered in c.lower()][:n]
    return f" Did you mean: {', '.join(close)}?" if close else ""
