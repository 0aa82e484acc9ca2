"""Faithfulness, localisation, sanity and drift metrics: exact cases and agreement with SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from scipy.stats import spearmanr

from convforge.errors import ConfigError
from convforge.explain.metrics import (
    auc,
    average_ranks,
    deletion_insertion,
    energy_inside,
    explanation_drift,
    localisation,
    pointing_game,
    randomization_check,
    randomized_copy,
    spearman,
)


class BrightnessInABox(torch.nn.Module):
    """Class 1's logit is the mean of the top-left 4x4 box, class 0's is its negative: the only
    pixels that matter are known, so a perfect map and a wrong one have known AUCs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = x[:, :, :4, :4].mean(dim=(1, 2, 3)) * 10
        return torch.stack([-box, box], dim=1)


def test_average_ranks_and_spearman_agree_with_scipy():
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(5, 300, generator=generator)
    b = a + 0.5 * torch.rand(5, 300, generator=generator)
    a[:, :100] = 0.0  # ties, as rectified maps have
    b[:, 50:120] = 0.25
    for i in range(5):
        expected = spearmanr(a[i].numpy(), b[i].numpy()).statistic
        assert float(spearman(a[i : i + 1], b[i : i + 1])[0]) == pytest.approx(expected, abs=1e-9)
    from scipy.stats import rankdata

    np.testing.assert_allclose(average_ranks(a).numpy(), rankdata(a.numpy(), axis=1))
    assert float(spearman(torch.ones(1, 10), a[:1, :10])[0]) == 0.0  # a constant map has no ranking


def test_auc_is_the_trapezoid_rule():
    assert float(auc(torch.tensor([1.0, 1.0, 1.0]))) == 1.0
    assert float(auc(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(0.25)
    assert float(auc(torch.tensor([0.0, 0.5, 1.0]))) == pytest.approx(0.5)


def test_deletion_and_insertion_reward_the_map_that_points_at_the_evidence():
    model = BrightnessInABox()
    images = torch.full((2, 3, 16, 16), 1.0)  # bright box: class 1 with probability ~1
    right = torch.zeros(2, 16, 16)
    right[:, :4, :4] = 1.0
    wrong = torch.arange(256.0).view(1, 16, 16).expand(2, -1, -1)  # the box's pixels come last
    good = deletion_insertion(model, images, right, steps=16, insertion_baseline="zeros")
    bad = deletion_insertion(model, images, wrong, steps=16, insertion_baseline="zeros")
    # deleting the box first kills the class within the first step (16 of 256 pixels)
    assert good.deletion_curve[1] == pytest.approx(0.5, abs=1e-6)
    assert good.deletion_auc < 0.55 and bad.deletion_auc > 0.9
    assert good.insertion_auc > 0.95 and bad.insertion_auc < 0.65
    assert good.deletion_curve[0] == pytest.approx(float(torch.sigmoid(torch.tensor(20.0))), abs=1e-6)


def test_baselines_and_bad_arguments():
    model = BrightnessInABox()
    images = torch.rand(1, 3, 16, 16)
    maps = torch.rand(1, 16, 16)
    for baseline in ("zeros", "blur", "mean"):
        result = deletion_insertion(model, images, maps, deletion_baseline=baseline, steps=4)
        assert 0.0 <= result.deletion_auc <= 1.0
    with pytest.raises(ConfigError, match="unknown baseline 'blurr'.*Did you mean: blur"):
        deletion_insertion(model, images, maps, deletion_baseline="blurr")
    with pytest.raises(ConfigError, match="do not match images"):
        deletion_insertion(model, images, maps[:, :8])


def test_pointing_game_and_energy_on_known_masks():
    masks = torch.zeros(3, 8, 8, dtype=torch.uint8)
    masks[:, 2:4, 2:4] = 1
    maps = torch.zeros(3, 8, 8)
    maps[0, 3, 3] = 1.0  # peak on the object
    maps[1, 5, 5] = 1.0  # two pixels off the corner, diagonally
    maps[2, 4, 4] = 1.0  # adjacent diagonally
    assert pointing_game(maps, masks).tolist() == [True, False, False]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True, False, True]
    spread = torch.ones(1, 8, 8)
    assert float(energy_inside(spread, masks[:1])[0]) == pytest.approx(4 / 64)
    assert float(energy_inside(torch.zeros(1, 8, 8), masks[:1])[0]) == 0.0
    summary = localisation(maps, masks)
    assert summary.pointing_game == pytest.approx(1 / 3) and summary.images == 3


def test_randomisation_flags_a_method_that_ignores_the_weights():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4).eval()
    images = torch.randn(4, 3, 64, 64)
    copy = randomized_copy(model, seed=1)
    for before, after in zip(model.parameters(), copy.parameters(), strict=True):
        # every tensor with structure is redrawn; constant ones (a fresh BN's ones) carry none and stay
        assert torch.equal(before, after) == bool(before.numel() == 1 or before.std() == 0)
        if before.numel() > 100:
            assert float(after.detach().std()) == pytest.approx(float(before.detach().std()), rel=0.1)
    eigencam = randomization_check(model, images, "eigencam", seed=1)  # no gradient: no constant maps
    assert eigencam.per_image.shape == (4,) and eigencam.constant_maps == 0 and eigencam.compared == 4
    assert -1.0 <= eigencam.rank_correlation <= 1.0
    # an "explanation" that only looks at the image (its brightness) is the same for any weights
    bright = randomization_check(IgnoresWeights(model), images, "rise", rise_masks=32, seed=1)
    assert bright.rank_correlation > 0.99 and not bright.passed


class IgnoresWeights(torch.nn.Module):
    """Logits that depend on the image through a fixed function only (weights scaled by zero)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.scale = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        box = x[:, :, 8:24, 8:24].mean(dim=(1, 2, 3), keepdim=True)
        logits = self.model(x) * self.scale * 0
        return logits + torch.cat([box, -box, box * 0, box * 0], dim=1).flatten(1)


def test_drift_of_a_model_against_itself_is_none_and_against_a_random_model_is_large():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4).eval()
    images = torch.randn(3, 3, 64, 64)
    masks = torch.zeros(3, 64, 64)
    masks[:, 16:48, 16:48] = 1
    same = explanation_drift(model, model, images, "layercam", masks=masks)
    assert same.rank_correlation == pytest.approx(1.0) and same.pointing_game_change == 0.0
    other = explanation_drift(model, randomized_copy(model, 3), images, "layercam")
    assert other.rank_correlation < 0.9 and other.pointing_game_change is None
    assert set(other.to_dict()) >= {"method", "rank_correlation", "per_image", "images"}


def test_pointing_game_scores_a_plateau_by_the_share_of_tied_maxima_on_the_object():
    from convforge.explain.metrics import localisation, pointing_game

    maps = torch.zeros(2, 8, 8)
    maps[0, :4, :4] = 1.0  # a 16-pixel plateau, as a 2x2 map upsampled to 8x8
    maps[1, 6, 6] = 1.0  # a unique peak
    masks = torch.zeros(2, 8, 8)
    masks[:, 2:, 2:] = 1  # the plateau's corner (top-left) is off the object; 4 of its 16 pixels are on it
    assert pointing_game(maps, masks).tolist() == [0.25, 1.0]
    located = localisation(maps, masks)
    assert located.pointing_game == pytest.approx(0.625) and located.tied_pixels == pytest.approx(8.5)


def test_sanity_check_leaves_constant_maps_out_and_says_when_too_few_remain(monkeypatch):
    import timm

    from convforge.explain import metrics

    model = timm.create_model("resnet18", num_classes=5).eval()
    images = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    honest = metrics.randomization_check(model, images, "gradcam")
    assert honest.constant_maps + honest.compared == 10
    # a randomised model whose gradients vanish: every randomised map is constant
    original = metrics.randomized_copy

    def dead_copy(model, seed=0):
        clone = original(model, seed)
        torch.nn.init.zeros_(clone.fc.weight)
        return clone

    monkeypatch.setattr(metrics, "randomized_copy", dead_copy)
    dead = metrics.randomization_check(model, images, "gradcam", layer="layer3")
    assert dead.constant_maps == 10 and dead.compared == 0
    assert dead.rank_correlation is None and dead.passed is None  # not "passed with correlation 0"
    assert torch.isnan(dead.per_image).all()
