"""The model a server holds: one backend of a run (or an .onnx file), its description and lineage."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convforge.checkpoint import ModelSpec
from convforge.data.transforms import PIXEL_SCALE, resize_rule
from convforge.deploy.backends import (
    Backend,
    BackendUnavailable,
    file_backend,
    ort_backend,
    run_backend_runner,
)
from convforge.errors import ConfigError, UserError
from convforge.runs import MODEL_FILE, WEIGHTS_FILE, Run


@dataclass
class ServingModel:
    name: str
    spec: ModelSpec
    backend: Backend  # normalised NCHW float32 -> logits
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.in_chans, *self.spec.preprocessing.input_size)

    def describe(self) -> dict[str, Any]:
        pre = self.spec.preprocessing
        return {
            "name": self.name,
            "architecture": self.spec.architecture,
            "classes": self.classes,
            "input": {"channels": self.spec.in_chans, "size": list(pre.input_size), "channel_order": "RGB"
                      if self.spec.in_chans == 3 else "L", "mean": list(pre.mean), "std": list(pre.std),
                      "resize": resize_rule(pre), "scale": PIXEL_SCALE},  # fmt: skip
            "backend": self.backend.name,
            "file": os.path.basename(self.backend.file) if self.backend.file else None,
            "lineage": self.lineage,
        }


def open_serving_model(
    source: str | os.PathLike,
    backend: str = "torch",
    *,
    device: str = "cpu",
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> ServingModel:
    """A run folder's `backend` (its weights in PyTorch, or its exported / INT8 file in ONNX Runtime), or
    an .onnx file in ONNX Runtime. A backend that cannot run (no such file yet, bf16 without CPU support)
    is a ConfigError that says how to make it."""
    from convforge.checkpoint import load_model
    from convforge.deploy.onnx_file import spec_from_onnx

    path = Path(source)
    try:
        if path.suffix == ".onnx":
            if backend not in ("ort", file_backend(path)):
                raise ConfigError(f"{path} is an ONNX file: it runs in ONNX Runtime only (leave out --backend, "
                                  "or give --backend ort)")  # fmt: skip
            spec = spec_from_onnx(path, **_onnx_keywords(overrides or {}))
            runner = ort_backend(path, name=file_backend(path), threads=threads, spinning=False)
            return ServingModel(path.name, spec, runner, {"file": str(path.resolve())})
        run = Run.open(path)
        if not run.has_model:
            raise UserError(f"{run.path} holds no trained model yet (no {WEIGHTS_FILE}); train it first")
        model, spec = load_model(run.path, device=device)
        runner = run_backend_runner(run, model, backend, threads=threads, spinning=False)
    except BackendUnavailable as exc:
        raise ConfigError(f"backend {backend} cannot run here: {exc}") from None
    return ServingModel(run.name, spec, runner, run_lineage(run))


def run_lineage(run: Run) -> dict[str, Any]:
    """Where the served model comes from: the run, its ancestors, its weights and its test figures."""
    info = run.info
    weights = json.loads((run.path / MODEL_FILE).read_text()).get("weights") or {}
    return {
        "run": run.name,
        "path": str(run.path),
        "ancestors": [ancestor.name for ancestor in run.lineage()[:-1]],  # oldest first
        "stage": info.get("stage"),
        "created": info.get("created"),
        "command": info.get("command"),
        "git_sha": info.get("git_sha"),
        "weights_sha256": weights.get("sha256"),
        "test": info.get("test"),
    }


def _onnx_keywords(overrides: dict[str, Any]) -> dict[str, Any]:
    size = overrides.get("size")
    return {"classes": overrides.get("classes"), "mean": overrides.get("mean"), "std": overrides.get("std"),
            "input_size": (size, size) if size else None}  # fmt: skip
