"""Structural re-parameterization: folding training-time branches and norms into single convolutions.

`reparameterize_model(model)` walks a model and folds every block that knows how (`reparameterize()`,
or timm's `fuse()` / `switch_to_deploy()`), so convforge's zoo and timm's re-parameterizable models
(RepVGG, MobileOne, FastViT, RepViT, ...) go through one call. convforge's blocks fold in the dtype of
their weights (float64 works), and folding twice is a no-op.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold a model for deployment (on a copy unless `inplace`), with running BN statistics.

    Walks the modules as timm's `reparameterize_model` does, calling `fuse()` (replacing the module),
    `reparameterize()` or `switch_to_deploy()`, and marks every module it folded: some of timm's
    blocks (FastViT's RepMixer) fail when folded a second time, and here a second call is a no-op.
    In eval mode the folded model computes the same function (within float rounding) with no more
    parameters than before.
    """
    if not inplace:
        model = copy.deepcopy(model)
    _fold_children(model)
    return model


_FOLDED = "_convforge_folded"


def _fold_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if not getattr(child, _FOLDED, False):
            if hasattr(child, "fuse"):
                child = child.fuse()
                setattr(module, name, child)
            elif hasattr(child, "reparameterize"):
                child.reparameterize()
            elif hasattr(child, "switch_to_deploy"):
                child.switch_to_deploy()
            if any(hasattr(child, m) for m in ("fuse", "reparameterize", "switch_to_deploy")):
                object.__setattr__(child, _FOLDED, True)
        _fold_children(child)


def fuse_bn(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d | nn.BatchNorm1d
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of conv/linear-then-BN as one layer, in the weight's dtype. `weight` has the
    output channels first (conv: (out, in, k, k); linear: (out, in))."""
    std = (bn.running_var.to(weight.dtype) + bn.eps).sqrt()
    scale = bn.weight.to(weight.dtype) / std
    base = bias if bias is not None else torch.zeros_like(scale)
    fused_bias = bn.bias.to(weight.dtype) + (base - bn.running_mean.to(weight.dtype)) * scale
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), fused_bias


def assign_weight_bias(layer: nn.Conv2d | nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Give a conv or linear layer these weights and a bias (registering one if it had none)."""
    layer.weight = nn.Parameter(weight.detach().clone())
    layer.bias = nn.Parameter(bias.detach().clone())


def dilate_kernel(kernel: torch.Tensor, rate: int) -> torch.Tensor:
    """The dense kernel equal to `kernel` applied with dilation `rate`: zeros between the taps."""
    if rate == 1:
        return kernel
    k = kernel.shape[-1]
    size = rate * (k - 1) + 1
    dense = kernel.new_zeros(*kernel.shape[:-2], size, size)
    dense[..., ::rate, ::rate] = kernel
    return dense


def pad_kernel_to(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Centre a smaller odd kernel inside a `size` x `size` one (same-padded convolutions agree)."""
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, [pad] * 4)
