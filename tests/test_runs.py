"""Run folders: creation, opening errors, lineage, metrics that survive a torn write."""

from __future__ import annotations

import pytest

from convforge.errors import RunFolderError
from convforge.runs import Run, next_run_dir


def test_create_open_and_lineage(tmp_path):
    parent = Run.create(tmp_path / "a", command="convforge train", stage="train", config={"x": 1})
    child = Run.create(
        tmp_path / "b", command="convforge prune", stage="prune", config={}, parent=parent.path
    )
    assert [r.name for r in Run.open(child.path).lineage()] == ["a", "b"]
    info = parent.info
    assert info["stage"] == "train" and info["versions"]["torch"] and info["hardware"]["logical_cores"]


def test_opening_something_that_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="does not exist"):
        Run.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunFolderError, match="is not a run folder: it has no run.json"):
        Run.open(tmp_path / "plain")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a run folder"):
        Run.open(tmp_path / "file.txt")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="damaged"):
        Run.open(tmp_path / "bad")


def test_existing_folder_is_not_overwritten(tmp_path):
    Run.create(tmp_path / "a", command="c", stage="train", config={})
    with pytest.raises(RunFolderError, match="already exists and is not empty"):
        Run.create(tmp_path / "a", command="c", stage="train", config={})
    assert next_run_dir(tmp_path, "a") == tmp_path / "a-2"


def test_metrics_skip_a_torn_last_line_and_drop_future_epochs(tmp_path):
    run = Run.create(tmp_path / "r", command="c", stage="train", config={})
    for epoch in (1, 2, 3):
        for step in (5, 10):
            run.append_metrics({"kind": "step", "epoch": epoch, "step": step})
        run.append_metrics({"kind": "epoch", "epoch": epoch})
    run.append_metrics({"kind": "eval", "top1": 0.5})
    with open(run.path / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "epoch", "ep')  # a write cut off by a crash
    assert [r["epoch"] for r in run.metrics("epoch")] == [1, 2, 3]
    run.drop_records_after(1, step=5)  # a checkpoint after epoch 1 and 5 steps of epoch 2
    assert [r["epoch"] for r in run.metrics("epoch")] == [1]
    assert [(r["epoch"], r["step"]) for r in run.metrics("step")] == [(1, 5), (1, 10), (2, 5)]
    assert run.metrics("eval")[0]["top1"] == 0.5


def test_run_files_respect_the_umask_like_any_other_file(tiny_run):
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    expected = 0o666 & ~umask
    written = [p for p in tiny_run.run.path.rglob("*") if p.is_file()]
    assert {"run.json", "model.safetensors", "model.json", "last.safetensors"} <= {p.name for p in written}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(expected) for p in written}


def test_malformed_run_files_are_one_message_or_left_out(tmp_path):
    """run.json that is a list, or whose config is not an object, is refused by name; metrics.jsonl lines
    that are numbers, lists or garbage are left out with a count, never a crash; a model.json whose
    input size or statistics cannot be used is refused when it is read."""
    import json

    import pytest

    from convforge.checkpoint import read_model_spec
    from convforge.errors import CheckpointError, RunFolderError
    from convforge.runs import Run

    run = Run.create(tmp_path / "run", command="c", stage="train", config={})
    run.append_metrics({"kind": "eval", "top1": 0.5})
    with open(run.path / "metrics.jsonl", "a") as handle:
        handle.write("5\n[1, 2]\n{not json\n" + "[" * 100_000 + "\n")
    run.append_metrics({"kind": "eval", "top1": 0.7})
    assert [r["top1"] for r in run.metrics("eval")] == [0.5, 0.7]
    for text in ("[1, 2]", json.dumps({"config": [1]}), "[" * 100_000):
        (run.path / "run.json").write_text(text)
        with pytest.raises(RunFolderError, match="damaged"):
            Run.open(run.path)
    model = {"architecture": "resnet10t", "num_classes": 2, "in_chans": 3, "classes": ["a", "b"],
             "preprocessing": {"input_size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3}}  # fmt: skip
    for field, value, message in [("input_size", [-5, "x"], "input_size must be"), ("std", [0, 1, 1], "std"),
                                  ("mean", "abc", "mean and std must be lists")]:  # fmt: skip
        broken = {**model, "preprocessing": {**model["preprocessing"], field: value}}
        (run.path / "model.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=message):
            read_model_spec(run.path)
