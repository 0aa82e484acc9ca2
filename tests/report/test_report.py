"""The report is one self-contained file built from the run folder alone."""

from __future__ import annotations

import re
import shutil

from convforge.report import SECTIONS, build_report


def test_report_has_every_section_and_embeds_its_pictures(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.run.path, copy)
    shutil.rmtree(copy / "checkpoints")  # the report needs no model, only the run's files
    (copy / "model.safetensors").unlink()
    path = build_report(copy)
    html = path.read_text()
    for name in ("summary", "training", "evaluation", "predictions"):
        assert f'id="{name}"' in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) >= 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert "resnet10t" in html and f"{100 * tiny_run.test.top1:.2f}%" in html


def test_a_section_is_one_function_and_one_template():
    for section in SECTIONS.values():
        assert section.template == f"sections/{section.name}.html.j2"
        assert callable(section.build)


def test_sections_without_data_are_left_out(tmp_path):
    from convforge.runs import Run

    run = Run.create(tmp_path / "bare", command="c", stage="train", config={})
    html = build_report(run.path).read_text()
    assert 'id="summary"' in html and 'id="training"' not in html


def test_report_shows_what_a_timm_or_wandb_user_looks_for(tiny_run, tiny_run_copy):
    """Hyperparameters, a loss curve within epochs, augmented images, per-class precision/recall/F1,
    the most confused pairs, calibration, images per class and split, and the run's times."""
    import json

    html = build_report(tiny_run_copy).read_text()  # the report is written into the run: a copy's
    for text in ("Hyperparameters", "label_smoothing", "What the model was trained on", "Most confused",
                 "precision", "recall", "F1", "reliability diagram", "expected calibration error",
                 "images per class and split", "wall time", 'alt="loss and accuracy every few steps"'):  # fmt: skip
        assert text in html, text
    steps = tiny_run.run.metrics("step")
    epochs = len(tiny_run.run.metrics("epoch"))
    assert len(steps) >= 9 * epochs and all(0 <= r["acc"] <= 1 and r["loss"] > 0 for r in steps)
    ece = tiny_run.run.metrics("eval")[-1]["calibration"]["ece"]
    assert f"{ece:.4f}" in html
    info = json.loads((tiny_run.run.path / "run.json").read_text())
    assert sum(info["data"]["class_counts"]["test"]) == info["data"]["splits"]["test"] == 300


def test_class_metrics_and_confused_pairs_from_a_confusion_matrix():
    import numpy as np
    import pytest

    from convforge.report.sections import class_metrics, confused_pairs

    confusion = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])  # class c: no images, never predicted
    rows = {r["class"]: r for r in class_metrics(confusion, ["a", "b", "c"])}
    assert rows["a"]["precision"] == pytest.approx(8 / 9) and rows["a"]["recall"] == pytest.approx(0.8)
    assert rows["a"]["f1"] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert rows["c"]["precision"] is None and rows["c"]["recall"] is None and rows["c"]["f1"] is None
    assert confused_pairs(confusion, ["a", "b", "c"]) == [
        {"true": "a", "predicted": "b", "images": 2, "share": 0.2},
        {"true": "b", "predicted": "a", "images": 1, "share": 0.1},
    ]


def test_a_report_embeds_only_files_inside_the_runs_artifacts(tmp_path):
    """metrics.jsonl is input: a record naming a file outside artifacts/ (absolute, '..', or a link out)
    must not get that file embedded in the report."""
    import os

    from convforge.report import compression, sections
    from convforge.runs import Run

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not yours")
    run = Run.create(tmp_path / "run", command="c", stage="train", config={})
    inside = run.artifact("explain", "gradcam.png")
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"\x89PNG ours")
    os.symlink(secret, run.artifact("explain", "link.png"))
    (run.path / "model.json").write_text("{}")  # a file of the run, but not an artifact
    names = {"ours": "artifacts/explain/gradcam.png", "absolute": str(secret), "up": "../secret.png",
             "link": "artifacts/explain/link.png", "run file": "model.json", "not text": ["x"]}  # fmt: skip
    run.append_metrics({"kind": "explain", "methods": list(names), "grids": names})
    run.append_metrics({"kind": "robust", "model": "torch", "files": {k: v for k, v in names.items() if k != "ours"}})
    run.append_metrics({"kind": "drift", "grid": str(secret)})
    grids = sections.explanations(run)["grids"]
    assert [g["method"] for g in grids] == ["ours"]
    assert sections.robustness(run)["charts"] == {}
    assert compression._drift(run)["uri"] is None
    assert run.recorded_artifact("artifacts/explain/gradcam.png") == inside.resolve()


def test_the_evaluation_section_follows_the_summarys_split_not_the_last_eval(tmp_path):
    """An `eval --split val` after training once replaced the test figures in Evaluation while the
    Summary kept the test top-1: the section shows the latest record of the Summary's split."""
    from convforge.report import sections
    from convforge.runs import Run

    run = Run.create(tmp_path / "run", command="c", stage="train", config={})
    record = {"kind": "eval", "classes": ["a", "b"], "per_class": {"a": 1.0, "b": 0.5}, "calibration": None}
    run.append_metrics({**record, "split": "test", "top1": 0.75, "confusion": [[2, 0], [1, 1]]})
    run.append_metrics({**record, "split": "val", "top1": 0.5, "confusion": [[1, 1], [1, 1]]})
    run.update(test={"split": "test", "top1": 0.75})
    shown = sections.evaluation(run)
    assert shown["latest"]["split"] == "test" and shown["latest"]["top1"] == 0.75 and len(shown["history"]) == 2


def test_records_missing_what_a_section_needs_cost_that_section_only(tiny_run_copy, caplog):
    """metrics.jsonl may come from another version or an editor: a dict record of the right kind with
    none of its fields costs its own section (a notice naming the problem, and a warning), never the report."""
    from convforge.runs import Run

    run = Run.open(tiny_run_copy)
    for kind in ("epoch", "step", "eval", "explain", "robust", "bench", "quantize", "export", "prune", "drift"):
        run.append_metrics({"kind": kind, "split": "test", "model": "torch", "eps": 1})
    with caplog.at_level("WARNING"):
        html = build_report(tiny_run_copy).read_text()
    titles = re.findall(r"<h2>(.*?)</h2>", html)
    assert titles[0] == "Summary"
    notices = re.findall(r"<h2>(.*?)</h2>\s*(?:<[^>]+>\s*)*<p class=\"notice\">This section could not be drawn", html)
    assert {"Training", "Evaluation"} <= set(notices)
    assert len(notices) == html.count("could not be drawn") == caplog.text.count("section could not be drawn")
