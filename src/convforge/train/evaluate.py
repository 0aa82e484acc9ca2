"""Evaluation: top-1, top-5, per-class accuracy, the confusion matrix and calibration on one split.

Calibration is the expected calibration error of Guo et al. 2017 ("On Calibration of Modern Neural
Networks", 15 equal-width confidence bins) with the bins of its reliability diagram. It is computed
here from the confidences evaluation already holds (a few NumPy lines) rather than through
torchmetrics, which convforge does not otherwise need; tests/train/test_evaluate.py shows that both
give the same figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convforge.data.imageset import ImageSet
from convforge.data.loader import BatchLoader
from convforge.data.transforms import Preprocessing, eval_transform
from convforge.device import autocast_context


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
    calibration: dict[str, Any] | None = None  # {"ece", "bins": [{lower, upper, count, confidence, accuracy}]}
    predictions: np.ndarray | None = field(default=None, repr=False)  # (N,) predicted class
    confidences: np.ndarray | None = field(default=None, repr=False)  # (N,) probability of the prediction

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("predictions")
        data.pop("confidences")
        return data


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
    evaluated = predictions >= 0
    correct = predictions[evaluated] == np.asarray(imageset.labels)[evaluated]
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
        calibration=calibration(confidences[evaluated], correct),
        predictions=predictions,
        confidences=confidences,
    )


def calibration(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error and the reliability diagram's bins (Guo et al. 2017).

    Bin i holds the confidences in [i/bins, (i+1)/bins), the last bin also 1.0; ECE is the mean over
    bins of |accuracy - mean confidence|, weighted by the share of images in the bin."""
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.minimum((confidences * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidences, minlength=bins)
    correct_sum = np.bincount(index, weights=correct, minlength=bins)
    total = max(len(confidences), 1)
    ece = float(np.abs(correct_sum - confidence_sum).sum() / total)
    rows = [
        {"lower": i / bins, "upper": (i + 1) / bins, "count": int(count[i]),
         "confidence": float(confidence_sum[i] / count[i]), "accuracy": float(correct_sum[i] / count[i])}
        for i in range(bins) if count[i]
    ]  # fmt: skip
    return {"ece": ece, "bins": rows}
