"""The command line: help with examples, user errors as one message with exit code 2, the whole flow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convforge.cli import app
from convforge.runs import Run
from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS, TINY_SHAPES

runner = CliRunner()
COMMANDS = ["models", "train", "eval", "predict", "explain", "export", "quantize", "bench", "report", "demo"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output


def test_train_help_groups_its_options_by_the_config_sections():
    from convforge.train.config import SECTIONS

    text = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["train", "--help"]).output
    panels = [line.split("─ ", 1)[1].split(" ─", 1)[0] for line in text.splitlines() if line.startswith("╭─ ")]
    wanted = {f"{section.capitalize()} options" for section, names in SECTIONS.items() if names}
    assert wanted <= set(panels), panels
    run_panel = text.split("Run options", 1)[1].split("╰", 1)[0]
    assert "--model " in run_panel and "--seed " in run_panel
    assert "--eps " in text.split("Adversarial options", 1)[1].split("╰", 1)[0]
    # the shared option declarations are copied, not changed: eval's --batch-size stays ungrouped
    eval_text = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["eval", "--help"]).output
    assert "Optimisation options" not in eval_text and "--batch-size" in eval_text


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
    assert summary["run"] == str(out) and summary["test"]["images"] == 300
    again = json.loads(invoke("eval", out, TINY_SHAPES, "--json").output)  # the same model on the same images
    assert again["top1"] == summary["test"]["top1"] and again["confusion"] == summary["test"]["confusion"]

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
    assert predicted.exit_code == 1, predicted.output  # one input failed: the table, then status 1
    rows = json.loads(predicted.output)
    assert len(rows) == 4
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 3 and all(len(r["top"]) == 2 for r in good)
    assert [r for r in rows if r["error"]][0]["path"].endswith("broken.png")
    _assert_user_error(invoke("predict", out, tmp_path / "missing.png"), "does not exist")

    report = invoke("report", out)
    assert report.exit_code == 0 and (out / "report.html").is_file()


def test_eval_on_data_with_other_classes_names_both(tmp_path, tiny_run_copy):
    folder = tmp_path / "other"
    for name in ("apple", "pear"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 9 * i, np.uint8)).save(folder / name / f"{i}.png")
    result = invoke("eval", tiny_run_copy, folder)
    _assert_user_error(result, "has 2 classes but the model was trained on 10", "apple")


def test_predict_exits_0_when_every_image_was_read_and_names_the_pixel_limit(tmp_path, tiny_run):
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(image)
    assert invoke("predict", tiny_run.run.path, image, "--json").exit_code == 0
    refused = invoke("predict", tiny_run.run.path, image, "--max-pixels", "5000", "--json")
    assert refused.exit_code == 1
    (row,) = json.loads(refused.output)
    assert "over the limit of 5,000" in row["error"] and "--max-pixels" in row["error"]


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"convforge {version('convforge')}"


def _class_folder(root, classes, per_class=3, size=32):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size, 3), 40 * c + i, np.uint8)).save(root / name / f"{i}.png")
    return root


def test_eval_on_some_of_the_models_classes_evaluates_those_and_names_the_rest(tmp_path, tiny_run_copy):
    classes = json.loads((tiny_run_copy / "run.json").read_text())["data"]["classes"]
    folder = _class_folder(tmp_path / "two", classes[:2])
    result = invoke("eval", tiny_run_copy, folder, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["images"] == 6 and data["missing_classes"] == classes[2:]
    assert [k for k, v in data["per_class"].items() if v is not None] == classes[:2]
    shown = invoke("eval", tiny_run_copy, folder)
    assert f"has no images of 8 of the model's 10 classes ({', '.join(classes[2:])}); evaluating on the other 2" \
        in " ".join(shown.output.split())


def test_eval_split_val_is_the_split_training_held_out(tmp_path):
    data = "shapes:size=32,train=600,val=0,test=100"
    out = tmp_path / "run"
    args = ["train", data, "--model", TINY_MODEL, "--epochs", "2", "--batch-size", "64", "--out", out,
            "--model-arg", f"channels={json.dumps(TINY_MODEL_KWARGS['channels'])}",
            "--model-arg", f"stem_width={TINY_MODEL_KWARGS['stem_width']}",
            "--val-fraction", "0.2", "--seed", "3"]  # fmt: skip
    assert invoke(*args).exit_code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["data"]["val_from_train"] == {"fraction": 0.2, "seed": 3} and info["data"]["splits"]["val"] == 120
    evaluated = json.loads(invoke("eval", out, data, "--split", "val", "--json").output)
    assert evaluated["images"] == 120
    assert evaluated["top1"] == info["best_val_acc"]  # the very images (and weights) training validated on


def test_tables_are_not_wrapped_at_80_columns_without_a_terminal(tiny_run_copy):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-m", "convforge", "eval", str(tiny_run_copy), TINY_SHAPES],
                          capture_output=True, text=True, env=env, check=True)  # fmt: skip
    weakest = next(line for line in done.stdout.splitlines() if "weakest classes" in line)
    assert weakest.count("%") == 3 and "…" not in done.stdout


def test_train_from_a_config_file_with_flags_on_top(tmp_path):
    """`--config` gives every option a key (min_lr, pad have no flag); flags given on the command line
    win over the file; what ran is what run.json records."""
    config = tmp_path / "train.yaml"
    config.write_text(
        f"data: {TINY_SHAPES}\nmodel: {TINY_MODEL}\n"
        f"model_kwargs: {json.dumps(TINY_MODEL_KWARGS)}\n"
        "optimisation: {epochs: 3, lr: 0.004, min_lr: 2.0e-5, batch_size: 64}\n"
        "augmentation: {crop: pad, pad: 2}\n"
    )
    out = tmp_path / "run"
    result = invoke("train", "--config", config, "--epochs", "1", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "run.json").read_text())["config"]
    assert (recorded["epochs"], recorded["lr"], recorded["min_lr"], recorded["pad"]) == (1, 0.004, 2e-5, 2)
    assert recorded["batch_size"] == 64 and recorded["model_kwargs"] == TINY_MODEL_KWARGS
    _assert_user_error(invoke("train", "--config", tmp_path / "missing.yaml"), "does not exist")
    config.write_text("optimisation: {mixup: 0.2}\n")
    _assert_user_error(invoke("train", "--config", config), "belongs to 'augmentation'")


def test_eval_of_a_folder_whose_every_image_is_unreadable_is_an_error_not_a_result(tmp_path, tiny_run_copy):
    classes = Run.open(tiny_run_copy).info["data"]["classes"]
    folder = _class_folder(tmp_path / "broken", classes[:2])
    for image in folder.rglob("*.png"):
        image.write_bytes(b"\x89PNG truncated")
    before = (tiny_run_copy / "metrics.jsonl").read_text()
    result = invoke("eval", tiny_run_copy, folder)
    _assert_user_error(result, "no readable image to evaluate")
    assert (tiny_run_copy / "metrics.jsonl").read_text() == before  # nothing recorded


def test_a_full_disk_is_a_message_not_a_crash(tmp_path, monkeypatch):
    """The decode cache reserves its blocks before mapping them (a mapped write on a full disk is a
    SIGBUS, no message), and any command that meets a full disk says so and exits 2."""
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)
    folder = _class_folder(tmp_path / "pets", ["cat", "dog"], per_class=4)
    result = invoke("train", folder, "--model", TINY_MODEL, "--epochs", "1", "--out", tmp_path / "run", "-q")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "the disk is full" in text and ".npy" in text and "Traceback" not in text


def test_help_texts_keep_their_brackets():
    """The help is rich markup: an unescaped `[ray]` vanished from `pip install 'convforge[ray]'`."""
    assert "pip install 'convforge[ray]'" in " ".join(invoke("serve", "--help").output.split())


def test_eval_decodes_only_the_split_it_evaluates(tiny_run_copy, tmp_path):
    import numpy as np
    from PIL import Image

    classes = json.loads((tiny_run_copy / "model.json").read_text())["classes"]
    for index, name in enumerate(classes):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        (tmp_path / "data" / "train" / name / "broken.png").write_text("not a png")
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        image = Image.fromarray(np.full((32, 32, 3), 25 * index % 256, np.uint8))
        image.save(tmp_path / "data" / "test" / name / "a.png")
    for split in ([], ["--split", "test"]):
        result = invoke("eval", tiny_run_copy, tmp_path / "data", *split, "--json")
        assert result.exit_code == 0, result.output
        evaluated = json.loads(result.output)
        assert evaluated["skipped_files"] == 0  # the training images (all broken) were never decoded
        assert evaluated["images"] == len(classes)
