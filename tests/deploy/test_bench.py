"""`convforge bench`: one table of backends x batch sizes, unavailable backends said as such, the
record in the run, and clear messages for bad options."""

import json

from convforge.deploy.bench import TURN, bench, open_source
from convforge.deploy.export import export_run
from convforge.runs import Run
from tests.helpers import invoke


def test_bench_of_an_exported_run_times_torch_and_ort_and_says_why_int8_is_missing(tiny_run_copy):
    export_run(tiny_run_copy, images=8)
    result = bench(open_source(tiny_run_copy), ["torch", "ort", "ort-int8"], [1, 4], threads=1, budget_seconds=0.05)
    rows = {(row.backend, row.batch): row for row in result.rows}
    assert set(rows) == {(b, n) for b in ("torch", "ort", "ort-int8") for n in (1, 4)}
    assert rows[("torch", 1)].speedup == 1.0 and rows[("ort", 4)].latency.iterations >= 5
    # timed interleaved: every round times both, so the baseline's ratio to itself is exactly 1 in every round
    assert {k: rows[("torch", 4)].speedup_interval[k] for k in ("median", "low", "high")} == dict.fromkeys(
        ("median", "low", "high"), 1.0)
    assert rows[("ort", 4)].speedup_interval["rounds"] * TURN == rows[("torch", 4)].latency.iterations
    low, high = rows[("ort", 1)].speedup_interval["low"], rows[("ort", 1)].speedup_interval["high"]
    assert low <= rows[("ort", 1)].speedup <= high
    assert rows[("ort-int8", 1)].latency is None and "convforge quantize" in rows[("ort-int8", 1)].unavailable
    assert rows[("ort", 1)].file_size == (tiny_run_copy / "artifacts" / "model.onnx").stat().st_size
    assert result.threads == 1 and result.params > 0 and result.macs > 0
    assert result.peak_activation_bytes[4] > result.peak_activation_bytes[1] > 0


def test_the_cli_prints_the_table_and_records_it_in_the_run(tiny_run_copy):
    result = invoke("bench", tiny_run_copy, "--batch", "1,2", "--backend", "torch,ort", "--seconds", "0.05",
                    "--threads", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no model.onnx yet; make it with `convforge export RUN`" in result.output
    records = [json.loads(line) for line in (tiny_run_copy / "metrics.jsonl").read_text().splitlines()]
    bench_record = [r for r in records if r.get("kind") == "bench"][-1]
    assert bench_record["threads"] == 1 and "cpu" in bench_record["hardware"]
    order = [(r["backend"], r["batch"]) for r in bench_record["rows"]]
    assert order == [("torch", 1), ("ort", 1), ("torch", 2), ("ort", 2)]


def test_bench_of_a_model_name_and_of_an_onnx_file(tiny_run_copy, tmp_path):
    result = invoke("bench", "resnet10t", "--batch", "1", "--backend", "torch,ort", "--seconds", "0.05", "--size", "32")
    assert result.exit_code == 0 and "not a run folder" in result.output
    export_run(tiny_run_copy, images=8)
    onnx_file = tiny_run_copy / "artifacts" / "model.onnx"
    result = invoke("bench", onnx_file, "--batch", "2", "--backend", "ort,torch", "--seconds", "0.05", "--json")
    rows = json.loads(result.output)["rows"]
    assert rows[0]["backend"] == "ort" and rows[0]["p50_ms"] > 0
    assert "has no PyTorch model" in rows[1]["unavailable"]


def test_bad_bench_options_are_user_errors(tiny_run_copy, tmp_path):
    for batch, fragment in (("0", "got '0'"), ("1,x", "got 'x'"), ("", "got ''")):
        result = invoke("bench", tiny_run_copy, "--batch", batch)
        assert result.exit_code == 2 and "--batch takes positive whole numbers" in result.output
        assert fragment in result.output
    result = invoke("bench", tiny_run_copy, "--backend", "ort-int9")
    assert result.exit_code == 2 and "unknown backend 'ort-int9'" in result.output
    assert "Did you mean: ort-int8" in result.output
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"this is not a protobuf")
    result = invoke("bench", not_onnx)
    assert result.exit_code == 2 and "is not an ONNX file" in result.output
    result = invoke("bench", "resnt18")
    assert result.exit_code == 2 and "resnet18" in result.output


def test_the_report_shows_the_deployment_section(tiny_run_copy):
    from convforge.compress.quantize_run import quantize_run
    from convforge.report import build_report
    from tests.helpers import TINY_SHAPES

    export_run(tiny_run_copy, images=8)
    quantize_run(tiny_run_copy, TINY_SHAPES, calibration=32, max_drop=100.0, latency_seconds=0.02)
    bench(open_source(tiny_run_copy), ["torch", "ort", "ort-int8"], [1, 2], threads=1, budget_seconds=0.02)
    from convforge.deploy.bench import record_bench

    record_bench(Run(tiny_run_copy), bench(open_source(tiny_run_copy), ["torch", "ort", "ort-int8"], [2],
                                           threads=1, budget_seconds=0.02))  # fmt: skip
    html = build_report(tiny_run_copy).read_text()
    section = html[html.rindex("<h3>Export</h3>"):]
    assert "top-1 agreement 100.00%" in section and "INT8 (ONNX Runtime)" in section
    assert "top-1 against throughput per backend" in section  # the accuracy/speed chart
