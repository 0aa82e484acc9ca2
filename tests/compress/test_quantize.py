"""INT8 quantization: a real run quantized and checked against fp32, the configuration search on a
model whose accuracy the test decides, and clear messages for every mistake."""

import json

import numpy as np
import onnx
import pytest

from convforge.compress import quantize
from convforge.compress.quantize import layer_harm, prepare, quantize_bytes, search
from convforge.compress.quantize_run import quantize_run
from convforge.deploy.export import export_run
from convforge.deploy.onnx_file import onnx_metadata
from convforge.runs import Run
from tests.helpers import TINY_SHAPES, invoke


@pytest.fixture
def exported_run(tiny_run_copy):
    export_run(tiny_run_copy, images=16)
    return tiny_run_copy


def test_a_run_quantizes_with_fp32_and_int8_side_by_side(exported_run):
    result = quantize_run(exported_run, TINY_SHAPES, calibration=64, max_drop=5.0, latency_seconds=0.05)
    path = exported_run / "artifacts" / "model.int8.onnx"
    assert result.path == "artifacts/model.int8.onnx" and path.stat().st_size == result.size_bytes
    assert result.size_bytes < 0.5 * result.fp32_size_bytes  # 8-bit weights
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32_metadata = onnx_metadata(exported_run / "artifacts" / "model.onnx")
    assert json.loads(onnx_metadata(path)["classes"]) == json.loads(fp32_metadata["classes"])
    assert result.within_budget and result.drop_points <= 5.0 and result.agreement >= 0.9
    assert result.test_images == 300 and result.calibration_images == 64
    assert set(result.latency_ms) == {"ort", "ort-int8"} and set(result.latency_ms["ort"]) == {1, 64}
    record = Run(exported_run).metrics("quantize")[-1]
    assert record["int8_top1"] == result.int8_top1 and record["attempts"][0]["method"] == "minmax"


def test_the_search_tries_the_other_methods_then_keeps_the_most_harmful_layers_in_fp32(monkeypatch):
    # a stand-in quantizer: its "model" is (method, layers kept in fp32); the test decides the accuracy
    monkeypatch.setattr(quantize, "quantize_bytes", lambda fp32, batches, method, kept_fp32=(), op_types=None:
                        json.dumps([method, list(kept_fp32)]).encode())  # fmt: skip
    monkeypatch.setattr(quantize, "layer_harm", lambda fp32, int8, inputs: {"conv_a": 0.3, "conv_b": 0.2, "fc": 0.1})

    def score(model: bytes) -> tuple[float, float]:
        method, kept = json.loads(model)
        return {"minmax": 0.80, "entropy": 0.84, "percentile": 0.82}[method] + 0.03 * len(kept), 1.0

    found = search(b"", [np.zeros(1)], score, method="minmax", max_drop=1.0, fp32_top1=0.90)
    tried = [(a.method, a.kept_fp32) for a in found.attempts]
    assert tried == [("minmax", []), ("entropy", []), ("percentile", []),
                     ("entropy", ["conv_a"]), ("entropy", ["conv_a", "conv_b"])]  # fmt: skip
    assert found.method == "entropy" and found.kept_fp32 == ["conv_a", "conv_b"] and found.within_budget
    assert [round(a.drop_points, 6) for a in found.attempts] == [10.0, 6.0, 8.0, 3.0, 0.0]
    # a budget that holds at once tries nothing else
    quick = search(b"", [np.zeros(1)], score, method="entropy", max_drop=6.5, fp32_top1=0.90)
    assert [(a.method, a.kept_fp32) for a in quick.attempts] == [("entropy", [])]


def test_layer_harm_ranks_the_quantized_layers_of_a_real_model(exported_run):
    from convforge.checkpoint import read_model_spec
    from convforge.compress.quantize import calibration_batches
    from convforge.data.spec import load_dataset

    spec = read_model_spec(exported_run)
    pixels = load_dataset(TINY_SHAPES).splits["train"].gather(np.arange(16))
    batches = calibration_batches(pixels, spec.preprocessing, batch_size=16)
    prepared = prepare((exported_run / "artifacts" / "model.onnx").read_bytes())
    harm = layer_harm(prepared, quantize_bytes(prepared, batches, "minmax"), batches[0])
    convs = {node.name for node in onnx.load_from_string(prepared).graph.node if node.op_type == "Conv"}
    assert convs <= set(harm) and all(np.isfinite(v) for v in harm.values())
    assert list(harm.values()) == sorted(harm.values(), reverse=True)


def test_quantize_mistakes_are_user_errors(tiny_run_copy):
    result = invoke("quantize", tiny_run_copy, TINY_SHAPES)
    assert result.exit_code == 2 and "has no model.onnx yet; export it first: convforge export" in result.output
    export_run(tiny_run_copy, images=8)
    result = invoke("quantize", tiny_run_copy, TINY_SHAPES, "--calibration", "100000")
    assert result.exit_code == 2 and "--calibration 100000 is more than the" in result.output
    result = invoke("quantize", tiny_run_copy, TINY_SHAPES, "--max-drop", "-1")
    assert result.exit_code == 2 and "cannot be negative" in result.output
    result = invoke("quantize", tiny_run_copy, TINY_SHAPES, "--method", "entropie")
    assert result.exit_code == 2 and "unknown calibration method 'entropie'. Did you mean: entropy?" in result.output
    (tiny_run_copy / "artifacts" / "model.int8.onnx").write_bytes(b"an older one")
    result = invoke("quantize", tiny_run_copy, TINY_SHAPES)
    assert result.exit_code == 2 and "exists already; --force replaces it" in result.output


def test_weights_use_seven_bits_where_the_cpu_lacks_vnni(exported_run, monkeypatch):
    """Without VNNI, U8S8 products can saturate: the INT8 weights ORT writes must stay within 7 bits
    ([-64, 63]); with VNNI the full 8 bits are used. Checked on the weights in the file, not on a flag."""
    from onnx import numpy_helper

    from convforge.checkpoint import read_model_spec
    from convforge.compress.quantize import calibration_batches
    from convforge.data.spec import load_dataset
    from convforge.device import cpu_has_vnni

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # how the benchmarks reproduce an AVX2-only machine
    assert cpu_has_vnni() is False
    spec = read_model_spec(exported_run)
    pixels = load_dataset(TINY_SHAPES).splits["train"].gather(np.arange(16))
    batches = calibration_batches(pixels, spec.preprocessing, batch_size=16)
    prepared = prepare((exported_run / "artifacts" / "model.onnx").read_bytes())

    def largest_weight(vnni: bool) -> int:
        monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: vnni)
        graph = onnx.load_from_string(quantize_bytes(prepared, batches, "minmax")).graph
        weights = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
        return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.size > 1)

    assert largest_weight(vnni=False) <= 64 < largest_weight(vnni=True)


def test_the_real_search_keeps_layers_in_fp32_when_int8_loses_more_than_the_budget(exported_run):
    """No stand-ins: a budget INT8 cannot meet as a whole (nothing may change) sends the real search
    through the other methods and then keeps the most harmful real layers in fp32, named in the record."""
    result = quantize_run(exported_run, TINY_SHAPES, calibration=32, max_drop=0.0, min_agreement=1.0,
                          latency_seconds=0.02, force=True)  # fmt: skip
    tried = [(a.method, a.kept_fp32) for a in result.attempts]
    assert [method for method, kept in tried[:3]] == ["minmax", "entropy", "percentile"]
    kept_runs = [kept for _, kept in tried[3:]]
    prepared = prepare((exported_run / "artifacts" / "model.onnx").read_bytes())
    nodes = {node.name for node in onnx.load_from_string(prepared).graph.node}
    assert kept_runs and all(kept and set(kept) <= nodes for kept in kept_runs)  # real layers of the graph
    assert [len(kept) for kept in kept_runs] == [2**i for i in range(len(kept_runs))]  # 1, 2, 4, ... layers
    assert Run(exported_run).metrics("quantize")[-1]["kept_fp32"] == result.kept_fp32
    assert result.kept_fp32 or not result.within_budget  # within it only by keeping layers


def test_a_config_that_keeps_top1_but_changes_many_predictions_is_beyond_the_budget(monkeypatch):
    """Near chance, INT8 can keep its top-1 while changing a third of its answers (38% once passed
    'within budget'): agreement with fp32 is gated too, and the search goes on until it holds."""
    monkeypatch.setattr(quantize, "quantize_bytes", lambda fp32, batches, method, kept_fp32=(), op_types=None:
                        json.dumps([method, list(kept_fp32)]).encode())  # fmt: skip
    monkeypatch.setattr(quantize, "layer_harm", lambda fp32, int8, inputs: {"conv_a": 0.3, "fc": 0.1})

    def score(model: bytes) -> tuple[float, float]:
        method, kept = json.loads(model)
        return 0.30, 0.62 + 0.35 * len(kept)  # the same top-1 as fp32, 38% of the answers changed

    found = search(b"", [np.zeros(1)], score, method="minmax", max_drop=1.0, fp32_top1=0.30)
    assert [(a.method, a.kept_fp32) for a in found.attempts][-1] == ("minmax", ["conv_a"]) and found.within_budget
    never = search(b"", [np.zeros(1)], lambda model: (0.30, 0.62), method="minmax", max_drop=1.0, fp32_top1=0.30)
    assert not never.within_budget and all(a.drop_points == 0 for a in never.attempts)
