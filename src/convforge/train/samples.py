"""A small sample of evaluated images with their predictions, kept for the report (mistakes first)."""

from __future__ import annotations

import json

import numpy as np

from convforge.data.imageset import ImageSet
from convforge.runs import Run, atomic_write_json
from convforge.train.evaluate import EvalResult

SAMPLES_FILE = "samples.npz"
SAMPLES_META = "samples.json"


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
    images = split.gather(positions)
    path = run.artifacts / SAMPLES_FILE
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        images=images,
        labels=split.labels[positions],
        predictions=result.predictions[positions],
        confidences=result.confidences[positions],
    )
    tmp.replace(path)
    atomic_write_json(run.artifacts / SAMPLES_META, {"split": split.name, "classes": split.classes})


def load_prediction_samples(run: Run) -> dict | None:
    path = run.path / "artifacts" / SAMPLES_FILE
    meta = run.path / "artifacts" / SAMPLES_META
    if not path.is_file() or not meta.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        samples = {key: data[key] for key in data.files}
    samples.update(json.loads(meta.read_text()))
    return samples
