"""The command line: help with examples, user errors as one message with exit code 2, the whole flow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convforge.cli import app
from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS, TINY_SHAPES

runner = CliRunner()
COMMANDS = ["models", "train", "eval", "predict", "explain", "report", "demo"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output


def _assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_user_errors_exit_2_with_a_message(tmp_path):
    _assert_user_error(invoke("train", tmp_path / "nowhere", "--model", "resnet18"), "does not exist")
    _assert_user_error(invoke("train", "shapes", "--model", "resnt18"), "unknown model 'resnt18'", "resnet18")
    _assert_user_error(invoke("train", "shapes", "--epoch", "3"), "No such option", "--epochs")
    _assert_user_error(invoke("train", "--resume", tmp_path), "not a run folder")
    _assert_user_error(invoke("eval", tmp_path / "nope", "shapes"), "does not exist")
    _assert_user_error(invoke("trian"), "No such command", "train")
    _assert_user_error(invoke("train", "shapes", "--epochs", "0"), "epochs must be at least 1")
    _assert_user_error(invoke("train"), "give a dataset")


def test_models_command():
    result = invoke("models", "resnet10t", "--input-size", "64", "--json")
    assert result.exit_code == 0
    (row,) = json.loads(result.output)
    assert row["name"] == "resnet10t" and row["input_size"] == [3, 64, 64] and row["params"] > 1e6
    families = invoke("models")
    assert "resnet" in families.output and "convnext" in families.output


def test_train_eval_predict_report(tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        TINY_SHAPES,
        "--model",
        TINY_MODEL,
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        out,
        "--model-arg",
        f"channels={json.dumps(TINY_MODEL_KWARGS['channels'])}",
        "--model-arg",
        f"stem_width={TINY_MODEL_KWARGS['stem_width']}",
        "--json",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["run"] == str(out) and 0 <= summary["test"]["top1"] <= 1

    evaluated = invoke("eval", out, TINY_SHAPES, "--split", "val", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["split"] == "val"
    _assert_user_error(invoke("eval", out, TINY_SHAPES, "--split", "holdout"), "no 'holdout' split")

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG nope")
    predicted = invoke("predict", out, images, "--top-k", "2", "--json")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.output)
    assert len(rows) == 4
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 3 and all(len(r["top"]) == 2 for r in good)
    assert [r for r in rows if r["error"]][0]["path"].endswith("broken.png")
    _assert_user_error(invoke("predict", out, tmp_path / "missing.png"), "does not exist")

    report = invoke("report", out)
    assert report.exit_code == 0 and (out / "report.html").is_file()


def test_eval_on_data_with_other_classes_names_both(tmp_path, tiny_run):
    folder = tmp_path / "other"
    for name in ("apple", "pear"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 9 * i, np.uint8)).save(folder / name / f"{i}.png")
    result = invoke("eval", tiny_run.run.path, folder)
    _assert_user_error(result, "has 2 classes but the model was trained on 10", "apple")
