"""`convforge bench`: one model, several backends, several batch sizes, one table.

What a source offers: a run folder has its PyTorch model and, once exported and quantized, its ONNX
files; a model name is the architecture with fresh weights (latency does not depend on the values);
an `.onnx` file runs in ONNX Runtime only. Every backend is timed the same way
(`convforge.measure.paired.time_interleaved`: warm-up, then rounds that call every backend once, in
an order that rotates, within a time budget) on the same random input, with the thread count set
explicitly for both PyTorch and ONNX Runtime and recorded (ONNX Runtime's threads sleep between calls,
as in `convforge serve`). A speed-up is the median of per-round
ratios against the first backend, with its 95% interval; one the machine was too busy to measure
(interval wider than `NOISY_SPREAD`) is flagged `noisy`, and tables print that instead of the figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convforge.checkpoint import ModelSpec
from convforge.deploy.backends import Backend, BackendUnavailable, ort_backend, torch_backend
from convforge.errors import UserError
from convforge.measure.cost import footprint, torch_threads
from convforge.measure.latency import Latency
from convforge.measure.paired import time_interleaved
from convforge.runs import INT8_ONNX_FILE, ONNX_FILE, RUN_FILE, WEIGHTS_FILE, Run

# Each backend's turn in a round: one untimed call to wake its runtime's threads after another runtime ran
# (the first call after a switch measured 1.1x slower for PyTorch and 1.6x for ONNX Runtime, the next ones
# as fast as alone), then three timed calls. ONNX Runtime's threads do not spin between calls (as in
# `convforge serve`): spinning, they took the cores from PyTorch's turn and both were flagged too noisy
SETTLE, TURN = 1, 3


@dataclass
class BenchRow:
    backend: str
    batch: int
    latency: Latency | None
    unavailable: str | None = None
    speedup: float | None = None  # against the first backend at this batch size: median of per-round ratios
    file_size: int | None = None
    speedup_interval: dict[str, Any] | None = None  # Ratio.to_dict(): low, high, rounds, noisy

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "batch": self.batch, "unavailable": self.unavailable, "speedup": self.speedup,
                "speedup_interval": self.speedup_interval, "file_size": self.file_size,
                **(self.latency.to_dict() if self.latency else {})}  # fmt: skip


@dataclass
class BenchResult:
    source: str
    input_size: tuple[int, int, int]
    threads: int
    params: int | None
    macs: int | None
    peak_activation_bytes: dict[int, int] = field(default_factory=dict)
    rows: list[BenchRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "input_size": list(self.input_size), "threads": self.threads,
                "params": self.params, "macs": self.macs, "peak_activation_bytes": self.peak_activation_bytes,
                "rows": [row.to_dict() for row in self.rows]}  # fmt: skip


@dataclass
class BenchSource:
    """What `bench` measures: a PyTorch model and/or ONNX files, with the input they take."""

    name: str
    input_size: tuple[int, int, int]
    model: torch.nn.Module | None = None
    onnx: str | None = None
    int8: str | None = None
    run: Run | None = None
    weights_file: str | None = None


def open_source(source: str | os.PathLike, *, input_size: int | None = None) -> BenchSource:
    """A run folder, an `.onnx` file or a model name (`input_size` overrides the side length)."""
    path = Path(source)
    if path.suffix == ".onnx":
        from convforge.deploy.onnx_file import onnx_input_size

        kind = "int8" if path.name.endswith(".int8.onnx") else "onnx"
        return BenchSource(path.name, onnx_input_size(path, input_size), **{kind: str(path)})
    if (path / RUN_FILE).is_file():
        from convforge.checkpoint import load_model

        run = Run.open(path)
        if not run.has_model:
            raise UserError(f"{run.path} holds no trained model yet (no {WEIGHTS_FILE}); train it first")
        model, spec = load_model(run.path)
        return BenchSource(run.name, _size(spec, input_size), model, str(run.artifact(ONNX_FILE)),
                           str(run.artifact(INT8_ONNX_FILE)), run, str(run.path / WEIGHTS_FILE))  # fmt: skip
    if path.exists():
        raise UserError(f"{path} is neither a run folder (it has no {RUN_FILE}) nor an .onnx file")
    from convforge.models import create_model
    from convforge.models.info import default_input_size

    name = str(source)
    model = create_model(name).eval()
    channels, height, width = default_input_size(name)
    return BenchSource(name, (channels, input_size or height, input_size or width), model)


def _size(spec: ModelSpec, side: int | None) -> tuple[int, int, int]:
    height, width = (side, side) if side else spec.preprocessing.input_size
    return spec.in_chans, height, width


def make_backend(source: BenchSource, name: str, threads: int | None) -> Backend:
    if name in ("torch", "torch-bf16"):
        if source.model is None:
            raise BackendUnavailable("an ONNX file has no PyTorch model; bench the run folder for torch")
        return torch_backend(source.model, bf16=name == "torch-bf16", file=source.weights_file)
    path = source.int8 if name == "ort-int8" else source.onnx
    if path is None:
        kind = "an INT8" if name == "ort-int8" else "an exported"
        raise BackendUnavailable(f"{source.name} is not a run folder, so it has no {kind} ONNX file")
    return ort_backend(path, name=name, threads=threads, spinning=False)


def bench(
    source: BenchSource,
    backends: list[str],
    batches: list[int],
    *,
    threads: int | None = None,
    budget_seconds: float = 2.0,
    warmup: int = 3,
) -> BenchResult:
    """Latency of every backend at every batch size; params, MACs and peak activation memory of the
    PyTorch model when there is one."""
    with torch_threads(threads) as used:
        model = source.model
        result = BenchResult(source.name, source.input_size, used, None, None)
        if model is not None:
            result.params, result.macs, result.peak_activation_bytes = footprint(model, source.input_size, batches)
        opened: dict[str, Backend | str] = {}
        for name in backends:
            try:
                opened[name] = make_backend(source, name, used)
            except BackendUnavailable as exc:
                opened[name] = str(exc)
        generator = torch.Generator().manual_seed(0)
        available = {name: backend for name, backend in opened.items() if not isinstance(backend, str)}
        for batch in batches:
            images = torch.randn(batch, *source.input_size, generator=generator)
            calls = {name: (lambda b=backend, x=images: b.run(x)) for name, backend in available.items()}
            # every backend in every round, so a busy moment of the machine lands on all of them alike;
            # the budget is per backend, as it was when each was timed alone
            timed = time_interleaved(calls, batch=batch, warmup=warmup, budget_seconds=budget_seconds * len(calls),
                                     turn=TURN, settle=SETTLE) if calls else None  # fmt: skip
            baseline = next(iter(calls), None)
            for name in backends:
                backend = opened[name]
                if isinstance(backend, str):
                    result.rows.append(BenchRow(name, batch, None, backend))
                    continue
                ratio = timed.ratio(baseline, name)
                result.rows.append(BenchRow(name, batch, timed.latency(name), speedup=ratio.median,
                                            file_size=backend.file_size, speedup_interval=ratio.to_dict()))  # fmt: skip
    return result


def record_bench(run: Run, result: BenchResult) -> None:
    from convforge.runs import hardware_fingerprint

    run.append_metrics({"kind": "bench", **result.to_dict(), "hardware": hardware_fingerprint()})
