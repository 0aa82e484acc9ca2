"""What `train` returns, and how a run names the command that made it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from convforge.runs import Run
from convforge.train.evaluate import EvalResult


@dataclass
class TrainResult:
    run: Run
    test: EvalResult | None
    best_epoch: int
    best_val_top1: float | None
    epochs: int
    wall_seconds: float
    skipped_files: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run.path),
            "test": self.test.to_dict() if self.test else None,
            "best_epoch": self.best_epoch,
            "best_val_top1": self.best_val_top1,
            "epochs": self.epochs,
            "wall_seconds": self.wall_seconds,
            "skipped_files": self.skipped_files,
        }


def invoked_command() -> str:
    """The command line that started this process, for run.json (`python-api` when not the CLI)."""
    return " ".join(["convforge", *sys.argv[1:]]) if sys.argv and "convforge" in sys.argv[0] else "python-api"
