"""Small samples kept in a run folder for the report: evaluated images with their predictions
(mistakes first), and the first training batch as augmented. Beside `runs.py`, below `train/` and
`report/`: training and evaluation write them, the report reads them."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import numpy as np
import torch

from convforge.data.imageset import ImageSet
from convforge.data.transforms import Preprocessing
from convforge.files import atomic_write_bytes, atomic_write_json
from convforge.runs import AUGMENTED_FILE, SAMPLES_FILE, SAMPLES_META, Run

if TYPE_CHECKING:
    from convforge.train.evaluate import EvalResult


def pick_samples(
    labels: np.ndarray, predictions: np.ndarray, confidences: np.ndarray, count: int
) -> np.ndarray:
    """Positions to show: the most confident mistakes first, then correct predictions, spread over classes."""
    evaluated = predictions >= 0
    wrong = np.flatnonzero(evaluated & (predictions != labels))
    right = np.flatnonzero(evaluated & (predictions == labels))
    wrong = wrong[np.argsort(-confidences[wrong], kind="stable")]
    # Correct ones round-robin over classes, so every class shows up.
    by_class = [right[labels[right] == c] for c in np.unique(labels[right])] if len(right) else []
    interleaved = [
        group[i]
        for i in range(max((len(g) for g in by_class), default=0))
        for group in by_class
        if i < len(group)
    ]
    n_wrong = min(len(wrong), count // 2 if len(interleaved) >= count // 2 else count)
    chosen = list(wrong[:n_wrong]) + interleaved[: count - n_wrong]
    return np.asarray(chosen[:count], dtype=np.int64)


def save_prediction_samples(run: Run, split: ImageSet, result: EvalResult, count: int = 32) -> None:
    """Write artifacts/samples.npz (images, labels, predictions, confidences) and samples.json."""
    if result.predictions is None or split.streaming:
        return
    positions = pick_samples(split.labels, result.predictions, result.confidences, count)
    if not len(positions):
        return
    _write_npz(
        run.artifacts / SAMPLES_FILE,
        images=split.gather(positions),
        labels=split.labels[positions],
        predictions=result.predictions[positions],
        confidences=result.confidences[positions],
    )
    atomic_write_json(run.artifacts / SAMPLES_META, {"split": split.name, "classes": split.classes})


def load_prediction_samples(run: Run) -> dict | None:
    path, meta = run.artifact(SAMPLES_FILE), run.artifact(SAMPLES_META)
    if not path.is_file() or not meta.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        samples = {key: data[key] for key in data.files}
    samples.update(json.loads(meta.read_text()))
    return samples


def save_augmented_samples(
    run: Run, inputs: torch.Tensor, targets: torch.Tensor, preprocessing: Preprocessing, count: int = 32
) -> None:
    """The first training batch as the model saw it (augmented, mixed), back in uint8 pixels, for the
    report's grid: artifacts/augmented.npz (images NHWC, labels: the largest share of each target)."""
    x = inputs[:count].detach().float().cpu()
    mean = torch.tensor(preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, -1, 1, 1)
    pixels = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    labels = targets[:count] if targets.ndim == 1 else targets[:count].argmax(dim=1)
    _write_npz(run.artifacts / AUGMENTED_FILE, images=pixels.contiguous().numpy(), labels=labels.cpu().numpy())


def load_augmented_samples(run: Run) -> dict | None:
    path = run.artifact(AUGMENTED_FILE)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _write_npz(path, **arrays: np.ndarray) -> None:
    """Compressed arrays, whole or not at all."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
