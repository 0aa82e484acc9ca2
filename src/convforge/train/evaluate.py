"""Evaluation: top-1, top-5, per-class accuracy and the confusion matrix of a model on one split."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convforge.data.imageset import ImageSet
from convforge.data.loader import BatchLoader
from convforge.data.transforms import Preprocessing, eval_transform
from convforge.errors import DatasetError


@dataclass
class EvalResult:
    split: str
    images: int
    top1: float
    top5: float
    loss: float
    classes: list[str]
    per_class: dict[str, float | None]  # None: no image of that class in the split
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    topk: int = 5
    predictions: np.ndarray | None = field(default=None, repr=False)  # (N,) predicted class
    confidences: np.ndarray | None = field(default=None, repr=False)  # (N,) probability of the prediction

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("predictions")
        data.pop("confidences")
        return data


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    imageset: ImageSet,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    workers: int | None = None,
) -> EvalResult:
    """Evaluate `model` on every image of `imageset` with the model's own preprocessing."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    num_classes = len(imageset.classes)
    topk = min(5, num_classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    predictions = np.full(len(imageset), -1, dtype=np.int64)
    confidences = np.zeros(len(imageset), dtype=np.float32)
    loss_sum, top5_hits, seen = 0.0, 0, 0
    loader = BatchLoader(imageset, batch_size, shuffle=False, device=device, workers=workers)
    try:
        for images, labels, positions in loader.batches():
            with autocast_context(device, amp_dtype):
                logits = model(eval_transform(images, preprocessing))
            logits = logits.float()
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(f"model output {tuple(logits.shape)} does not match {num_classes} classes")
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            probabilities = logits.softmax(dim=1)
            confidence, predicted = probabilities.max(dim=1)
            top5_hits += (logits.topk(topk, dim=1).indices == labels[:, None]).any(dim=1).sum().item()
            confusion += torch.bincount(
                (labels * num_classes + predicted).cpu(), minlength=num_classes * num_classes
            ).view(num_classes, num_classes)
            positions = positions.cpu().numpy()
            predictions[positions] = predicted.cpu().numpy()
            confidences[positions] = confidence.cpu().numpy()
            seen += len(labels)
    finally:
        model.train(was_training)
    confusion_np = confusion.numpy()
    per_class_total = confusion_np.sum(axis=1)
    per_class = {
        name: (float(confusion_np[i, i] / per_class_total[i]) if per_class_total[i] else None)
        for i, name in enumerate(imageset.classes)
    }
    return EvalResult(
        split=imageset.name,
        images=seen,
        top1=float(np.trace(confusion_np) / max(seen, 1)),
        top5=float(top5_hits / max(seen, 1)),
        loss=float(loss_sum / max(seen, 1)),
        classes=list(imageset.classes),
        per_class=per_class,
        confusion=confusion_np.tolist(),
        topk=topk,
        predictions=predictions,
        confidences=confidences,
    )


def align_classes(imageset: ImageSet, model_classes: list[str], where: str) -> ImageSet:
    """Relabel `imageset` to the model's class order; a different set of classes is a user error."""
    if list(imageset.classes) == list(model_classes):
        return imageset
    if sorted(imageset.classes) != sorted(model_classes):
        missing = sorted(set(model_classes) - set(imageset.classes))
        extra = sorted(set(imageset.classes) - set(model_classes))
        raise DatasetError(
            f"{where} has {len(imageset.classes)} classes but the model was trained on {len(model_classes)}: "
            f"not in the data {missing[:10]}, not known to the model {extra[:10]}. Evaluate on data with the "
            "model's classes (the class folder names must match)"
        )
    to_model = np.array([model_classes.index(name) for name in imageset.classes], dtype=np.int64)
    relabeled = imageset.subset(np.arange(len(imageset)))
    relabeled.labels = to_model[imageset.labels]
    relabeled.classes = list(model_classes)
    return relabeled
