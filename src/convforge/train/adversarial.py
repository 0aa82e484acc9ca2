"""Adversarial training inside the training engine: each batch is replaced by its attacked copy.

`--adv pgd`: PGD under L-inf from a random start (Madry et al. 2018, arXiv:1706.06083), default
7 steps of 2.5 eps / steps. `--adv fgsm`: one step of 1.25 eps from a uniform random start (Wong,
Rice & Kolter 2020, "Fast is better than free", arXiv:2001.03994), about as cheap as normal
training plus one backward pass. The attack runs on [0, 1] pixels (the batch is un-normalised,
attacked and normalised again), in the model's training mode as in both papers, under the run's
autocast. Each epoch also reports the robust accuracy on part of the validation split, under PGD
with the training budget, in eval mode and full precision.
"""

from __future__ import annotations

import torch
from torch import nn

from convforge.data.imageset import ImageSet
from convforge.data.sample import spread_positions
from convforge.data.transforms import Preprocessing, normalize, pixel_transform, unnormalize
from convforge.models.prepared import frozen_parameters, model_prepared
from convforge.robust.attacks import PixelSpaceModel, pgd
from convforge.train.config import TrainConfig
from convforge.train.step import StepHook


class Adversary(StepHook):
    """The first step hook: attacks each training batch and reports robust accuracy at validation."""

    def __init__(self, config: TrainConfig, preprocessing: Preprocessing):
        self.kind = config.adv
        self.eps = config.adv_eps
        self.steps = 1 if config.adv == "fgsm" else config.adv_steps
        default_step = 1.25 * self.eps if config.adv == "fgsm" else 2.5 * self.eps / self.steps
        self.step_size = config.adv_step_size or default_step
        self.val_steps = max(config.adv_steps, 7)
        self.val_images = config.adv_val_images
        self.preprocessing = preprocessing

    def transform_inputs(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:  # fmt: skip
        """The attacked copy of a normalised training batch, normalised again."""
        pixels = unnormalize(inputs.detach(), self.preprocessing)
        pixel_model = PixelSpaceModel(model, self.preprocessing.mean, self.preprocessing.std)
        with frozen_parameters(model):  # training mode stays on: the attack needs input gradients only
            adversarial = pgd(
                pixel_model, pixels, labels, self.eps, steps=self.steps, step_size=self.step_size,
                random_start=True, early_stop=False, generator=generator,
            )  # fmt: skip
        return normalize(adversarial, self.preprocessing)

    def validation_metrics(self, model: nn.Module, split: ImageSet, device: torch.device, seed: int) -> dict:
        return {"val_robust_acc": self.robust_accuracy(model, split, device, seed)}

    def robust_accuracy(self, model: nn.Module, split: ImageSet, device: torch.device, seed: int) -> float:
        """Accuracy under PGD (the training budget, at least 7 steps) on up to `val_images` images
        spread over `split`."""
        positions = spread_positions(len(split), self.val_images)
        images = pixel_transform(torch.from_numpy(split.gather(positions)).to(device), self.preprocessing)
        labels = torch.from_numpy(split.labels[positions]).to(device)
        pixel_model = PixelSpaceModel(model, self.preprocessing.mean, self.preprocessing.std)
        generator = torch.Generator().manual_seed(seed)
        correct = 0
        with model_prepared(model):
            for start in range(0, len(images), 256):
                batch, batch_labels = images[start : start + 256], labels[start : start + 256]
                adversarial = pgd(pixel_model, batch, batch_labels, self.eps, steps=self.val_steps,
                                  generator=generator)  # fmt: skip
                with torch.no_grad():
                    correct += int((pixel_model(adversarial).argmax(dim=1) == batch_labels).sum())
        return correct / max(len(images), 1)
