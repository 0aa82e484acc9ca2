"""Convolutions that skip the kernel taps which can only ever read zero padding.

When a feature map is smaller than a kernel's reach (the 1x1 and 2x2 maps deep in a ResNet at CIFAR
resolution, a 13x13 kernel on a 4x4 map), some taps multiply padding zeros at every output position.
Leaving them out changes nothing: the output is the same sum without terms that are zero, the input
gradient likewise, and those taps' own weight gradients are zero either way. oneDNN does not notice,
and it matters: at batch 256 a 512->512 3x3 convolution on a 1x1 map takes 82 ms forward and backward
on a 2-core CPU held to AVX2, and 8.0 ms with the padding-only taps skipped (20 against 7.5 ms with
AVX-512; benchmarks/padding_taps.py). timm's resnet18 at 32x32 then trains 1.65x faster with AVX2
kernels (1.08x with AVX-512).

`useful_taps` finds, per spatial dimension, the contiguous range of taps that reach the input for the
given size, stride, padding and dilation, with the padding the cropped kernel needs (asymmetric when
strided). `PaddingAwareConv2d` is an `nn.Conv2d` (same parameters, same state-dict keys) whose forward
uses it; `skip_padding_taps(model)` turns a model's plain `nn.Conv2d` layers into it, in place, for
training. Results agree with `F.conv2d` up to float rounding (fewer terms are summed), and the dropped
taps' gradients are exactly zero (tests/models/test_padding_taps.py).
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=4096)  # called on every forward with a few distinct shapes
def useful_taps(size: int, kernel: int, stride: int, padding: int, dilation: int) -> tuple[int, int, int, int]:
    """(first tap, last tap, left padding, right padding) of one dimension of a convolution: the taps
    that read a real input pixel at some output position, and the padding that keeps every output."""
    outputs = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    taps = []
    for tap in range(kernel):
        offset = tap * dilation - padding  # the input index this tap reads at output 0
        first = max(0, -(offset // stride) if offset < 0 else 0)  # ceil(-offset / stride)
        last = min(outputs - 1, (size - 1 - offset) // stride)
        if first <= last:
            taps.append(tap)
    if not taps:  # every tap reads padding only: keep one, whose products are all zero
        taps = [0]
    first_tap, last_tap = taps[0], taps[-1]
    left = padding - first_tap * dilation
    span = dilation * (last_tap - first_tap)
    right = max(0, (outputs - 1) * stride + span + 1 - size - left)
    return first_tap, last_tap, left, right


def conv2d_without_padding_taps(
    x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """`conv(x)` computed with only the taps that can reach `x` (zero padding, numeric padding)."""
    weight = conv.weight if weight is None else weight
    height, width = x.shape[-2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    top_tap, bottom_tap, top, bottom = useful_taps(height, kh, sh, ph, dh)
    left_tap, right_tap, left, right = useful_taps(width, kw, sw, pw, dw)
    if (top_tap, bottom_tap, left_tap, right_tap) == (0, kh - 1, 0, kw - 1):
        return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cropped = weight[:, :, top_tap : bottom_tap + 1, left_tap : right_tap + 1]
    if top < 0:  # the first rows are read by no kept tap at any output: drop them
        x, top = x[..., -top:, :], 0
    if left < 0:
        x, left = x[..., :, -left:], 0
    if top == bottom and left == right:
        out = F.conv2d(x, cropped, conv.bias, conv.stride, (top, left), conv.dilation, conv.groups)
    else:
        x = F.pad(x, (left, right, top, bottom))
        out = F.conv2d(x, cropped, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
    return out[..., :out_h, :out_w]


class PaddingAwareConv2d(nn.Conv2d):
    """An `nn.Conv2d` that skips the taps which can only read padding on small inputs (module docstring).

    Which taps to skip depends on the input's size, so a graph that must hold for every size
    (TorchScript, `torch.jit.trace`, FX) records the plain convolution instead: the same result up to
    float rounding. torch.export and torch.compile specialise on the size and keep the skipping."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return self.forward_eager(x)

    @torch.jit.unused
    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        if records_size_free_graph(x):
            return self._conv_forward(x, self.weight, self.bias)
        return conv2d_without_padding_taps(x, self)


def records_size_free_graph(x: torch.Tensor) -> bool:
    """True while `x` flows through a graph recorder whose graph must hold for any input size: FX's
    symbolic tracing (`x` is a Proxy) or `torch.jit.trace` (which would bake in this size's crop)."""
    return isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing()


def skip_padding_taps(model: nn.Module) -> int:
    """Make every plain zero-padded `nn.Conv2d` of `model` a `PaddingAwareConv2d`, in place (the class
    changes, the parameters and state-dict keys do not). Returns how many layers changed. Subclasses
    (timm's Conv2dSame, convforge's own depthwise layers) keep their own forward."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
            module.__class__ = PaddingAwareConv2d
            changed += 1
    return changed
