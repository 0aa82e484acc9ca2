"""The target layer is found for CNNs, token models and channels-last models, or named by the user."""

from __future__ import annotations

import pytest
import timm
import torch

import convforge
from convforge.errors import ConfigError
from convforge.explain import explain, find_target_layer


@pytest.mark.parametrize(
    ("name", "size", "layer", "layout"),
    [
        ("resnet18", 64, "layer4", "NCHW"),
        ("efficientnet_b0", 64, "bn2", "NCHW"),  # the head conv after the last stage, not feature_info's last
        ("vit_tiny_patch16_224", 224, "blocks.11.norm1", "NLC"),  # its final norm only feeds the class token
        ("swin_tiny_patch4_window7_224", 224, "norm", "NHWC"),
        ("unireplknet_tiny_test", 64, "stages", "NCHW"),
    ],
)
def test_automatic_layer(name, size, layer, layout):
    torch.manual_seed(0)  # unseeded random weights and images can give an all-negative, rectified-away map
    model = convforge.create_model(name, num_classes=5).eval()
    images = torch.randn(2, 3, size, size)
    found = find_target_layer(model, images)
    assert (found.name, found.layout) == (layer, layout)
    result = explain(model, images, "gradcam")
    assert result.maps.shape == (2, size, size)
    assert result.layer == layer
    assert float(result.maps.amax()) > 0.99  # not an all-zero map


def test_token_maps_drop_the_prefix_tokens_and_keep_the_patch_grid():
    model = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=5).eval()
    found = find_target_layer(model, torch.randn(1, 3, 224, 224))
    assert found.prefix_tokens == 2 and found.layout == "NLC"
    result = explain(model, torch.randn(1, 3, 224, 224), "hirescam")
    assert result.cams.shape == (1, 14, 14)


def test_named_layer_overrides_and_unknown_names_get_suggestions():
    model = timm.create_model("resnet18", num_classes=5).eval()
    images = torch.randn(1, 3, 64, 64)
    assert explain(model, images, "gradcam", layer="layer3").cams.shape == (1, 4, 4)
    with pytest.raises(ConfigError, match=r"no layer 'layer5'.*Did you mean: layer4"):
        explain(model, images, layer="layer5")


def test_a_layer_without_spatial_output_is_refused_with_the_automatic_choice():
    model = timm.create_model("resnet18", num_classes=5).eval()
    with pytest.raises(
        ConfigError, match=r"layer 'fc' outputs shape \(1, 5\), which has no spatial map.*'layer4'"
    ):
        explain(model, torch.randn(1, 3, 64, 64), layer="fc")
