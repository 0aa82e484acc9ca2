"""Saving and loading models and training state: safetensors + JSON, never pickle.

A weights file is self-verifying (`convforge.tensorfile`): its safetensors header carries the
model description and a digest of every tensor, checked on loading. `model.json` beside the
weights is the same description for people and tools; loading compares every field of it (architecture, classes,
channels, preprocessing, model keywords) with the description in the weights' header and refuses a
difference, so a hand-edited model.json cannot relabel predictions. The digest proves integrity, not
provenance: a run folder from someone else is as trustworthy as its sender, so model keywords that
would download or read other files (`pretrained`, `checkpoint_path`, URLs, file names) are refused.

The training state (checkpoints/last.safetensors) holds the model, its EMA, the optimizer's tensors
and, in the JSON metadata, everything else needed to resume bit for bit: epoch, step, optimizer
hyperparameters, scheduler state and the best metric so far.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convforge.data.transforms import Preprocessing
from convforge.errors import CheckpointError
from convforge.files import atomic_write_json
from convforge.measure.counting import count_params
from convforge.models import create_model
from convforge.models.factory import check_state_dict_fits, renamed_for
from convforge.models.fold import fold_model
from convforge.models.resize import resize_to_shapes
from convforge.runs import MODEL_FILE, WEIGHTS_FILE
from convforge.tensorfile import FORMAT, read_tensors, sealed_description, write_tensors

# Fields of model.json that must equal the weights' own description; a difference changes the model.
SPEC_FIELDS = (
    "architecture", "num_classes", "in_chans", "classes", "preprocessing", "model_kwargs", "shapes", "folded",
)
# Model keywords that make building a model reach outside its run folder (downloads, other files).
_OUTSIDE_KWARGS = ("pretrained", "checkpoint", "url", "file", "cache_dir", "hf_hub")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".npz", ".h5", ".onnx", ".pkl")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model from its weights: architecture, kwargs, classes,
    preprocessing, and the shape of every tensor (`shapes`, recorded by `save_model`), so a model
    whose layers were narrowed (pruned) is rebuilt with its own widths. A `folded` model (BatchNorms
    folded and blocks re-parameterized, models/fold.py) records the shapes it had before folding: it
    is rebuilt at those widths, then folded again, then loaded."""

    architecture: str
    num_classes: int
    in_chans: int
    classes: list[str]
    preprocessing: Preprocessing
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Left out of == and repr: two specs compare as the same task and preprocessing; the shapes are
    # compared with the weights' own by `check_description_matches`.
    shapes: dict[str, list[int]] | None = field(default=None, compare=False, repr=False)
    folded: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        check_self_contained_kwargs(self.model_kwargs, "model keywords")

    def build(self) -> nn.Module:
        """The architecture with freshly initialised weights (load_model fills them), its layers
        resized to the recorded shapes, folded if it was saved folded."""
        model = create_model(
            self.architecture, num_classes=self.num_classes, in_chans=self.in_chans, **self.model_kwargs
        )
        if self.shapes:  # recorded under the names the weights were saved with: renamed as the load will
            shapes = {name: torch.empty(shape, device="meta") for name, shape in self.shapes.items()}
            renamed = {name: list(t.shape) for name, t in renamed_for(model, shapes).items()}
            resize_to_shapes(model, renamed, self.architecture)
        if self.folded:
            model = fold_model(model, inplace=True).model
        return model

    def folded_from(self, model: nn.Module) -> ModelSpec:
        """This spec for `model` (not yet folded) once it is folded: `save_model` then records these
        widths, which the folded weights alone no longer describe."""
        return dataclasses.replace(self, shapes=tensor_shapes(model.state_dict()), folded=True)


def tensor_shapes(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Each tensor's shape in a state dict, as model.json records it."""
    return {name: list(tensor.shape) for name, tensor in state.items()}


def check_self_contained_kwargs(kwargs: dict[str, Any], source: str) -> None:
    """Refuse model keywords that would download weights or read files outside the run folder."""
    for name, value in kwargs.items():
        reaches_out = any(word in name.lower() for word in _OUTSIDE_KWARGS) and value not in (False, None)
        texts = list(_strings(value))
        if reaches_out or any("://" in t or t.lower().endswith(_WEIGHT_SUFFIXES) for t in texts):
            raise CheckpointError(
                f"{source}: {name}={value!r} would download weights or read another file when the model is "
                "built; a trained model needs neither (its weights are in the run folder). Remove it "
                "(train with --pretrained to start from official weights)"
            )


def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


# ------------------------------------------------------------------------------ models
def save_model(
    folder: str | os.PathLike, model: nn.Module, spec: ModelSpec, extra: dict | None = None
) -> Path:
    """Write model.safetensors and model.json into `folder` (a run folder). A `spec.folded` model is
    described by the widths before folding (`ModelSpec.folded_from`)."""
    folder = Path(folder)
    state = model.state_dict()
    if spec.folded and spec.shapes is None:
        raise ValueError("a folded model is saved with the widths it had before folding: spec.folded_from(model)")
    description = {
        "format": FORMAT,
        **(spec if spec.folded else dataclasses.replace(spec, shapes=tensor_shapes(state))).to_dict(),
        "parameters": count_params(model),
        **(extra or {}),
    }
    digest = write_tensors(folder / WEIGHTS_FILE, state, description)
    atomic_write_json(
        folder / MODEL_FILE, {**description, "weights": {"file": WEIGHTS_FILE, "sha256": digest}}
    )
    return folder / WEIGHTS_FILE


def read_model_spec(folder: str | os.PathLike) -> ModelSpec:
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {MODEL_FILE}: it holds no trained model yet")
    try:
        data = json.loads(path.read_text())
        check_self_contained_kwargs(data.get("model_kwargs") or {}, str(path))
        return ModelSpec.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # JSONDecodeError is one
        raise CheckpointError(f"{path} is damaged ({exc})") from None


def read_verified_spec(folder: str | os.PathLike) -> tuple[ModelSpec, str]:
    """model.json checked against its weights file's header (the description it was saved with, and
    the weights digest), without loading a tensor: for commands that use a run's exported files, not
    its weights. The spec and the weights' digest."""
    folder = Path(folder)
    spec = read_model_spec(folder)
    description, digest = sealed_description(folder / WEIGHTS_FILE)
    _check_recorded_digest(folder, digest)
    check_description_matches(spec, description, folder)
    return spec, digest


def _check_recorded_digest(folder: Path, digest: str) -> None:
    try:
        recorded = (json.loads((folder / MODEL_FILE).read_text()).get("weights") or {}).get("sha256")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{folder / MODEL_FILE} is damaged ({exc})") from None
    if recorded != digest:
        raise CheckpointError(
            f"{folder / MODEL_FILE} and {WEIGHTS_FILE} disagree (digest {str(recorded)[:12]} vs {digest[:12]}); "
            "one of them was replaced or modified"
        )


def load_model(
    folder: str | os.PathLike, device: str | torch.device = "cpu", expect: ModelSpec | None = None
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of a run folder, verify and load its weights, return it in eval mode.

    `expect`, when given, is the model the caller needs; a checkpoint with another architecture or
    class count is refused with a message that names both.
    """
    folder = Path(folder)
    spec = read_model_spec(folder)
    tensors, description, digest = read_tensors(folder / WEIGHTS_FILE)
    _check_recorded_digest(folder, digest)
    check_description_matches(spec, description, folder)
    if expect is not None:
        check_compatible(spec, expect, str(folder))
    model = spec.build()
    tensors = renamed_for(model, tensors)  # a run saved before a block renamed its tensors loads too
    check_state_dict_fits(model, tensors, str(folder / WEIGHTS_FILE))
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), spec


def check_description_matches(spec: ModelSpec, description: dict[str, Any], folder: Path) -> None:
    """model.json must describe the very model its weights were saved as, field by field."""
    recorded = spec.to_dict()
    try:
        saved = ModelSpec.from_dict(description).to_dict()
    except (KeyError, TypeError, ValueError):
        saved = description
    differing = [name for name in SPEC_FIELDS if recorded.get(name) != saved.get(name)]
    if differing:
        name = differing[0]
        raise CheckpointError(
            f"{folder / MODEL_FILE} does not describe the weights in {WEIGHTS_FILE}: "
            f"{', '.join(differing)} differ ({name} is {recorded.get(name)!r} in {MODEL_FILE} but "
            f"{saved.get(name)!r} in the weights). {MODEL_FILE} was edited by hand or comes from another run; "
            f"restore it from the run it belongs to"
        )


def check_compatible(found: ModelSpec, expected: ModelSpec, source: str) -> None:
    if found.architecture != expected.architecture or found.num_classes != expected.num_classes:
        raise CheckpointError(
            f"{source} holds {found.architecture} with {found.num_classes} classes, but "
            f"{expected.architecture} with {expected.num_classes} classes is needed"
        )
    if found.in_chans != expected.in_chans:
        raise CheckpointError(
            f"{source} expects {found.in_chans}-channel images, but {expected.in_chans}-channel input is needed"
        )


# ---------------------------------------------------------------------- training state
def save_train_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    state: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Model, EMA and optimizer tensors plus JSON `state` (epoch, scheduler, ...), in one atomic file.

    `extra_tensors` (generator states of a mid-epoch checkpoint, say) come back from
    `load_train_state` under the state's "extra_tensors" key."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    optimizer_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    metadata = {
        **state,
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
    }
    write_tensors(path, tensors, metadata)


def load_train_state(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
) -> dict[str, Any]:
    """Restore what `save_train_state` wrote into live objects; return the JSON state."""
    tensors, metadata, _ = read_tensors(path)
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_dict_fits(model, model_state, str(path))
    model.load_state_dict(model_state, strict=True)
    if ema is not None:
        ema_state = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")}
        if ema_state:
            ema.load_state_dict(ema_state, strict=True)
    optimizer_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for index, values in metadata.pop("optimizer_scalars", {}).items():
        optimizer_state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict(
        {"state": optimizer_state, "param_groups": metadata.pop("optimizer_param_groups")}
    )
    metadata["extra_tensors"] = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return metadata
