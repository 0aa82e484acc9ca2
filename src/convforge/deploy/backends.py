"""The ways a model can run, behind one call: normalised float32 NCHW images in, float32 logits out.

| backend    | runs                                                         |
|------------|--------------------------------------------------------------|
| torch      | the PyTorch model in float32                                 |
| torch-bf16 | the PyTorch model under bfloat16 autocast                    |
| ort        | the exported `model.onnx` in ONNX Runtime                    |
| ort-int8   | the quantized `model.int8.onnx` in ONNX Runtime              |

A backend a model cannot use here is reported with the reason (`BackendUnavailable`), never a crash:
no exported file yet, bf16 on a CPU without bf16 instructions (it would run, emulated and slower
than float32, which is not what a user who asks for bf16 means to measure).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convforge.checkpoint import ModelSpec
from convforge.device import cpu_has_fast_bf16
from convforge.errors import ConfigError, did_you_mean
from convforge.runs import ARTIFACTS_DIR, INT8_ONNX_FILE, ONNX_FILE, RUN_FILE, WEIGHTS_FILE, Run

BACKENDS = ("torch", "torch-bf16", "ort", "ort-int8")


class BackendUnavailable(Exception):
    """This backend cannot run this model here; the message says why and what would change it."""


@dataclass
class Backend:
    name: str
    run: Callable[[torch.Tensor], np.ndarray]  # normalised NCHW float32 -> logits
    file: str | None = None  # the file it runs, for the size column

    @property
    def file_size(self) -> int | None:
        return os.path.getsize(self.file) if self.file and os.path.isfile(self.file) else None


def parse_backends(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"--backend needs at least one of {', '.join(BACKENDS)}")
    for name in names:
        if name not in BACKENDS:
            raise ConfigError(
                f"unknown backend {name!r}.{did_you_mean(name, BACKENDS)} Choose from {', '.join(BACKENDS)}"
            )
    return list(dict.fromkeys(names))


def torch_backend(model: nn.Module, *, bf16: bool = False, file: str | None = None) -> Backend:
    """`model` (eval mode, on its own device) as a backend; with `bf16`, under bfloat16 autocast. Its
    thread count is torch's, which the caller sets (`measure.cost.torch_threads`)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if bf16 and device.type == "cpu" and not cpu_has_fast_bf16():
        raise BackendUnavailable("this CPU has no bf16 instructions (avx512_bf16 or AMX); bf16 would only be emulated")
    model.eval()

    def run(images: torch.Tensor) -> np.ndarray:
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            return model(images.to(device)).float().cpu().numpy()

    return Backend("torch-bf16" if bf16 else "torch", run, file)


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind `nn.Module`'s call, so code written for PyTorch models
    (evaluation, attacks' targets, corruption studies) runs an exported file unchanged. Inference only:
    no parameters, no gradients; float32 outputs on the device the images came from."""

    def __init__(self, session: Any, precision: str = "float32"):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.precision = precision  # recorded with every figure evaluated through it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).to(images.device)


def ort_backend(path: str | os.PathLike, *, name: str = "ort", threads: int | None = None,
                device: str = "cpu", spinning: bool = True) -> Backend:  # fmt: skip
    """An ONNX file in ONNX Runtime as a backend."""
    from convforge.deploy.onnx_file import onnx_precision, open_session

    path = Path(path)
    if not path.is_file():
        command = "convforge quantize RUN DATA" if name == "ort-int8" else "convforge export RUN"
        raise BackendUnavailable(f"no {path.name} yet; make it with `{command}`")
    module = OnnxModule(open_session(path, threads, device, spinning=spinning), onnx_precision(path))
    return Backend(name, lambda images: module(images).numpy(), str(path))


class BackendModule(nn.Module):
    """A backend behind `nn.Module`'s call (images in, logits tensor out on the images' device), so a
    study written for PyTorch models (robustness) can score a run's exported or bf16 forms too."""

    def __init__(self, backend: Backend):
        super().__init__()
        self.backend = backend

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.backend.run(images)).to(images.device)


def run_backend_runner(run: Run, model: nn.Module, name: str, *, threads: int | None = None,
                       spinning: bool = True) -> Backend:  # fmt: skip
    """One of a run's backends: `model` in float32 or under bf16 autocast, or the run's exported file in
    ONNX Runtime (`BackendUnavailable` when that file does not exist yet, or bf16 cannot run here)."""
    if name in ("torch", "torch-bf16"):
        return torch_backend(model, bf16=name == "torch-bf16", file=str(run.path / WEIGHTS_FILE))
    file = run.artifact(INT8_ONNX_FILE if name == "ort-int8" else ONNX_FILE)
    if file.is_file():
        check_run_file(run, file)
    return ort_backend(file, name=name, threads=threads, spinning=spinning)


def check_run_file(run: Run, file: Path) -> None:
    """An exported file under a run's artifacts/ must come from that run's weights and model.json."""
    from convforge.checkpoint import read_verified_spec
    from convforge.deploy.onnx_file import check_exported_from, onnx_metadata

    spec, weights_sha256 = read_verified_spec(run.path)
    check_exported_from(file, onnx_metadata(file), weights_sha256, spec)


def run_backend(run: Run, model: nn.Module, name: str, *, threads: int | None = None) -> nn.Module:
    """A run's backend as a module (`model` itself for torch), for code written for PyTorch models."""
    return model if name == "torch" else BackendModule(run_backend_runner(run, model, name, threads=threads))


def file_backend(path: str | os.PathLike) -> str:
    """The backend name of a run's exported file (ort, ort-int8), else the file's name."""
    return {ONNX_FILE: "ort", INT8_ONNX_FILE: "ort-int8"}.get(Path(path).name, Path(path).name)


def open_model(
    source: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    classes: list[str] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    size: int | None = None,
) -> tuple[nn.Module, ModelSpec, Run | None]:
    """A run folder's PyTorch model, or an ONNX file run by ONNX Runtime (`OnnxModule`), with its
    description and the run it belongs to (an `.onnx` under RUN/artifacts/ belongs to RUN; any other
    has none). A file without convforge metadata needs `classes`, `mean` and `std` (and `size` when its
    input shape is not fixed)."""
    from convforge.checkpoint import load_model
    from convforge.deploy.onnx_file import onnx_precision, open_session, spec_from_onnx

    path = Path(source)
    if path.suffix == ".onnx":
        spec = spec_from_onnx(path, classes=classes, mean=mean, std=std, input_size=(size, size) if size else None)
        module = OnnxModule(open_session(path, threads, str(device)), onnx_precision(path))
        folder = path.resolve().parent.parent
        owner = Run(folder) if path.parent.name == ARTIFACTS_DIR and (folder / RUN_FILE).is_file() else None
        if owner is not None and owner.has_model:  # its figures are recorded in the run: it must be the run's
            check_run_file(owner, path)
        return module, spec, owner
    run = Run.open(path)
    model, spec = load_model(run.path, device=device)
    return model, spec, run
