"""`create_model`: any timm architecture or convforge's own, with clear errors and safe weight loading.

convforge's native architectures register themselves in timm's registry (importing
`convforge.models` is enough), so one namespace covers both and `timm.create_model` finds them too.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from convforge.errors import CheckpointError, ModelNotFoundError, did_you_mean
from convforge.tensorfile import read_state_dict, safetensors_description


def all_model_names() -> list[str]:
    """Every architecture timm's registry knows, convforge's native ones included."""
    return timm.list_models()


def check_model_name(name: str) -> str:
    """Return the architecture part of `name` (`resnet18.a1_in1k` -> `resnet18`) or raise with a suggestion."""
    if not isinstance(name, str) or not name:
        raise ModelNotFoundError(f"a model name is a non-empty string, got {name!r}")
    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        raise ModelNotFoundError(
            f"unknown model {name!r}.{did_you_mean(architecture, all_model_names())} "
            "See `convforge models PATTERN` for the list."
        )
    return architecture


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build an architecture by name, with the timm model interface.

    `pretrained=True` downloads the official weights through timm (only when asked; nothing else
    downloads). `checkpoint_path` loads a local `.safetensors` (or weights-only `.pth`) file,
    mapping official key layouts through the model module's `checkpoint_filter_fn` when it has one.
    """
    check_model_name(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise ModelNotFoundError(f"{name} does not accept these options {sorted(kwargs)}: {exc}") from None
    if checkpoint_path is not None:
        _check_convforge_checkpoint(checkpoint_path, name, model)
        load_weights(model, checkpoint_path, filter_fn=model_file_hook(name, "checkpoint_filter_fn"))
    return model


def _check_convforge_checkpoint(path: str | os.PathLike, name: str, model: nn.Module) -> None:
    """A weights file written by convforge says what it holds; refuse a mismatch naming both sides."""
    description = safetensors_description(path)
    if not description or "architecture" not in description:
        return
    held = (description["architecture"], description.get("num_classes"))
    wanted = (name.split(".", 1)[0], getattr(model, "num_classes", None))
    if held != wanted:
        raise CheckpointError(
            f"{path} holds {held[0]} with {held[1]} classes, but {wanted[0]} with {wanted[1]} classes was asked for"
        )


def model_file_hook(name: str, hook: str) -> Callable | None:
    """A function the architecture's model file defines beside its entry points, or None.

    The hooks a model file may define: `checkpoint_filter_fn(state_dict, model)` maps official key
    layouts; `after_resize(model)` recomputes attributes derived from widths once `load_model` has
    resized layers to recorded shapes (HorNet's split sizes); `unwrapped_parameters(model)` lists
    `(parameter, channel_dim)` for parameters outside standard layers that pruning must narrow with
    their channels (UniRepLKNet's GRN), in Torch-Pruning's format; `pruning_protected(model)` gives
    `{module: reason}` for layers whose output channels pruning must keep whole (a split the
    dependency graph cannot follow: IBN, HorNet's gnConv)."""
    module = importlib.import_module(timm.models.model_entrypoint(name.split(".", 1)[0]).__module__)
    return getattr(module, hook, None)


def load_weights(model: nn.Module, path: str | os.PathLike, filter_fn: Callable | None = None) -> None:
    """Load a weights file into `model`, failing with the name of the first key that does not fit."""
    state = read_state_dict(path)
    if filter_fn is not None:
        state = filter_fn(state, model)
    check_state_dict_fits(model, state, str(path))
    model.load_state_dict(state, strict=True)


def renamed_for(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` with its keys as `model.load_state_dict` would see them after the model's own load pre-hooks
    (a block that renamed its tensors maps the old names: UniRepLKNet's `dil_conv_k*` ->
    `dilated_branches.*`), so a fit check and a resize see the names the load will use. The hooks run
    again on load and find nothing left to rename."""
    state = dict(state)
    for name, module in model.named_modules():
        for hook in module._load_state_dict_pre_hooks.values():
            hook(state, f"{name}." if name else "", {}, True, [], [], [])
    return state


def check_state_dict_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a CheckpointError naming missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if wrong_shape:
        problems.append("shape mismatch for " + "; ".join(wrong_shape[:5]))
    if missing:
        problems.append(
            f"missing keys {missing[:5]}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    if unexpected:
        problems.append(
            f"unexpected keys {unexpected[:5]}"
            + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
        )
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
