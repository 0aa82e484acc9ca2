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
from convforge.device import autocast_context, precision_name
from convforge.errors import DatasetError
from convforge.train.distributed import SINGLE, World, gather_by_position


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
    precision: str = "float32"  # what the forward ran in: float32, bfloat16 (autocast), int8 (a quantized file)
    predictions: np.ndarray | None = field(default=None, repr=False)  # (N,) predicted class
    confidences: np.ndarray | None = field(default=None, repr=False)  # (N,) probability of the prediction

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("predictions")
        data.pop("confidences")
        return data


def evaluate(
    model: nn.Module,
    imageset: ImageSet,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    workers: int | None = None,
    world: World = SINGLE,
) -> EvalResult:
    """Evaluate `model` on every image of `imageset` with the model's own preprocessing. In a distributed
    `world` every rank evaluates its share (every world-th image) and the per-image results are gathered:
    every rank returns what one process evaluating the whole split returns. `amp_dtype` runs the forward
    under autocast (the result's `precision` says so); figures convforge reports use None (float32), the
    rule of `device.resolve_inference_amp`. A model that declares its own `precision` (an INT8 ONNX
    file) is recorded as that."""
    if len(imageset) == 0:  # every image skipped as unreadable: a top-1 of 0 on 0 images is not a result
        raise DatasetError(f"the {imageset.name} split has no readable image to evaluate (every one was skipped "
                           "as unreadable: see the skipped files); fix or replace them, or evaluate another split")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    share = np.arange(len(imageset))[world.rank :: world.size] if world.distributed else None
    try:
        columns = _per_image(model, imageset if share is None else imageset.subset(share), preprocessing,
                             batch_size, device, amp_dtype, workers)  # fmt: skip
    finally:
        model.train(was_training)
    if share is not None:
        columns = gather_by_position(world, len(imageset), share, columns)
    result = _summarise(imageset, columns)
    result.precision = getattr(model, "precision", None) or precision_name(amp_dtype)
    return result


@torch.no_grad()
def _per_image(model, imageset: ImageSet, preprocessing, batch_size, device, amp_dtype, workers) -> dict:
    """Prediction, its probability, the loss and whether the label is in the top 5, per image of the
    split (prediction -1: not evaluated, an image that could not be decoded)."""
    num_classes = len(imageset.classes)
    topk = min(5, num_classes)
    columns = {"predictions": np.full(len(imageset), -1, dtype=np.int64),
               "confidences": np.zeros(len(imageset), dtype=np.float32),
               "losses": np.zeros(len(imageset), dtype=np.float64),
               "top5": np.zeros(len(imageset), dtype=bool)}  # fmt: skip
    loader = BatchLoader(imageset, batch_size, shuffle=False, device=device, workers=workers)
    for images, labels, positions in loader.batches():
        with autocast_context(device, amp_dtype):
            logits = model(eval_transform(images, preprocessing))
        logits = logits.float()
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise ValueError(f"model output {tuple(logits.shape)} does not match {num_classes} classes")
        confidence, predicted = logits.softmax(dim=1).max(dim=1)
        positions = positions.cpu().numpy()
        columns["predictions"][positions] = predicted.cpu().numpy()
        columns["confidences"][positions] = confidence.cpu().numpy()
        columns["losses"][positions] = F.cross_entropy(logits, labels, reduction="none").double().cpu().numpy()
        columns["top5"][positions] = (logits.topk(topk, dim=1).indices == labels[:, None]).any(dim=1).cpu().numpy()
    return columns


def _summarise(imageset: ImageSet, columns: dict[str, np.ndarray]) -> EvalResult:
    num_classes = len(imageset.classes)
    predictions, confidences = columns["predictions"], columns["confidences"]
    evaluated = predictions >= 0
    labels = np.asarray(imageset.labels)[evaluated]
    seen = int(evaluated.sum())
    if seen == 0:  # a streamed split whose every image failed to decode while it was read
        raise DatasetError(f"none of the {len(imageset)} images of the {imageset.name} split could be decoded; "
                           "nothing was evaluated (see the skipped files)")
    correct = predictions[evaluated] == labels
    confusion = np.bincount(labels * num_classes + predictions[evaluated], minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    per_class_total = confusion.sum(axis=1)
    per_class = {
        name: (float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else None)
        for i, name in enumerate(imageset.classes)
    }
    return EvalResult(
        split=imageset.name,
        images=seen,
        top1=float(np.trace(confusion) / max(seen, 1)),
        top5=float(columns["top5"][evaluated].sum() / max(seen, 1)),
        loss=float(columns["losses"][evaluated].sum() / max(seen, 1)),
        classes=list(imageset.classes),
        per_class=per_class,
        confusion=confusion.tolist(),
        topk=min(5, num_classes),
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
