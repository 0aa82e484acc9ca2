"""`convforge quantize RUN DATA`: the run's exported model.onnx to artifacts/model.int8.onnx, with
fp32 and INT8 evaluated side by side on the test split and timed at batch 1 and 64."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from convforge.checkpoint import read_verified_spec
from convforge.compress.quantize import (
    DEFAULT_MIN_AGREEMENT,
    METHODS,
    Attempt,
    calibration_batches,
    check_method,
    prepare,
    search,
)
from convforge.data.sample import align_classes, read_pixels, stratified_positions
from convforge.data.spec import load_dataset
from convforge.deploy.backends import OnnxModule
from convforge.deploy.bench import BenchSource, bench
from convforge.deploy.onnx_file import (
    SEAL,
    check_exported_from,
    metadata_digest,
    onnx_metadata,
    open_session,
    set_metadata,
)
from convforge.errors import ConfigError, DatasetError, RunFolderError, UserError
from convforge.files import atomic_write_bytes
from convforge.runs import INT8_ONNX_FILE, ONNX_FILE, Run
from convforge.train.evaluate import evaluate


@dataclass
class QuantizeResult:
    path: str
    size_bytes: int
    fp32_size_bytes: int
    method: str
    calibration_images: int
    kept_fp32: list[str]
    fp32_top1: float
    int8_top1: float
    agreement: float  # share of test images where fp32 and INT8 predict the same class
    max_drop: float
    min_agreement: float
    within_budget: bool
    test_images: int
    latency_ms: dict[str, dict[int, float]] = field(default_factory=dict)  # backend -> batch -> p50
    images_per_second: dict[str, dict[int, float]] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    speedup: dict[int, dict[str, Any]] = field(default_factory=dict)  # batch -> INT8 against fp32, timed interleaved

    @property
    def drop_points(self) -> float:
        return (self.fp32_top1 - self.int8_top1) * 100

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop_points": self.drop_points}


def quantize_run(
    run_path: str | os.PathLike,
    data: str,
    *,
    calibration: int = 512,
    method: str = "minmax",
    max_drop: float = 1.0,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    split: str | None = None,
    seed: int = 0,
    op_types: list[str] | None = None,
    threads: int | None = None,
    strict: bool = False,
    force: bool = False,
    latency_seconds: float = 2.0,
) -> QuantizeResult:
    """Quantize RUN/artifacts/model.onnx with calibration images from DATA's training split, evaluate
    both on DATA's test split (`split`), and write model.int8.onnx and a "quantize" record."""
    check_method(method)
    if max_drop < 0:
        raise ConfigError(f"--max-drop is the most top-1 points INT8 may lose; it cannot be negative ({max_drop})")
    if not 0 <= min_agreement <= 1:
        raise ConfigError(f"--min-agreement is a share of the test images, in [0, 1]; got {min_agreement}")
    if calibration < 1:
        raise ConfigError(f"--calibration must be at least 1 image, got {calibration}")
    run = Run.open(run_path)
    source = run.artifact(ONNX_FILE)
    if not source.is_file():
        raise RunFolderError(f"{run.path} has no {ONNX_FILE} yet; export it first: convforge export {run.path}")
    target = run.artifact(INT8_ONNX_FILE)
    if target.exists() and not force:
        raise UserError(f"{target} exists already; --force replaces it")
    spec, weights_sha256 = read_verified_spec(run.path)  # model.json as its weights were saved
    fp32_bytes = source.read_bytes()
    fp32_metadata = onnx_metadata(source)  # and a damaged file fails here with a clear message
    check_exported_from(source, fp32_metadata, weights_sha256, spec)

    dataset = load_dataset(data, strict=strict, channels=spec.in_chans)
    if "train" not in dataset.splits:
        raise DatasetError(f"{data} has no training split to calibrate on; it has {sorted(dataset.splits)}")
    train = align_classes(dataset.splits["train"], spec.classes, data)
    if calibration > len(train):
        raise UserError(f"--calibration {calibration} is more than the {len(train)} training images of {data}")
    if split is not None and split not in dataset.splits:
        raise DatasetError(f"{data} has no {split!r} split; it has {sorted(dataset.splits)}")
    test = align_classes(dataset.splits[split] if split else dataset.eval_split(), spec.classes, data)
    pixels, positions, unreadable = read_pixels(train, stratified_positions(train.labels, calibration, seed))
    batches = calibration_batches(pixels, spec.preprocessing)

    def evaluated(onnx_bytes: bytes):
        return evaluate(OnnxModule(open_session(onnx_bytes, threads)), test, spec.preprocessing, batch_size=64)

    fp32 = evaluated(fp32_bytes)
    def scored(onnx_bytes: bytes) -> tuple[float, float]:
        result = evaluated(onnx_bytes)
        return result.top1, float(np.mean(result.predictions == fp32.predictions))

    found = search(prepare(fp32_bytes), batches, scored, method=method, max_drop=max_drop, fp32_top1=fp32.top1,
                   op_types=op_types, min_agreement=min_agreement)  # fmt: skip
    int8 = evaluated(found.model_bytes)
    int8_bytes = _with_metadata(found.model_bytes, fp32_metadata)
    atomic_write_bytes(target, int8_bytes)

    result = QuantizeResult(
        path=run.relative(target), size_bytes=len(int8_bytes), fp32_size_bytes=len(fp32_bytes), method=found.method,
        calibration_images=len(positions), kept_fp32=found.kept_fp32, fp32_top1=fp32.top1, int8_top1=int8.top1,
        agreement=float(np.mean(fp32.predictions == int8.predictions)), max_drop=max_drop, min_agreement=min_agreement,
        within_budget=found.within_budget, test_images=int8.images, attempts=found.attempts,
    )  # fmt: skip
    # the same timing as `convforge bench`, on the two files now in the run
    timing = bench(BenchSource(run.name, (spec.in_chans, *spec.preprocessing.input_size), onnx=str(source),
                               int8=str(target)), ["ort", "ort-int8"], [1, 64], threads=threads,
                   budget_seconds=latency_seconds)  # fmt: skip
    for row in timing.rows:
        result.latency_ms.setdefault(row.backend, {})[row.batch] = row.latency.p50_ms
        result.images_per_second.setdefault(row.backend, {})[row.batch] = row.latency.images_per_second
        if row.backend == "ort-int8":
            result.speedup[row.batch] = row.speedup_interval
    run.append_metrics({"kind": "quantize", "data": data, "split": test.name, "methods_available": list(METHODS),
                        "skipped_files": len(dataset.skipped) + unreadable, **result.to_dict()})  # fmt: skip
    return result


def _with_metadata(int8_bytes: bytes, fp32_metadata: dict[str, str]) -> bytes:
    """The INT8 model carries the fp32 file's metadata (classes, preprocessing, lineage) and says it is INT8."""
    import onnx

    model = onnx.load_from_string(int8_bytes)
    set_metadata(model, {**fp32_metadata, "quantization": "int8 static QDQ (onnxruntime)"})
    # sealed again over everything the file now says (ONNX Runtime's pre-processing adds entries of its own)
    written = {entry.key: entry.value for entry in model.metadata_props}
    set_metadata(model, {SEAL: metadata_digest(written)})
    return model.SerializeToString()
