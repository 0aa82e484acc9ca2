"""The step hooks a training config asks for (train/step.py says what a hook is). Kept apart from
step.py, which the hooks themselves import, so that no module imports its own importers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from convforge.train.step import StepHook

if TYPE_CHECKING:
    from convforge.data.transforms import Preprocessing
    from convforge.train.config import TrainConfig


def build_step_hooks(
    config: TrainConfig, preprocessing: Preprocessing, classes: list[str], device: torch.device
) -> list[StepHook]:
    """The hooks a config asks for, in the order they run."""
    hooks: list[StepHook] = []
    if config.adv:
        from convforge.train.adversarial import Adversary

        hooks.append(Adversary(config, preprocessing))
    if config.teacher:
        from convforge.train.distill import Distiller

        hooks.append(Distiller(config, preprocessing, classes, device))
    return hooks
