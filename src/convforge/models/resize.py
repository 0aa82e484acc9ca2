"""Giving a freshly built model the layer widths a saved one had, so its weights load without pickle.

A pruned (or otherwise narrowed) model is the architecture with fewer channels in some layers. Its
weights file records every tensor's shape (`model.json`'s `shapes`); `resize_to_shapes` builds the
architecture as usual and then gives each layer whose recorded shapes differ new, empty tensors of
those shapes and the attributes that describe them (`in_channels`, `out_channels` and `groups` of a
convolution, `in_features`/`out_features`, `num_features`, `normalized_shape`, `num_channels`), so
`load_state_dict` fills a model that computes exactly what the saved one did. Torch-Pruning's way,
`torch.save(model)`, pickles the whole module, which runs code on loading and breaks when the class
moves; this keeps the weights a plain tensor file.

Parameters of other layers (a layer scale, GRN's gamma, a global filter) are resized generically.
Attributes a model computes from its widths (HorNet's split sizes) are the model file's business:
its `after_resize(model)` hook runs last (models/factory.py, `model_file_hook`).
"""

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from convforge.errors import CheckpointError
from convforge.models.factory import model_file_hook


def resize_to_shapes(model: nn.Module, shapes: Mapping[str, Sequence[int]], architecture: str | None = None) -> int:
    """Resize every layer whose tensors' recorded shapes differ; returns how many layers changed.

    `shapes` maps state-dict keys to shapes (as `save_model` records them). Keys the model lacks are
    left to the fit check that follows. `architecture` names the model file whose `after_resize` hook
    runs when anything changed."""
    resized = 0
    for prefix, module in model.named_modules():
        prefix = f"{prefix}." if prefix else ""
        own = {**dict(module.named_parameters(recurse=False)), **dict(module.named_buffers(recurse=False))}
        wanted = {
            name: tuple(int(v) for v in shapes[prefix + name])
            for name, tensor in own.items()
            if tensor is not None and prefix + name in shapes and tuple(shapes[prefix + name]) != tuple(tensor.shape)
        }
        if wanted:
            _resize_module(module, wanted, prefix.rstrip(".") or "the model")
            resized += 1
    if resized:
        sync_block_widths(model)
        _update_head_width(model)
        hook = model_file_hook(architecture, "after_resize") if architecture else None
        if hook is not None:
            hook(model)
    return resized


def sync_block_widths(model: nn.Module) -> None:
    """Widths that layers and blocks keep as plain attributes, read back from their tensors after the tensors
    changed (Torch-Pruning narrows the tensors only):
    - an affine InstanceNorm's `num_features`, which its forward checks (IBN-Net-b's stem);
    - a re-parameterizable block's `in_chs`, `out_chs` and `groups` (timm's MobileOne), which its
      `reparameterize()` uses to build the identity branch's kernel: such a block is one convolution
      once folded, so they follow its first convolution's."""
    for module in model.modules():
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.weight is not None:
            module.num_features = module.weight.shape[0]
        elif _foldable(module):
            conv = next((m for m in module.modules() if m is not module and isinstance(m, _ConvNd)), None)
            if conv is None:
                continue
            for name, value in (("in_chs", conv.in_channels), ("out_chs", conv.out_channels), ("groups", conv.groups)):
                if isinstance(getattr(module, name, None), int):
                    setattr(module, name, value)


def _foldable(module: nn.Module) -> bool:
    return any(callable(getattr(module, name, None)) for name in ("reparameterize", "fuse", "switch_to_deploy"))


def _resize_module(module: nn.Module, wanted: dict[str, tuple[int, ...]], where: str) -> None:
    old = _widths(module)
    for name, shape in wanted.items():
        current = getattr(module, name)
        if len(shape) != current.ndim:
            raise CheckpointError(
                f"{where}.{name} is recorded with shape {list(shape)} but the architecture builds "
                f"{list(current.shape)}: only widths can differ, not the number of dimensions"
            )
        fresh = torch.empty(shape, dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(module, name, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            module._buffers[name] = fresh
    _describe_new_widths(module, old)


def _widths(module: nn.Module) -> dict[str, int]:
    if isinstance(module, _ConvNd):
        return {"in": module.in_channels, "out": module.out_channels, "groups": module.groups}
    return {}


def _describe_new_widths(module: nn.Module, old: dict[str, int]) -> None:
    """The attributes that describe a standard layer's tensors, read back from the new tensors."""
    if isinstance(module, _ConvNd):
        # weight: (out, in / groups, k...) or, transposed, (in, out / groups, k...)
        total, per_group = module.weight.shape[:2]
        if old["groups"] == 1:
            groups = 1
        elif old["groups"] == old["in"]:  # depthwise (maybe with a channel multiplier) stays depthwise
            groups = total // (old["out"] // old["groups"]) if not module.transposed else total
        else:  # grouped: pruning keeps the group count and narrows each group alike
            groups = old["groups"]
        if module.transposed:
            module.in_channels, module.out_channels = total, per_group * groups
        else:
            module.in_channels, module.out_channels = per_group * groups, total
        module.groups = groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, _NormBase):
        source = module.weight if module.weight is not None else module.running_mean
        module.num_features = source.shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.GroupNorm) and module.weight is not None:
        module.num_channels = module.weight.shape[0]


def _update_head_width(model: nn.Module) -> None:
    """timm's `num_features` (read by `reset_classifier`) follows a narrowed classifier input."""
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if not isinstance(classifier, nn.Linear) or not hasattr(model, "num_features"):
        return
    if getattr(model, "head_hidden_size", model.num_features) == model.num_features:
        model.num_features = classifier.in_features
        if hasattr(model, "head_hidden_size"):
            model.head_hidden_size = classifier.in_features
