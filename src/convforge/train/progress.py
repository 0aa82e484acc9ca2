"""What training shows while it runs: a rich progress bar per epoch and one line per finished epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """Progress bar with loss, accuracy and images per second; silent when `enabled` is False."""

    def __init__(self, console: Console | None = None, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.enabled:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[speed]} img/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, loss="-", acc="-", speed="-")

    def update(self, step: int, loss: float, accuracy: float, images_per_second: float) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=step,
                loss=f"{loss:.4f}",
                acc=f"{accuracy:.3f}",
                speed=f"{images_per_second:,.0f}",
            )

    def end_epoch(self, record: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if not self.enabled:
            return
        parts = [
            f"epoch {record['epoch']}/{record['epochs']}",
            f"loss {record['train_loss']:.4f}",
            f"train acc {record['train_acc']:.3f}",
        ]
        if record.get("val_acc") is not None:
            parts.append(f"val acc {record['val_acc']:.3f}")
        if record.get("val_robust_acc") is not None:
            parts.append(f"val robust acc {record['val_robust_acc']:.3f}")
        parts += [f"{record['images_per_second']:,.0f} img/s", f"{record['epoch_seconds']:.1f}s"]
        if record.get("best"):
            parts.append("[green]best[/green]")
        self.console.print("  ".join(parts))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
