"""Evaluation figures that a reference library also computes agree with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convforge.train.evaluate import calibration


def test_expected_calibration_error_equals_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5000, 7, generator=generator, dtype=torch.float64) * 2.5
    target = torch.randint(0, 7, (5000,), generator=generator)
    probabilities = logits.softmax(dim=1)
    confidence, predicted = probabilities.max(dim=1)
    ours = calibration(confidence.numpy(), (predicted == target).numpy())
    reference = torchmetrics.functional.classification.multiclass_calibration_error(
        probabilities, target, num_classes=7, n_bins=15, norm="l1"
    )
    assert ours["ece"] == pytest.approx(float(reference), rel=1e-6)  # torchmetrics sums in float32
    assert sum(b["count"] for b in ours["bins"]) == 5000


def test_calibration_of_a_perfectly_calibrated_and_an_overconfident_model():
    confidences = np.repeat([0.25, 0.75], 400)
    calibrated = np.concatenate([np.arange(400) < 100, np.arange(400) < 300])  # 25% and 75% right
    assert calibration(confidences, calibrated)["ece"] == pytest.approx(0.0, abs=1e-12)
    overconfident = calibration(np.full(100, 0.99), np.arange(100) < 60)  # 99% sure, 60% right
    assert overconfident["ece"] == pytest.approx(0.39)
    (last_bin,) = overconfident["bins"]
    assert last_bin["upper"] == 1.0 and last_bin["accuracy"] == pytest.approx(0.6)
