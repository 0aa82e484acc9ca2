"""`list_models`: the catalogue of architectures with family, parameters, GMACs and paper.

Parameters and multiply-accumulates are counted by `convforge.measure` on PyTorch's meta device
(no memory is allocated and no arithmetic runs), and cached on disk per
timm version, so listing a family twice costs nothing the second time.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch

from convforge.files import atomic_write_json, cache_root
from convforge.measure.counting import count_macs, count_params
from convforge.models.factory import all_model_names
from convforge.models.papers import paper_for


@dataclass
class ModelInfo:
    name: str
    family: str
    params: int | None
    gmacs: float | None
    input_size: tuple[int, int, int]
    paper: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def family_of(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def default_input_size(name: str) -> tuple[int, int, int]:
    cfg = timm.models.get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return tuple(size) if size else (3, 224, 224)


def list_models(
    pattern: str | None = None, input_size: int | None = None, with_stats: bool = True
) -> list[ModelInfo]:
    """Architectures matching a wildcard `pattern` (e.g. 'resnet*'), with params and GMACs at
    `input_size` (the model's default when None); `with_stats=False` skips the counting."""
    names = all_model_names()
    if pattern:
        glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, glob)]
    cache = _StatsCache()
    infos = []
    for name in names:
        size = default_input_size(name)
        if input_size:
            size = (size[0], input_size, input_size)
        params, gmacs = cache.get(name, size) if with_stats else (None, None)
        cfg = timm.models.get_pretrained_cfg(name)
        family = family_of(name)
        infos.append(
            ModelInfo(name, family, params, gmacs, size, paper_for(family, cfg.to_dict() if cfg else None))
        )
    cache.save()
    return infos


def model_stats(name: str, input_size: tuple[int, int, int]) -> tuple[int | None, float | None]:
    """(parameters, GMACs) of an architecture at 1000 classes, computed on the meta device."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name)
        params = count_params(model)
    except Exception:  # noqa: BLE001 - some models cannot be built on meta; fall back to the CPU
        try:
            model = timm.create_model(name)
            params = count_params(model)
        except Exception:  # noqa: BLE001 - report unknown rather than fail a listing
            return None, None
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.device(device):
            macs = count_macs(model, input_size)
        return params, round(macs / 1e9, 4)
    except Exception:  # noqa: BLE001 - a model that rejects this input size still has a parameter count
        return params, None


class _StatsCache:
    """name@size -> [params, gmacs], one JSON file per timm version under the convforge cache."""

    def __init__(self) -> None:
        self.path = Path(cache_root()) / f"model_stats-timm{timm.__version__}-torch{torch.__version__}.json"
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.entries = {}
        self.dirty = False

    def get(self, name: str, size: tuple[int, int, int]) -> tuple[int | None, float | None]:
        key = f"{name}@{'x'.join(map(str, size))}"
        if key not in self.entries:
            self.entries[key] = list(model_stats(name, size))
            self.dirty = True
        params, gmacs = self.entries[key]
        return params, gmacs

    def save(self) -> None:
        if not self.dirty:
            return
        atomic_write_json(self.path, self.entries)
