"""Convolutions that skip padding-only taps equal nn.Conv2d: outputs and every gradient."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from convforge.models.padding_taps import PaddingAwareConv2d, skip_padding_taps, useful_taps
from tests.helpers import assert_close_scaled

# (in, out, kernel, stride, padding, dilation, groups, height, width)
CASES = [
    (8, 16, 3, 1, 1, 1, 1, 1, 1),  # ResNet layer4 at 32 px: only the centre tap
    (8, 16, 3, 2, 1, 1, 1, 2, 2),  # strided onto a 1x1 output: asymmetric crop
    (8, 16, 3, 2, 1, 1, 1, 3, 2),
    (6, 6, 7, 1, 3, 1, 6, 4, 5),  # depthwise 7x7 on 4x5
    (4, 4, 3, 1, 4, 4, 2, 3, 6),  # dilated, grouped
    (8, 8, 5, 2, 2, 1, 1, 3, 1),
    (3, 8, 7, 2, 3, 1, 1, 2, 2),  # a ResNet stem on a tiny image
    (8, 8, 3, 1, 1, 1, 1, 9, 9),  # large enough: nothing to crop
    (4, 8, 3, 3, 0, 1, 1, 7, 5),  # no padding, stride 3
    (4, 8, 5, 1, 6, 1, 1, 1, 2),  # padding wider than the kernel: some outputs read nothing
]


@pytest.mark.parametrize("case", CASES)
def test_output_and_gradients_equal_conv2d(case):
    cin, cout, k, s, p, d, g, h, w = case
    generator = torch.Generator().manual_seed(sum(case))
    reference = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g)
    cropping = PaddingAwareConv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g)
    cropping.load_state_dict(reference.state_dict())
    x = torch.randn(3, cin, h, w, generator=generator, dtype=torch.float64)
    reference, cropping = reference.double(), cropping.double()
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, out = reference(x_ref), cropping(x_new)
    assert out.shape == expected.shape
    assert_close_scaled(out, expected, rtol=1e-12)
    grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected.backward(grad)
    out.backward(grad)
    assert_close_scaled(x_new.grad, x_ref.grad, rtol=1e-12)
    assert_close_scaled(cropping.weight.grad, reference.weight.grad, rtol=1e-12)
    assert_close_scaled(cropping.bias.grad, reference.bias.grad, rtol=1e-12)
    first_h, last_h, _, _ = useful_taps(h, k, s, p, d)
    first_w, last_w, _, _ = useful_taps(w, k, s, p, d)
    kept = torch.zeros(k, k, dtype=torch.bool)
    kept[first_h : last_h + 1, first_w : last_w + 1] = True
    assert torch.all(cropping.weight.grad[..., ~kept] == 0)  # the skipped taps get exactly no gradient


def test_useful_taps_of_a_3x3_on_a_1x1_map_is_the_centre():
    assert useful_taps(1, 3, 1, 1, 1) == (1, 1, 0, 0)
    assert useful_taps(2, 3, 2, 1, 1) == (1, 2, 0, 0)
    assert useful_taps(32, 3, 1, 1, 1) == (0, 2, 1, 1)


def test_a_timm_resnet_keeps_its_outputs_and_state_dict_keys():
    model = timm.create_model("resnet18", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    keys = list(model.state_dict())
    assert skip_padding_taps(model) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    with torch.no_grad():
        assert_close_scaled(model(x), expected, rtol=1e-5)
    assert list(model.state_dict()) == keys
