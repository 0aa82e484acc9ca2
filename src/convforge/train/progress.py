"""What training shows while it runs: a rich progress bar per epoch and one line per finished epoch.

Without a terminal (output redirected to a file, a CI log, nohup) rich draws no bar, so the same
figures are printed as plain lines instead: one every `log_every` steps or `log_seconds` seconds,
whichever comes first, the way timm's train.py logs every `--log-interval` batches.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """Progress bar with loss, accuracy and images per second; silent when `enabled` is False."""

    def __init__(
        self,
        console: Console | None = None,
        enabled: bool = True,
        *,
        log_every: int = 50,
        log_seconds: float = 30.0,
    ):
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.plain = not self.console.is_terminal
        self.log_every, self.log_seconds = log_every, log_seconds
        self._progress: Progress | None = None
        self._task = None
        self._epoch = (0, 0, 0)  # epoch, epochs, steps
        self._started = self._last_line = 0.0

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.enabled:
            return
        self._epoch = (epoch, epochs, steps)
        self._started = self._last_line = time.monotonic()
        if self.plain:
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
        if self.enabled and self.plain:
            self._plain_line(step, loss, accuracy, images_per_second)
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=step,
                loss=f"{loss:.4f}",
                acc=f"{accuracy:.3f}",
                speed=f"{images_per_second:,.0f}",
            )

    def _plain_line(self, step: int, loss: float, accuracy: float, images_per_second: float) -> None:
        epoch, epochs, steps = self._epoch
        now = time.monotonic()
        if step >= steps or (step % self.log_every and now - self._last_line < self.log_seconds):
            return  # the epoch's own line follows at its end
        self._last_line = now
        eta = round((now - self._started) / step * (steps - step))
        self.console.print(
            f"epoch {epoch}/{epochs}  step {step}/{steps}  loss {loss:.4f}  acc {accuracy:.3f}  "
            f"{images_per_second:,.0f} img/s  epoch ETA {eta // 60}:{eta % 60:02d}",
            highlight=False,
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
        if record.get("teacher_seconds") is not None:
            share = record["teacher_seconds"] / max(record["epoch_seconds"], 1e-9)
            parts.append(f"(teacher {record['teacher_seconds']:.1f}s, {share:.0%})")
        if record.get("best"):
            parts.append("[green]best[/green]")
        self.console.print("  ".join(parts))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
