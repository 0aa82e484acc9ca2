"""Which layer to explain: found automatically for any timm or convforge model, or named by the user.

The rule: the last layer whose output is a spatial map that the model's output depends on. One
forward and one backward pass on a single image find it, so it works on CNNs, on token models (ViT:
(B, N, C) with prefix tokens) and on channels-last models (Swin: (B, H, W, C)) alike:

- every module's output is recorded in the order modules finish; a 4-D output whose spatial size is
  consistent with the input's (a whole stride in both directions) is a map, in NCHW or NHWC; a 3-D
  output whose token count, less the model's prefix (class) tokens, tiles the input's aspect is a
  token map;
- maps whose spatial positions get no gradient from the top logit are skipped. That is why a ViT's
  final norm is not chosen (only its class token reaches the head) and `blocks.11.norm1` is, which
  is the layer pytorch-grad-cam's documentation recommends by hand;
- among the rest, those with the model's `num_features` channels are preferred (the feature map the
  head reads, not a wider projection such as an attention block's qkv), and the last one wins. A
  container finishes after its children, so `layer4` is chosen rather than `layer4.1.act2`.

`feature_info` alone is not enough: it names the last stage, which is not the last map in models
with a head convolution after the stages (EfficientNet's `bn2`) or a norm before pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from convforge.errors import ConfigError, did_you_mean

_SKIPPED_TYPES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d)


@dataclass(frozen=True)
class TargetLayer:
    """A layer to explain and how to read its output as an NCHW map."""

    name: str
    module: nn.Module
    layout: str  # NCHW, NHWC, or NLC (tokens, `prefix_tokens` of them not spatial)
    channels: int
    call: int = -1  # which call of the module, for modules used more than once per forward (-1: last)
    prefix_tokens: int = 0
    bytes_after: int = 0  # activation bytes per image saved for the backward from this layer to the output
    bytes_peak: int = 0  # the largest activation of one image, for sizing chunks

    def to_nchw(self, output: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """The layer's output (or its gradient) as a (B, C, h, w) map."""
        if self.layout == "NCHW":
            return output
        if self.layout == "NHWC":
            return output.permute(0, 3, 1, 2)
        tokens = output[:, self.prefix_tokens :]
        height, width = token_grid(tokens.shape[1], input_size)
        return tokens.transpose(1, 2).reshape(output.shape[0], output.shape[2], height, width)


def token_grid(count: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) with h * w == count and h / w as close as possible to the input's aspect ratio."""
    aspect = input_size[0] / input_size[1]
    best = None
    for height in range(1, count + 1):
        if count % height == 0:
            error = abs(math.log(height / (count // height) / aspect))
            if best is None or error < best[0]:
                best = (error, height, count // height)
    return best[1], best[2]


def _spatial_layout(shape: tuple[int, ...], input_size: tuple[int, int], prefix_tokens: int) -> str | None:
    """NCHW, NHWC or NLC when a (1, ...) output shape is a spatial map of an input of `input_size`."""

    def consistent(h: int, w: int) -> bool:
        if h * w < 2 or h > input_size[0] or w > input_size[1]:
            return False
        stride_h, stride_w = input_size[0] / h, input_size[1] / w
        return abs(math.log(stride_h / stride_w)) < 0.25  # same stride both ways, up to rounding

    if len(shape) == 4:
        if consistent(shape[2], shape[3]):
            return "NCHW"
        if consistent(shape[1], shape[2]):
            return "NHWC"
    if len(shape) == 3:
        count = shape[1] - prefix_tokens
        if count >= 2:
            height, width = token_grid(count, input_size)
            if consistent(height, width) and (input_size[0] % height == 0 or height == width):
                return "NLC"
    return None


@dataclass
class _Record:
    name: str
    module: nn.Module
    call: int
    output: torch.Tensor
    layout: str | None
    order: int


def _channels(shape: tuple[int, ...], layout: str) -> int:
    return shape[1] if layout == "NCHW" else shape[-1]


def find_target_layer(model: nn.Module, example: torch.Tensor, name: str | None = None) -> TargetLayer:
    """The layer to explain for inputs like `example` (one image is enough): `name` when given,
    otherwise the last spatial map the output depends on (module docstring)."""
    modules = dict(model.named_modules())
    if name is not None and name not in modules:
        raise ConfigError(f"model has no layer {name!r}.{did_you_mean(name, [n for n in modules if n])}")
    input_size = (example.shape[-2], example.shape[-1])
    prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
    records: list[_Record] = []
    calls: dict[str, int] = {}

    def recorder(module_name: str):
        def hook(module: nn.Module, args, output) -> None:
            calls[module_name] = calls.get(module_name, -1) + 1
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                layout = _spatial_layout(tuple(output.shape), input_size, prefix_tokens)
                records.append(_Record(module_name, module, calls[module_name], output, layout, len(records)))

        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if n]
    x = example[:1].detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            output = model(x)
        if not isinstance(output, torch.Tensor) or output.ndim != 2:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ConfigError(
                f"the model's output must be (batch, classes) logits to explain it; it is {shape}"
            )
        maps = [r for r in records if r.layout is not None and r.output.requires_grad]
        grads = torch.autograd.grad(
            output[0, output[0].argmax()], [r.output for r in maps], allow_unused=True, retain_graph=False
        )
    finally:
        for handle in handles:
            handle.remove()
    reaching = {
        id(r): g is not None and bool(_spatial_part(g, r, prefix_tokens).abs().sum() > 0)
        for r, g in zip(maps, grads, strict=True)
    }
    leaves = [r for r in records if next(r.module.children(), None) is None]
    peak = max((r.output.numel() * r.output.element_size() for r in leaves), default=0)

    def saved_after(record: _Record) -> int:
        return sum(r.output.numel() * r.output.element_size() for r in leaves if r.order > record.order)

    def target(record: _Record) -> TargetLayer:
        shape = tuple(record.output.shape)
        return TargetLayer(
            name=record.name,
            module=record.module,
            layout=record.layout,
            channels=_channels(shape, record.layout),
            call=record.call,
            prefix_tokens=prefix_tokens if record.layout == "NLC" else 0,
            bytes_after=saved_after(record),
            bytes_peak=peak,
        )

    if name is not None:
        named = [r for r in records if r.name == name]
        if not named:
            raise ConfigError(
                f"layer {name!r} did not run in the model's forward pass, so it cannot be explained"
            )
        record = named[-1]
        if record.layout is None:
            raise ConfigError(
                f"layer {name!r} outputs shape {tuple(record.output.shape)}, which has no spatial map to "
                f"explain. Leave out --layer to use {_automatic(records, reaching, model)!r}, or name a layer "
                "whose output is (B, C, H, W), (B, H, W, C) or tokens"
            )
        return target(record)
    automatic = _automatic(records, reaching, model)
    if automatic is None:
        raise ConfigError(
            f"{type(model).__name__} has no layer with a spatial output that its logits depend on "
            "(is it a model over images?); name one with --layer"
        )
    return target(next(r for r in reversed(records) if r.name == automatic))


def _spatial_part(grad: torch.Tensor, record: _Record, prefix_tokens: int) -> torch.Tensor:
    return grad[:, prefix_tokens:] if record.layout == "NLC" else grad


def _automatic(records: list[_Record], reaching: dict[int, bool], model: nn.Module) -> str | None:
    candidates = [
        r
        for r in records
        if r.layout is not None and reaching.get(id(r)) and not isinstance(r.module, _SKIPPED_TYPES)
    ]
    if not candidates:
        return None
    features = getattr(model, "num_features", None)
    preferred = [r for r in candidates if _channels(tuple(r.output.shape), r.layout) == features]
    return (preferred or candidates)[-1].name
