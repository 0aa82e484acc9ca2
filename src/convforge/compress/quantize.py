"""Static INT8 post-training quantization of a run's exported model, with ONNX Runtime, checked on
the run's test data and searched until the accuracy budget holds.

ONNX Runtime does the quantization (`quant_pre_process`, then `quantize_static` in QDQ format with
per-channel weights); convforge does what it leaves to the user: calibration images drawn seeded and
stratified from the training split and preprocessed like evaluation, evaluation of fp32 and INT8
through `convforge eval`'s own code path, latency of both, and the search when INT8 loses more top-1
than `max_drop` points or agrees with fp32 on fewer than `min_agreement` of the test images (a model near
chance can keep its top-1 while changing a third of its answers):

1. the other calibration methods (MinMax, Entropy, Percentile), keeping the best;
2. then the layers whose quantization hurts most stay in fp32, a growing number at a time (1, 2, 4,
   ...), until the budget holds. A layer's harm is measured by comparing activations: the relative
   error of its output in the INT8 model against fp32, minus the error already in its inputs, so a
   layer is not blamed for what came before it. (Quantune, among our sources, automates such a
   configuration search; ORT leaves it to the user.)

Activations are unsigned and weights signed 8-bit (U8S8, what ORT's x86 kernels are fastest at).
Without 8-bit dot-product instructions (VNNI), U8S8 products can saturate, so weights use 7 bits
(`reduce_range`) there. LayerNormalization and InstanceNormalization are left in fp32 by default:
quantizing them makes ConvNeXt-like models slower, not faster.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convforge.data.transforms import Preprocessing, eval_transform
from convforge.device import cpu_has_vnni
from convforge.errors import ConfigError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_MIN_AGREEMENT = 0.95  # share of test images on which INT8 must predict what fp32 predicts
SKIPPED_OP_TYPES = ("LayerNormalization", "InstanceNormalization")  # slower quantized, see the docstring


@dataclass
class Attempt:
    method: str
    kept_fp32: list[str]
    int8_top1: float
    drop_points: float
    agreement: float = 1.0  # share of test images with fp32's prediction

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def shortfall(self, max_drop: float, min_agreement: float) -> float:
        """How far outside the budget, in points (top-1 lost beyond `max_drop`, or predictions changed
        beyond 1 - `min_agreement`); 0 within it."""
        return max(self.drop_points - max_drop, 100 * (min_agreement - self.agreement), 0.0)


@dataclass
class QuantizeSearch:
    """The chosen configuration and every one tried."""

    method: str
    kept_fp32: list[str]
    model_bytes: bytes = field(repr=False)
    attempts: list[Attempt] = field(default_factory=list)
    within_budget: bool = True


def check_method(name: str) -> str:
    from convforge.errors import did_you_mean

    if name not in METHODS:
        raise ConfigError(
            f"unknown calibration method {name!r}.{did_you_mean(name, METHODS)} Choose from {', '.join(METHODS)}"
        )
    return name


def calibration_batches(pixels: np.ndarray, preprocessing: Preprocessing, batch_size: int = 32) -> list[np.ndarray]:
    """uint8 NHWC images -> the model's float32 NCHW input, in batches (the same transform as eval)."""
    batches = []
    for start in range(0, len(pixels), batch_size):
        x = eval_transform(torch.from_numpy(pixels[start : start + batch_size]), preprocessing)
        batches.append(x.contiguous().numpy())
    return batches


def prepare(fp32_onnx: bytes) -> bytes:
    """ONNX Runtime's pre-processing for quantization (graph optimisation, shape inference). Layer
    names refer to this graph: quantization, layer exclusion and the harm ranking all work on it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="convforge-quantize-") as scratch:
        source, prepared = Path(scratch) / "fp32.onnx", Path(scratch) / "prepared.onnx"
        source.write_bytes(fp32_onnx)
        quant_pre_process(str(source), str(prepared))
        return prepared.read_bytes()


def quantize_bytes(prepared_onnx: bytes, batches: list[np.ndarray], method: str, *, kept_fp32: list[str] = (),
                   op_types: list[str] | None = None) -> bytes:  # fmt: skip
    """One static INT8 quantization of a prepared fp32 ONNX model (bytes in, bytes out)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    input_name = _input_name(prepared_onnx)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.items, None)
            return None if batch is None else {input_name: batch}

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]  # fmt: skip
    # ORT's own default (every op it can quantize: Add, Mul and pooling too, so a residual network
    # stays in INT8 between convolutions) less the op types that are slower quantized
    wanted = op_types or sorted(op for op in {*QDQRegistry, *QLinearOpsRegistry} if op not in SKIPPED_OP_TYPES)
    with tempfile.TemporaryDirectory(prefix="convforge-quantize-") as scratch:
        source, output = Path(scratch) / "prepared.onnx", Path(scratch) / "int8.onnx"
        source.write_bytes(prepared_onnx)
        quantize_static(
            str(source), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=not cpu_has_vnni(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=calibrate, op_types_to_quantize=wanted, nodes_to_exclude=list(kept_fp32),
            extra_options={"CalibMovingAverage": True} if method == "minmax" else None,
        )  # fmt: skip
        return output.read_bytes()


def _input_name(onnx_bytes: bytes) -> str:
    import onnx

    return onnx.load_from_string(onnx_bytes).graph.input[0].name


def layer_harm(prepared_onnx: bytes, int8_onnx: bytes, inputs: np.ndarray) -> dict[str, float]:
    """For each quantized compute node (Conv, Gemm, MatMul), the relative error of its output in the
    INT8 model against fp32, less the largest error already in its inputs; most harmful first."""
    import onnx

    from convforge.deploy.onnx_file import open_session

    fp32 = onnx.load_from_string(prepared_onnx)
    int8 = onnx.load_from_string(int8_onnx)
    in_int8 = {output for node in int8.graph.node for output in node.output}
    # the quantizer folds a Relu into the Conv before it (uint8 clamps at zero anyway), so a layer's
    # output is read under the name it has in the INT8 graph, which the fp32 graph also computes
    compute = {node.name: node.output[0] for node in int8.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")}
    tensors = [out for node in fp32.graph.node for out in node.output if out in in_int8]
    outputs = []
    for model in (fp32, int8):
        known = {value.name for value in model.graph.output}
        for name in tensors:
            if name not in known:
                model.graph.output.add(name=name)
        session = open_session(model.SerializeToString())
        names = [o.name for o in session.get_outputs()]
        outputs.append(dict(zip(names, session.run(names, {session.get_inputs()[0].name: inputs}), strict=True)))
    reference, quantized = outputs

    def error(name: str) -> float:
        expected = reference[name].astype(np.float64)
        return float(np.linalg.norm(quantized[name] - expected) / (np.linalg.norm(expected) + 1e-12))

    errors = {name: error(name) for name in tensors}
    harm = {}
    for node in fp32.graph.node:
        output = compute.get(node.name)
        if output in errors:
            inherited = max((errors[i] for i in node.input if i in errors), default=0.0)
            harm[node.name] = errors[output] - inherited
    return dict(sorted(harm.items(), key=lambda item: -item[1]))


def search(prepared_onnx: bytes, batches: list[np.ndarray], score, *, method: str, max_drop: float,
           fp32_top1: float, op_types: list[str] | None = None,
           min_agreement: float = DEFAULT_MIN_AGREEMENT) -> QuantizeSearch:  # fmt: skip
    """Quantize with `method`; while the budget does not hold (top-1 from `score(bytes) -> (top1, agreement
    with fp32)` drops more than `max_drop` points, or agreement is below `min_agreement`), try the other
    methods, then keep the most harmful layers in fp32, 1, 2, 4, ... of them."""
    attempts: list[Attempt] = []

    def attempt(name: str, kept: list[str]) -> tuple[Attempt, bytes]:
        quantized = quantize_bytes(prepared_onnx, batches, name, kept_fp32=kept, op_types=op_types)
        top1, agreement = score(quantized)
        attempts.append(Attempt(name, list(kept), top1, (fp32_top1 - top1) * 100, agreement))
        log.info("INT8 with %s calibration%s: top-1 %.2f%% (fp32 %.2f%%), agreement with fp32 %.2f%%", name,
                 f", {len(kept)} layer(s) in fp32" if kept else "", 100 * top1, 100 * fp32_top1,
                 100 * agreement)  # fmt: skip
        return attempts[-1], quantized

    def outside(tried: Attempt) -> float:
        return tried.shortfall(max_drop, min_agreement)

    best, best_bytes = attempt(method, [])
    for other in (m for m in METHODS if m != method):
        if outside(best) == 0:
            break
        tried, data = attempt(other, [])
        if outside(tried) < outside(best):
            best, best_bytes = tried, data
    if outside(best) > 0:
        ranking = list(layer_harm(prepared_onnx, best_bytes, batches[0]))
        count = 1
        while outside(best) > 0 and count <= len(ranking):
            tried, data = attempt(best.method, ranking[:count])
            if outside(tried) < outside(best) or outside(tried) == 0:
                best, best_bytes = tried, data
            count *= 2
    return QuantizeSearch(best.method, best.kept_fp32, best_bytes, attempts, outside(best) == 0)
