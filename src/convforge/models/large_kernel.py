"""Depthwise convolutions with large kernels (13x13 to 31x31), fast on the CPU in eval mode.

Why not plain `F.conv2d`: on the CPU its speed for large depthwise kernels depends wildly on the
memory layout and the kernel size (benchmarks/RESULTS.md, measured on a 2-core AVX-512 machine):
PyTorch's native NCHW kernel is fine up to 13x13 and 20-40x slower than oneDNN's channels-last kernel
from 15x15 up, while oneDNN is itself slower at exactly 13x13 than at 15x15. The upstream repositories
ship custom CUDA kernels for this reason. `LargeKernelDWConv2d` is an `nn.Conv2d` (same parameters,
same state-dict keys, same training behaviour) that, in eval mode on the CPU, times a few exactly
equivalent ways of computing the same convolution the first time it meets an input shape and keeps the
fastest, the way `cudnn.benchmark` does on a GPU:

* `nchw` / `channels_last`: `F.conv2d` in that layout (converting the input and the output when
  they come in the other one); NCHW is only tried up to 15x15, beyond which it is never competitive;
* `pad2`: the kernel zero-padded by one pixel on each side, in channels-last (skips oneDNN's slow
  13x13 path; the extra taps multiply zeros, so the result is the same);
* `fft`: an FFT convolution (`torch.fft`), exact up to rounding, for the largest kernels.

Every candidate agrees with `F.conv2d` within 1e-5 relative (tests/models/test_large_kernel.py).
Set `CONVFORGE_LARGE_KERNEL_AUTOTUNE=0` to always use plain `F.conv2d`.

Graphs (TorchScript, FX, `torch.jit.trace`, torch.export, torch.compile) never see the autotuning: they
record one standard convolution, the size-free plain one or, where they specialise on the input size,
the one with padding-only taps cropped (models/padding_taps.py; tests/models/test_graphs.py).
"""

import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from convforge.models.padding_taps import PaddingAwareConv2d, records_size_free_graph, useful_taps

_PLANS: dict[tuple, str] = {}
_TRIALS = 3


def fft_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Same-padded depthwise cross-correlation through the FFT (odd square kernel, stride 1)."""
    height, width = x.shape[-2:]
    k = weight.shape[-1]
    fft_h, fft_w = _fast_length(height + k - 1), _fast_length(width + k - 1)
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    signal = torch.fft.rfft2(x.to(compute_dtype).contiguous(), s=(fft_h, fft_w))
    kernel = torch.fft.rfft2(weight[:, 0].flip(-1, -2).to(compute_dtype), s=(fft_h, fft_w))
    out = torch.fft.irfft2(signal * kernel, s=(fft_h, fft_w))[
        ..., k // 2 : k // 2 + height, k // 2 : k // 2 + width
    ]
    if bias is not None:
        out = out + bias.to(compute_dtype).view(1, -1, 1, 1)
    return out.to(x.dtype)


def _fast_length(n: int) -> int:
    """The smallest m >= n with no prime factor above 5 (sizes the FFT libraries are fast at)."""
    while True:
        m = n
        for prime in (2, 3, 5):
            while m % prime == 0:
                m //= prime
        if m == 1:
            return n
        n += 1


def reach_cropped(
    weight: torch.Tensor, dilation: int, height: int, width: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The taps of a same-padded kernel that can touch an input of this size, and their padding.

    A tap whose offset from the centre is at least the input's side reads only padding, whatever the
    position: dropping it changes nothing, in the output or in any gradient (its own is zero). A 13x13
    kernel on a 4x4 map keeps its central 7x7; a 3x3 kernel with dilation 5 on a 2x2 map keeps 1x1.
    """
    kernel = weight.shape[-1]
    # stride 1 and same padding: the useful taps are centred and the padding stays symmetric
    top, bottom, pad_h, _ = useful_taps(height, kernel, 1, dilation * (kernel // 2), dilation)
    left, right, pad_w, _ = useful_taps(width, kernel, 1, dilation * (kernel // 2), dilation)
    if (top, bottom, left, right) == (0, kernel - 1, 0, kernel - 1):
        return weight, (pad_h, pad_w)
    return weight[..., top : bottom + 1, left : right + 1], (pad_h, pad_w)


class DepthwiseConv2d(PaddingAwareConv2d):
    """A same-padded, stride-1 depthwise `nn.Conv2d` (optionally dilated) that skips the taps which can
    only read padding on small inputs (`PaddingAwareConv2d`): exact, and much faster when large or
    dilated kernels meet small feature maps, as they do deep in a network at CIFAR resolution."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = True):
        super().__init__(channels, channels, kernel_size, stride=1, padding=dilation * (kernel_size // 2),
                         dilation=dilation, groups=channels, bias=bias)  # fmt: skip

    @torch.jit.unused
    def cropped(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The kernel taps that reach an input of `x`'s size, and the padding they need."""
        return reach_cropped(self.weight, self.dilation[0], x.shape[-2], x.shape[-1])


class LargeKernelDWConv2d(DepthwiseConv2d):
    """A large-kernel `DepthwiseConv2d` that, in eval mode on the CPU, picks its fastest exact
    implementation (module docstring). Training and autograd use the plain convolution."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__(channels, kernel_size, dilation=1, bias=bias)

    @torch.jit.unused
    def forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.training
            or torch.is_grad_enabled()
            or records_size_free_graph(x)
            or x.device.type != "cpu"
            or torch.compiler.is_compiling()
            or not _autotune_enabled()
        ):
            return super().forward_eager(x)  # graphs for export/compile keep the one standard op
        weight, _ = self.cropped(x)
        key = (tuple(x.shape), x.dtype, _layout(x), weight.shape[-2:], self.bias is not None)
        plan = _PLANS.get(key)
        if plan is None:
            plan = _PLANS[key] = self._fastest(x)
        return self.run(plan, x)

    def candidates(self, kernel_size: int | None = None) -> list[str]:
        k = kernel_size or self.kernel_size[0]
        plans = ["channels_last"]
        if k <= 15:
            plans += ["nchw", "pad2"]
        if k >= 21:
            plans.append("fft")
        return plans

    def run(self, plan: str, x: torch.Tensor) -> torch.Tensor:
        """Compute the convolution with one named implementation; the output keeps the input's layout."""
        weight, padding = self.cropped(x)
        bias, groups = self.bias, self.groups
        if plan == "fft" and weight.shape[-1] == weight.shape[-2]:
            return _as_layout(fft_depthwise_conv2d(x, weight, bias), x)
        if plan == "pad2":
            weight = F.pad(weight, (1, 1, 1, 1))
            x_in = x.contiguous(memory_format=torch.channels_last)
            out = F.conv2d(x_in, weight, bias, padding=(padding[0] + 1, padding[1] + 1), groups=groups)
            return _as_layout(out, x)
        memory_format = torch.channels_last if plan == "channels_last" else torch.contiguous_format
        out = F.conv2d(
            x.contiguous(memory_format=memory_format), weight, bias, padding=padding, groups=groups
        )
        return _as_layout(out, x)

    def _fastest(self, x: torch.Tensor) -> str:
        plans = self.candidates(self.cropped(x)[0].shape[-1])
        timings = {plan: _median_ms(lambda p=plan: self.run(p, x)) for plan in plans}
        return min(timings, key=timings.get)


def _autotune_enabled() -> bool:
    return os.environ.get("CONVFORGE_LARGE_KERNEL_AUTOTUNE", "1") != "0"


def _layout(x: torch.Tensor) -> str:
    return (
        "channels_last" if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 else "nchw"
    )


def _as_layout(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if _layout(like) == "channels_last":
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def _median_ms(run: Callable[[], torch.Tensor]) -> float:
    run()  # warm-up: first calls allocate and JIT
    times = []
    for _ in range(_TRIALS):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def clear_plans() -> None:
    """Forget the measured plans (tests; or after the machine's load changed a lot)."""
    _PLANS.clear()
