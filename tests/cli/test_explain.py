"""`convforge explain`: overlays, grids, scores and the report section; bad input as clear messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convforge.cli import app
from tests.helpers import TINY_SHAPES, invoke

runner = CliRunner()


@pytest.fixture
def run(tiny_run_copy):
    return tiny_run_copy


def test_explain_a_dataset_writes_overlays_grids_scores_and_a_report_section(run):
    result = invoke(
        "explain", run, TINY_SHAPES, "--method", "gradcam,eigencam", "--n", "4", "--metric-images", "20",
        "--faithfulness-images", "4", "--sanity-images", "4", "--steps", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "20 image(s) from shapes" in result.output
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["kind"] == "explain" and record["images"] == 20 and record["split"] == "test"
    rows = {row["method"]: row for row in record["methods"]}
    assert set(rows) == {"gradcam", "eigencam"}
    # the command records exactly what the library measures on the same images and settings
    expected = _library_scores(run, ["gradcam", "eigencam"], images=20, faithfulness_images=4, sanity_images=4,
                               steps=4)  # fmt: skip
    for method, row in rows.items():
        for name in ("pointing_game", "energy_inside", "deletion_auc", "insertion_auc", "sanity_correlation"):
            assert row[name] == pytest.approx(expected["methods"][method][name], rel=1e-5, abs=1e-6), (method, name)
    assert record["random_map"] == pytest.approx(expected["random_map"])
    for method in ("gradcam", "eigencam"):
        grid = run / record["grids"][method]
        assert Image.open(grid).format == "PNG"
        overlays = sorted((run / "artifacts" / "explain" / method).glob("*.png"))
        assert len(overlays) == 4
        assert min(Image.open(overlays[0]).size) >= 224  # enlarged for people to read
    report = (run / "report.html").read_text()
    assert "Explanations" in report and "random map" in report


def _library_scores(run, methods, *, images, **options) -> dict:
    """What convforge.explain's own calls give on the images explain samples from the tiny shapes."""
    import torch

    from convforge.checkpoint import load_model
    from convforge.explain.inputs import dataset_inputs
    from convforge.explain.study import compare_methods

    model, spec = load_model(run)
    inputs = dataset_inputs(TINY_SHAPES, spec, None, images, torch.device("cpu"), False)
    comparison = compare_methods(model, inputs.images, methods, masks=inputs.masks, **options).to_dict()
    return {"methods": {row["method"]: row for row in comparison["methods"]}, "random_map": comparison["random_map"]}


def test_explain_image_files_skips_unreadable_ones_with_a_count(run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = runner.invoke(
        app,
        [
            "explain",
            str(run),
            str(good),
            str(bad),
            "--method",
            "gradcam",
            "--sanity-images",
            "0",
            "--steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "skipped unreadable image" in result.output and "1 unreadable image(s) skipped" in result.output
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["images"] == 1 and record["skipped_files"] == 1 and record["random_map"] is None


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["{tmp}/missing.png"], ["does not exist"]),
        (
            [TINY_SHAPES, "--method", "gradcamm"],
            ["unknown explanation method 'gradcamm'", "Did you mean: gradcam"],
        ),
        ([TINY_SHAPES, "--layer", "layer9"], ["no layer 'layer9'", "layer4"]),
        ([TINY_SHAPES, "--layer", "fc"], ["layer 'fc' outputs shape", "no spatial map"]),
        ([TINY_SHAPES, "--split", "holdout"], ["no 'holdout' split"]),
    ],
)
def test_bad_input_is_one_clear_message(run, tmp_path, args, fragments):
    result = invoke("explain", run, *[a.format(tmp=tmp_path) for a in args], "--metric-images", "4")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
