"""Every large-kernel implementation computes the same convolution as F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convforge.models import large_kernel
from convforge.models.large_kernel import DepthwiseConv2d, LargeKernelDWConv2d, fft_depthwise_conv2d
from tests.helpers import assert_close_scaled


@pytest.mark.parametrize("kernel_size", [7, 13, 21, 31])
@pytest.mark.parametrize("channels_last", [False, True])
def test_every_plan_matches_conv2d(kernel_size, channels_last):
    conv = LargeKernelDWConv2d(6, kernel_size).eval()
    x = torch.randn(2, 6, 23, 19)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(x, conv.weight, conv.bias, padding=kernel_size // 2, groups=6)
    for plan in ["channels_last", "nchw", "pad2", "fft"]:
        with torch.no_grad():
            out = conv.run(plan, x)
        assert_close_scaled(out, expected, rtol=1e-5)
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last  # layout kept


def test_fft_in_float64_is_exact_to_rounding():
    x = torch.randn(1, 3, 30, 30, dtype=torch.float64)
    weight = torch.randn(3, 1, 31, 31, dtype=torch.float64)
    expected = F.conv2d(x, weight, None, padding=15, groups=3)
    torch.testing.assert_close(fft_depthwise_conv2d(x, weight, None), expected, rtol=1e-10, atol=1e-10)


def test_eval_picks_a_plan_once_per_shape_and_training_uses_conv2d(monkeypatch):
    large_kernel.clear_plans()
    conv = LargeKernelDWConv2d(4, 13)
    x = torch.randn(1, 4, 16, 16)
    calls = []
    original = LargeKernelDWConv2d._fastest
    monkeypatch.setattr(LargeKernelDWConv2d, "_fastest", lambda self, x: calls.append(1) or original(self, x))
    with torch.no_grad():
        conv.eval()
        first = conv(x)
        conv(x)
    assert len(calls) == 1 and len(large_kernel._PLANS) == 1
    conv.train()
    out = conv(x)  # autograd path: plain nn.Conv2d
    out.sum().backward()
    assert conv.weight.grad is not None
    assert_close_scaled(first, out.detach(), rtol=1e-5)


def test_autotune_can_be_switched_off(monkeypatch):
    large_kernel.clear_plans()
    monkeypatch.setenv("CONVFORGE_LARGE_KERNEL_AUTOTUNE", "0")
    conv = LargeKernelDWConv2d(4, 13).eval()
    with torch.no_grad():
        conv(torch.randn(1, 4, 16, 16))
    assert not large_kernel._PLANS


@pytest.mark.parametrize(("size", "kernel", "dilation"), [(1, 3, 1), (2, 3, 5), (4, 13, 1), (5, 7, 2), (8, 13, 1),
                                                          (3, 5, 1), (6, 3, 4)])  # fmt: skip
def test_reach_cropping_is_exact_for_outputs_and_gradients(size, kernel, dilation):
    conv = DepthwiseConv2d(5, kernel, dilation=dilation)
    x = torch.randn(2, 5, size, size + 1, requires_grad=True)
    out = conv(x)
    reference_x = x.detach().clone().requires_grad_(True)
    reference = F.conv2d(reference_x, conv.weight, conv.bias, padding=dilation * (kernel // 2), dilation=dilation,
                         groups=5)  # fmt: skip
    assert_close_scaled(out, reference, rtol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    weight_grad, conv.weight.grad = conv.weight.grad.clone(), None
    reference.backward(grad)
    assert_close_scaled(x.grad, reference_x.grad, rtol=1e-5)
    assert_close_scaled(weight_grad, conv.weight.grad, rtol=1e-5)
