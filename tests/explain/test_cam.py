"""Explainer behaviour: targets, chunking, modes and hooks restored, and the messages for bad input."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import timm
import torch

from convforge.errors import ConfigError
from convforge.explain import METHODS, Explainer, explain
from tests.helpers import assert_close_scaled

pytestmark = pytest.mark.xdist_group("cam")  # its module fixtures are built once, on one worker


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=6).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_normalised_maps_at_input_resolution_and_the_logits(model, images, method):
    explainer = Explainer(model, rise_masks=64)
    result = explainer(images, method)
    assert result.maps.shape == (4, 48, 48) and result.maps.dtype == torch.float32
    assert float(result.maps.amin()) == 0.0 and float(result.maps.amax()) <= 1.0
    with torch.no_grad():
        expected = model(images)
    assert_close_scaled(result.logits, expected, rtol=1e-4)
    assert result.targets.tolist() == expected.argmax(1).tolist()


def test_targets_one_class_for_all_or_one_per_image(model, images):
    explainer = Explainer(model)
    assert explainer(images, "gradcam", targets=2).targets.tolist() == [2, 2, 2, 2]
    per_image = explainer(images, "gradcam", targets=[0, 1, 2, 3])
    assert per_image.targets.tolist() == [0, 1, 2, 3]
    # each map is the one for its own class: the same as explaining that image alone for that class
    alone = explainer(images[2:3], "gradcam", targets=2)
    torch.testing.assert_close(per_image.maps[2], alone.maps[0], rtol=1e-4, atol=1e-5)


def test_a_batch_larger_than_the_memory_budget_is_chunked_with_the_same_result(model, images):
    whole = Explainer(model)(images, "gradcam")
    explainer = Explainer(model)
    layer = explainer.target_layer(images)
    one_image = images[0].numel() * 4 + 3 * layer.bytes_peak + layer.bytes_after
    chunked = Explainer(model, max_memory=one_image + 1)(images, "gradcam")  # one image per pass
    torch.testing.assert_close(chunked.maps, whole.maps, rtol=1e-4, atol=1e-5)
    scorecam = Explainer(model)(images[:2], "scorecam")
    small = Explainer(model, max_memory=4 * one_image)(images[:2], "scorecam")
    torch.testing.assert_close(small.maps, scorecam.maps, rtol=1e-4, atol=1e-5)


def test_an_image_that_cannot_fit_is_refused_with_the_size_it_needs(model, images):
    with pytest.raises(ConfigError, match=r"one image needs about \d+ MiB and the memory budget is 0 MiB"):
        Explainer(model, max_memory=1000)(images, "gradcam")


def test_a_model_in_training_mode_is_explained_in_eval_mode_and_given_back_in_training_mode(images):
    model = timm.create_model("resnet18", num_classes=6)
    model.train()
    running_mean = model.bn1.running_mean.clone()
    result = explain(model, images, "gradcam")
    assert model.training and all(m.training for m in model.modules())
    torch.testing.assert_close(model.bn1.running_mean, running_mean)  # no batch statistics were updated
    model.eval()
    torch.testing.assert_close(explain(model, images, "gradcam").maps, result.maps)


def test_hooks_are_released_and_a_thousand_calls_do_not_grow_memory():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    )
    images = torch.randn(1, 3, 16, 16)
    explainer = Explainer(model)
    for _ in range(20):  # warm up allocator and caches
        explainer(images, "gradcam")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(1000):
        explainer(images, ("gradcam", "eigencam")[i % 2])
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 256 * 1024, f"{growth} bytes of Python memory kept after 1,000 calls"
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_errors_say_what_is_wrong(model, images):
    with pytest.raises(ConfigError, match=r"target class 6 is outside the model's 6 classes \(0 to 5\)"):
        explain(model, images, targets=6)
    with pytest.raises(ConfigError, match="3 target classes for 4 images"):
        explain(model, images, targets=[0, 1, 2])
    with pytest.raises(ConfigError, match=r"unknown explanation method 'gradcamm'.*Did you mean: gradcam"):
        explain(model, images, "gradcamm")
    with pytest.raises(ConfigError, match="must be a float tensor"):
        explain(model, (images * 255).to(torch.uint8))
    with pytest.raises(ConfigError, match=r"must be \(B, C, H, W\); got shape \(48, 48\)"):
        explain(model, images[0, 0])


def test_a_model_whose_output_is_not_logits_is_refused(images):
    backbone = timm.create_model("resnet18", num_classes=0, global_pool="")  # (B, 512, h, w) output
    with pytest.raises(ConfigError, match=r"output must be \(batch, classes\) logits.*\(1, 512, 2, 2\)"):
        explain(backbone, images)


def test_rise_masks_are_seeded_and_explain_the_class_probability(model, images):
    first = Explainer(model, rise_masks=200, seed=5)(images[:1], "rise")
    again = Explainer(model, rise_masks=200, seed=5)(images[:1], "rise")
    other = Explainer(model, rise_masks=200, seed=6)(images[:1], "rise")
    torch.testing.assert_close(first.maps, again.maps)
    assert not torch.allclose(first.maps, other.maps)
