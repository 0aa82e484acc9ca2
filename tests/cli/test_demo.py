"""`convforge demo`: the whole path in one command, reaching 97% on held-out shapes.

The shapes data defeats a linear classifier on pixels (10.45%, tests/data/test_shapes.py); the
demo's small CNN must reach at least 97% on 2,000 held-out images (measured 98.2-98.4% over seeds 0-2).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from convforge.cli import app

pytestmark = pytest.mark.xdist_group("demo")  # its module fixtures are built once, on one worker

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, runner.invoke(app, ["demo", "--out", str(out)], catch_exceptions=False)


@pytest.fixture(scope="module")
def demo_run(demo_output):
    return demo_output[0]


def test_demo_reaches_97_percent_and_says_what_next(demo_output):
    out, result = demo_output
    assert result.exit_code == 0, result.output
    test = json.loads((out / "run.json").read_text())["test"]
    assert test["split"] == "test" and test["images"] == 2000
    assert test["top1"] >= 0.97
    assert f"report      {out / 'report.html'}" in result.output
    assert "What to try next" in result.output and f"convforge predict {out}" in result.output
    assert (out / "report.html").is_file()
    assert "Explanations" in (out / "report.html").read_text()


def test_demo_explanations_point_at_the_shapes(demo_run):
    """On the trained demo model, Grad-CAM's maps peak on the object far more often than a uniform
    random map's (measured: 0.43 against 0.15 on 256 held-out shapes, on layer2's 6x6 map)."""
    record = [r for r in map(json.loads, (demo_run / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "explain"][-1]  # fmt: skip
    assert record["images"] == 256
    rows = {row["method"]: row for row in record["methods"]}
    random_pointing = record["random_map"]["pointing_game"]
    assert random_pointing < 0.25
    assert rows["gradcam"]["pointing_game"] > max(0.3, 2 * random_pointing)
    assert rows["gradcam"]["energy_inside"] > record["random_map"]["energy_inside"] + 0.08
    assert all(row["pointing_game"] > 2 * random_pointing for row in rows.values())


def test_demo_stresses_the_model(demo_run):
    """PGD at 8/255 breaks the normally trained demo model; noise at severity 5 costs accuracy."""
    records = [json.loads(line) for line in (demo_run / "metrics.jsonl").read_text().splitlines()]
    record = [r for r in records if r["kind"] == "robust"][-1]  # export, quantize and bench records follow it
    assert record["kind"] == "robust" and record["images"] == 256
    robust = {row["eps"]: row["robust_accuracy"] for row in record["attacks"]}
    assert robust[0.0] == record["clean_accuracy"] > 0.9
    assert robust[8 / 255] < robust[2 / 255] <= robust[0.0]
    noise = record["corruptions"]["accuracy"]["gaussian_noise"]
    assert noise["5"] < record["clean_accuracy"]
    assert "Robustness" in (demo_run / "report.html").read_text()


def test_demo_exports_quantizes_and_times_the_model(demo_run):
    from convforge.runs import Run

    run = Run(demo_run)
    export = run.metrics("export")[-1]
    assert export["status"] == "exported" and export["parity"]["passed"] and export["parity"]["images"] == 256
    quantize = run.metrics("quantize")[-1]
    assert (demo_run / "artifacts" / "model.int8.onnx").is_file() and quantize["calibration_images"] == 256
    # the demo model quantizes well: INT8 within the default budget of 1 point and almost always in accord
    assert quantize["within_budget"] and quantize["agreement"] >= 0.97
    rows = run.metrics("bench")[-1]["rows"]
    assert {(r["backend"], r["batch"]) for r in rows} == {(b, n) for b in ("torch", "ort", "ort-int8") for n in (1, 64)}
    assert all(r["unavailable"] is None for r in rows)


def test_demo_prunes_to_a_measured_speedup_and_distils(demo_run):
    """The pruned child beside the demo run: a speed-up search measured at batch 1 and 64, one epoch of
    distillation, a child that still classifies the shapes, and a report with its Compression section."""
    from convforge.runs import Run

    child = Run(demo_run.parent / f"{demo_run.name}-pruned")
    record = child.metrics("prune")[-1]
    assert child.info["parent"] == str(demo_run.resolve()) and child.info["config"]["teacher"]
    assert record["pruning"]["target"] == "speedup" and record["pruning"]["goal"] == 1.5
    assert set(record["latency_ms"]["child"]) == {"1", "64"}
    assert record["pruning"]["after"]["params"] < record["pruning"]["before"]["params"]
    # one epoch of recovery: 97.05% and 82.15% measured on AVX-512 machines, 62% on an AVX2-only Zen 2 under
    # CI load, where batch-1 latency needed 80% of the MACs cut (the deeper the measured 1.5x needs, the
    # lower), so the bar only says it still classifies the shapes far above chance (10%)
    assert record["top1"] >= 0.4
    assert '<section id="compression">' in (child.path / "report.html").read_text()


def test_demo_claims_the_speedup_its_final_paired_measurement_gives(demo_output):
    """What the demo prints about the pruned child is the final paired measurement of parent and child
    (the figure in run.json and the report): both speed-ups, and whether the 1.5x target was reached by
    that measurement's 95% interval. Run alone on this machine the demo reaches it (1.66x and 2.47x,
    benchmarks/RESULTS.md); inside this test process, after the other tests, its final measurement once
    gave 1.49x at batch 1, and the demo said so: the claim must match the measurement, whichever it is."""
    from convforge.runs import Run

    demo_run, result = demo_output
    record = Run(demo_run.parent / f"{demo_run.name}-pruned").metrics("prune")[-1]
    speedup, intervals = record["speedup"], record["speedup_interval"]
    assert set(speedup) == set(intervals) == {"1", "64"}
    reached = all(interval["low"] >= 1.5 for interval in intervals.values())
    assert record["pruning"]["reached"] is reached
    assert record["pruning"]["achieved"] == min(speedup.values())
    said = f"({speedup['1']:.2f}x at batch 1, {speedup['64']:.2f}x at 64, timed against the original interleaved"
    assert said in result.output
    assert ("the 1.5x target was reached" in result.output) is reached
    assert ("the 1.5x target was not reached on this machine" in result.output) is not reached
