"""The parts of one training step that are not the loop: hooks that join a step, and the
backward-and-step.

A step hook changes a step without another `if` in the engine: it may transform the batch before
the forward pass (adversarial training replaces it with its attacked copy), add a term to the loss
(distillation adds the teacher's and moves weight off the labels), and report metrics at each
validation. Hooks run in list order; the engine builds the list from the config (train/hooks.py).
Distillation (train/distill.py) lives in `train/`: compress only names the teacher and calls `train`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from convforge.data.imageset import ImageSet


class StepHook:
    """A part of every training step; each method's default leaves the step as it is."""

    def transform_inputs(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:  # fmt: skip
        """The batch the model trains on (normalised, augmented), under the run's autocast."""
        return inputs

    def hard_label_weight(self) -> float:
        """The weight of the loss on the labels (distillation moves the rest onto the teacher's)."""
        return 1.0

    def extra_loss(self, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """A term added to the loss of this batch (float32 scalar), or None."""
        return None

    def validation_metrics(self, model: nn.Module, split: ImageSet, device: torch.device, seed: int) -> dict[str, Any]:
        """Extra fields of the epoch's metrics record, computed on the validation split."""
        return {}

    def epoch_metrics(self) -> dict[str, Any]:
        """Extra fields of the epoch's metrics record gathered during its steps (then reset)."""
        return {}


def backward_and_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    parameters: Iterable[nn.Parameter],
    clip_grad: float | None,
) -> None:
    """Zero the gradients, backward, clip, step. One path for every precision: a disabled GradScaler
    (bf16, fp32) passes the loss and the step through unchanged; with fp16 it scales the loss, unscales
    the gradients before clipping and skips a step whose gradients overflowed."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parameters, clip_grad)
    scaler.step(optimizer)
    scaler.update()
