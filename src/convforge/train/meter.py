"""An epoch's running figures: loss and accuracy sums kept on the device (reading them forces a
synchronisation, so the loop reads them only every few steps), throughput, and the points of the
report's loss curve (`CURVE_POINTS_PER_EPOCH` a epoch, each the mean of the steps since the last)."""

from __future__ import annotations

import time
from typing import Any

import torch

from convforge.train.distributed import SINGLE, World, sum_across
from convforge.train.position import EpochPosition

CURVE_POINTS_PER_EPOCH = 10  # "step" records in metrics.jsonl


class EpochMeter:
    def __init__(self, position: EpochPosition, steps: int, device: torch.device):
        self.steps = steps
        self.loss_sum = torch.tensor(position.loss_sum, device=device)
        self.correct = torch.tensor(position.correct, device=device, dtype=torch.long)
        self.seen = self.seen_before = position.seen
        self.started = time.perf_counter()
        self.curve_every = max(1, round(steps / CURVE_POINTS_PER_EPOCH))
        self._window = (position.step, 0.0, 0, 0)  # first step, loss sum, correct, seen at the last point

    def add(self, loss: torch.Tensor, logits: torch.Tensor, hard_labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * len(hard_labels)
        self.correct += (logits.detach().argmax(dim=1) == hard_labels).sum()
        self.seen += len(hard_labels)

    def curve_point(self, epoch: int, step: int) -> dict[str, Any] | None:
        """The loss-curve record due at `step` (every `curve_every` steps; the epoch's last window
        absorbs a short remainder), or None."""
        steps = self.steps
        if not (step == steps or (step % self.curve_every == 0 and steps - step >= self.curve_every // 2)):
            return None
        first_step, loss_before, correct_before, seen_before = self._window
        loss_now, correct_now = self.loss_sum.item(), int(self.correct.item())
        self._window = (step, loss_now, correct_now, self.seen)
        images = self.seen - seen_before
        if not images:
            return None
        return {"kind": "step", "epoch": epoch + 1, "step": step, "steps": step - first_step,
                "loss": (loss_now - loss_before) / images, "acc": (correct_now - correct_before) / images}  # fmt: skip

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def rates(self) -> tuple[float, float, float]:
        """Mean loss, accuracy and images per second of the epoch so far."""
        seen = max(self.seen, 1)
        speed = (self.seen - self.seen_before) / max(self.elapsed(), 1e-9)
        return self.loss_sum.item() / seen, self.correct.item() / seen, speed

    def position(self, step: int) -> EpochPosition:
        return EpochPosition(step, self.loss_sum.item(), int(self.correct.item()), self.seen)

    def summary(self, world: World = SINGLE) -> dict[str, Any]:
        """The epoch's figures; over several processes, summed over all of them (every rank gets the same)."""
        loss, accuracy, speed = self.rates()
        if world.distributed:
            seen = self.seen - self.seen_before
            loss_sum, correct, images, this_epoch = sum_across(
                world, [self.loss_sum.item(), self.correct.item(), max(self.seen, 1), seen])
            loss, accuracy, speed = loss_sum / images, correct / images, this_epoch / max(self.elapsed(), 1e-9)
        return {"train_loss": loss, "train_acc": accuracy, "images_per_second": speed, "epoch_seconds": self.elapsed()}
