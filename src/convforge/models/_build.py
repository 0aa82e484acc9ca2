"""Building the zoo's models with timm's builder, and where their official weights come from.

timm downloads Hugging Face files and URLs that end in a file name itself. Some authors publish
elsewhere: HorNet's Tsinghua Cloud links end in `/?dl=1` (no file name, which timm's downloader
needs), and RepLKNet's weights are only on Google Drive and Baidu (no direct download). This module
downloads the first kind to torch's hub cache under a proper name and hands timm the local file; for
the second it stops with the links and the `checkpoint_path=` to use, instead of silently building a
randomly initialised model.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from torch import nn

from convforge.errors import CheckpointError


def prepare_pretrained(variant: str, pretrained: bool, kwargs: dict[str, Any]) -> None:
    """Before timm's builder runs: make sure `pretrained=True` can be served, adjusting `kwargs`."""
    if not pretrained:
        return
    overlay = kwargs.get("pretrained_cfg_overlay")
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get("pretrained_cfg"), pretrained_cfg_overlay=overlay
    )
    if cfg.hf_hub_id or cfg.file or cfg.state_dict:
        return
    if not cfg.url and cfg.notes:
        raise CheckpointError(
            f"{variant}: the authors' weights cannot be downloaded automatically; they are published at "
            f"{cfg.notes}. Download the file and pass create_model('{variant}', checkpoint_path='that-file.pth')"
        )
    if not cfg.url:
        raise CheckpointError(
            f"no pretrained weights exist for {variant}; train it, or pass checkpoint_path="
        )
    if os.path.basename(urlparse(cfg.url).path):
        return  # timm's own downloader can name the file
    path = Path(torch.hub.get_dir()) / "checkpoints" / f"{cfg.architecture}.{cfg.tag or 'default'}.pth"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(cfg.url, str(path), progress=True)
    kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(path)}


def build_zoo_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    filter_fn,
    feature_indices: tuple[int, ...],
    flatten_sequential: bool = True,
    **kwargs,
) -> nn.Module:
    """timm's `build_model_with_cfg` (pretrained loading through `filter_fn`, `features_only=True`)
    after making sure the requested weights can be had."""
    prepare_pretrained(variant, pretrained, kwargs)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg={"out_indices": feature_indices, "flatten_sequential": flatten_sequential},
        **kwargs,
    )


def unwrap_checkpoint(state_dict: dict) -> dict:
    """The weights inside an official training checkpoint: its `model` or `state_dict` entry, without
    DataParallel's `module.` prefix."""
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def remap_official_keys(state_dict: dict, marker: str, rename: Callable[[str], str | None]) -> dict:
    """An official checkpoint's weights under convforge's names: unwrapped, then, when it holds the
    official layout's `marker` key, each key passed through `rename` (None drops the tensor). A
    convforge or timm state dict (no marker) passes through unchanged."""
    state_dict = unwrap_checkpoint(state_dict)
    if marker not in state_dict:
        return state_dict
    renamed = {key: rename(key) for key in state_dict}
    return {new: state_dict[key] for key, new in renamed.items() if new is not None}


def convnext_layout_key(key: str, block_key: Callable[[str], str] = lambda rest: rest) -> str:
    """The official ConvNeXt-style layout (HorNet, UniRepLKNet) to timm's staged names:
    `downsample_layers.0` is the stem, `downsample_layers.i` stage i's downsample, `stages.s.b` block b
    of stage s (its rest through `block_key`), `norm` and `head` the head's norm and classifier."""
    if key.startswith("downsample_layers.0."):
        return "stem." + key[len("downsample_layers.0.") :]
    if key.startswith("downsample_layers."):
        _, stage, rest = key.split(".", 2)
        return f"stages.{stage}.downsample.{rest}"
    if key.startswith("stages."):
        _, stage, block, rest = key.split(".", 3)
        return f"stages.{stage}.blocks.{block}.{block_key(rest)}"
    if key.startswith("norm."):
        return "head." + key
    if key.startswith("head."):
        return "head.fc." + key[len("head.") :]
    return key


def zoo_cfg(*, paper_ids: str, paper_name: str, origin_url: str, license: str, first_conv: str = "stem.0",
            classifier: str = "head.fc", **overrides: Any) -> dict[str, Any]:  # fmt: skip
    """A pretrained cfg: ImageNet defaults (224x224, crop 0.875, bicubic, ImageNet mean/std) and the
    paper, official code and licence of the weights, with per-weight `overrides` (url, hf_hub_id, ...)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv,
        "classifier": classifier,
        "license": license,
        "paper_ids": paper_ids,
        "paper_name": paper_name,
        "origin_url": origin_url,
        **overrides,
    }
