"""Folding a trained model for inference: re-parameterized blocks, and every BatchNorm into the
convolution before it, exactly.

`fold_model(model)` first re-parameterizes (models/reparam.py), then traces the model with torch.fx to
find each BatchNorm whose input is one convolution's output and nothing else reads that output; those
pairs become one convolution with a bias (torch's own `fuse_conv_bn_weights` computes it) and the norm
leaves the module tree: a plain BatchNorm becomes `nn.Identity`, timm's BatchNormAct2d keeps its
dropout and activation (`FoldedNormAct`). A norm after anything else (a sum, a pooling, a transposed
or shared convolution) stays and is named in `FoldResult.kept`. A model fx cannot trace is only
re-parameterized, and that is said.

Why not export's graph folding alone: ONNX Runtime folds BatchNorm in its own graph, but eager PyTorch
(`convforge bench`, `serve` on the torch backend, `predict`) runs every norm as its own pass over the
activations. A folded child is still the architecture (fewer modules, different keys), so model.json
records `folded: true` with the widths before folding, and `ModelSpec.build` replays this function on
the freshly built model before the weights load: the structure depends only on the architecture and
its widths, never on the weight values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_weights

from convforge.models.reparam import reparameterize_model


class NormLeafTracer(torch.fx.Tracer):
    """Keeps norms (timm's BatchNormAct2d included) and timm's no-trace modules as single nodes."""

    def __init__(self):
        from timm.layers import get_notrace_functions, get_notrace_modules

        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._leaves = tuple(get_notrace_modules()) + (_BatchNorm, nn.LayerNorm, nn.GroupNorm)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, self._leaves) or super().is_leaf_module(module, qualified_name)


class FoldedNormAct(nn.Module):
    """What is left of timm's BatchNormAct2d once its normalisation is folded: dropout, then activation."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


@dataclass
class FoldResult:
    model: nn.Module
    folded: list[str] = field(default_factory=list)  # norms folded into the convolution before them
    kept: list[str] = field(default_factory=list)  # norms left in place, each with its reason
    untraceable: str | None = None  # why no norm was folded, when fx could not trace the model

    def to_dict(self) -> dict:
        return {"folded": len(self.folded), "kept": self.kept, "untraceable": self.untraceable}


def is_conv_node(node, modules: dict[str, nn.Module]) -> bool:
    """A call of a (non-transposed) convolution module."""
    return (isinstance(node, torch.fx.Node) and node.op == "call_module"
            and isinstance(modules[node.target], _ConvNd) and not modules[node.target].transposed)  # fmt: skip


def fold_model(model: nn.Module, inplace: bool = False) -> FoldResult:
    """`model` (a copy unless `inplace`) re-parameterized, in eval mode, with BatchNorms folded (module
    docstring). In eval mode it computes the same function within float rounding."""
    if not inplace:
        model = copy.deepcopy(model)
    model = reparameterize_model(model.eval(), inplace=True)
    result = FoldResult(model)
    try:
        graph = NormLeafTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - tracing failures come as many types
        result.untraceable = f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {str(exc)[:160]})"
        return result
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm):
            continue
        norm, source = modules[node.target], node.args[0] if node.args else None
        reason = None
        if norm.running_mean is None:
            reason = "no running statistics"
        elif not is_conv_node(source, modules):
            reason = "no convolution before it"
        elif len(source.users) > 1 or calls[source.target] > 1 or calls[node.target] > 1:
            reason = "its convolution's output is read elsewhere, or a module is called twice"
        if reason:
            result.kept.append(f"{node.target} ({reason})")
            continue
        fuse_into_conv(modules[source.target], norm)
        _set_module(model, node.target, _after_folding(norm))
        result.folded.append(node.target)
    return result


@torch.no_grad()
def fuse_into_conv(conv: _ConvNd, norm: _BatchNorm) -> None:
    """Give `conv` the weights and bias of conv-then-norm (eval mode), in the convolution's dtype."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean.to(conv.weight.dtype), norm.running_var.to(conv.weight.dtype),
        norm.eps, None if norm.weight is None else norm.weight.to(conv.weight.dtype),
        None if norm.bias is None else norm.bias.to(conv.weight.dtype),
    )  # fmt: skip
    conv.weight, conv.bias = weight, bias


def _after_folding(norm: _BatchNorm) -> nn.Module:
    act, drop = getattr(norm, "act", None), getattr(norm, "drop", None)
    if isinstance(act, nn.Module) and isinstance(drop, nn.Module):  # timm's BatchNormAct2d and its kin
        return FoldedNormAct(drop, act)
    return nn.Identity()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
