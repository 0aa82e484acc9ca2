"""The training engine learns, keeps its checkpoints honest, stops on a NaN, and repeats over seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convforge import TrainConfig, load_model, train, train_seeds
from convforge.errors import ConfigError, TrainingDiverged
from convforge.tensorfile import read_tensors
from convforge.train.setup import resolve_preprocessing
from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS, TINY_SHAPES


def _config(**overrides) -> TrainConfig:
    values = dict(
        data=TINY_SHAPES,
        model=TINY_MODEL,
        model_kwargs=dict(TINY_MODEL_KWARGS),
        epochs=2,
        batch_size=64,
        lr=4e-3,
        crop="none",
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_tiny_run_learns_and_writes_a_complete_run_folder(tiny_run):
    run = tiny_run.run
    # 10 classes, 6 short epochs: chance is 10% (+-1.7% on 300 images); the tiny run reaches ~80% on every
    # CPU kind, so a bar at 50% says it learned without sitting in the noise of any CPU's kernels
    assert tiny_run.test.top1 > 0.5
    epochs = run.metrics("epoch")
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    info = run.info
    assert info["status"] == "finished" and info["stage"] == "train"
    assert info["data"]["fingerprint"] and info["hardware"]["cpu_capability"]
    assert info["test"]["top1"] == tiny_run.test.top1
    assert (run.path / "checkpoints" / "last.safetensors").is_file()
    evals = run.metrics("eval")
    assert evals[-1]["split"] == "test" and len(evals[-1]["confusion"]) == 10
    assert sum(map(sum, evals[-1]["confusion"])) == 300
    model_json = json.loads((run.path / "model.json").read_text())
    assert model_json["epoch"] == tiny_run.best_epoch


def test_saved_model_reproduces_the_final_evaluation(tiny_run):
    from convforge.data import load_dataset
    from convforge.train import evaluate

    model, spec = load_model(tiny_run.run.path)
    dataset = load_dataset(TINY_SHAPES)
    again = evaluate(model.to(memory_format=torch.channels_last), dataset.test, spec.preprocessing)
    assert tiny_run.test.precision == again.precision == "float32"  # trained under --amp auto, evaluated as deployed
    assert tiny_run.run.info["eval_precision"] == "float32"
    assert all(epoch["val_precision"] == "float32" for epoch in tiny_run.run.metrics("epoch"))
    assert again.top1 == tiny_run.test.top1
    assert again.confusion == tiny_run.test.confusion


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from convforge.train import engine

    out = tmp_path / "diverge"
    original = engine._Trainer._train_one_epoch

    def poison_second_epoch(self, epoch, position):
        if epoch == 1:
            with torch.no_grad():
                for parameter in self.model.parameters():
                    parameter.fill_(float("nan"))
        return original(self, epoch, position)

    monkeypatch.setattr(engine._Trainer, "_train_one_epoch", poison_second_epoch)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 1.*epoch 1.*--lr"):
        train(_config(epochs=3), out)
    model, _ = load_model(out)  # the epoch-1 weights survive, intact and finite
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert json.loads((out / "run.json").read_text())["status"] == "diverged"
    _, state, _ = read_tensors(out / "checkpoints" / "last.safetensors")
    assert state["epoch"] == 1


def test_seeds_report_mean_and_std(tmp_path):
    results, summary = train_seeds(
        _config(epochs=1, data="shapes:size=32,train=300,val=50,test=100"), 3, tmp_path / "seeds"
    )
    top1 = np.array([r.test.top1 for r in results])
    assert summary["n"] == 3
    assert summary["top1_mean"] == pytest.approx(top1.mean())
    assert summary["top1_std"] == pytest.approx(top1.std(ddof=1))
    assert [r["seed"] for r in summary["runs"]] == [0, 1, 2]
    assert (tmp_path / "seeds" / "seeds" / "seed-2" / "model.safetensors").is_file()
    assert results[0].run.metrics("seeds")[0]["n"] == 3


def test_bad_options_are_user_errors():
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        TrainConfig(data="shapes", epochs=0)
    with pytest.raises(ConfigError, match="amp must be one of"):
        TrainConfig(data="shapes", amp="fp8")
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm'.*Did you mean: adam"):
        TrainConfig(data="shapes", opt="adamm")
    with pytest.raises(ConfigError, match="sched must be one of"):
        TrainConfig(data="shapes", sched="plateau")
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) \['epoch'\].*Did you mean: epochs"):
        TrainConfig.from_dict({"data": "shapes", "epoch": 3})


def test_preprocessing_follows_image_size():
    from convforge.models import create_model

    model = create_model("resnet18")
    small, small_aug = resolve_preprocessing(model, (32, 32, 3), TrainConfig(data="x"))
    assert (
        small.input_size == (32, 32)
        and small.crop_pct == 1.0
        and small_aug.crop == "pad"
        and small_aug.pad == 4
    )
    large, large_aug = resolve_preprocessing(model, (256, 256, 3), TrainConfig(data="x"))
    assert large.input_size == (224, 224) and large_aug.crop == "rrc"
    assert large.crop_pct == model.pretrained_cfg["crop_pct"] and large.interpolation == "bicubic"


def test_photos_train_with_random_resized_crop_and_evaluate_with_centre_crop(tmp_path):
    """Images above 128 px take the photo path: RRC for training, resize + centre crop to evaluate."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for label in ("bright", "dark"):
            folder = tmp_path / "photos" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                base = 200 if label == "bright" else 40
                pixels = rng.normal(base, 20, (150, 180, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    config = TrainConfig(data=str(tmp_path / "photos"), model="resnet10t", img_size=64, epochs=3, batch_size=8,
                         val_fraction=0.0, model_kwargs=dict(TINY_MODEL_KWARGS))  # fmt: skip
    result = train(config, tmp_path / "run")
    preprocessing = json.loads((tmp_path / "run" / "model.json").read_text())["preprocessing"]
    assert preprocessing["input_size"] == [64, 64] and preprocessing["crop_pct"] < 1.0
    assert result.run.info["data"]["image_shape"] == [150, 180, 3]
    assert result.test.images == 8 and result.test.top1 == 1.0  # brightness is easy


def test_a_run_that_fails_says_so_in_run_json(tmp_path, monkeypatch):
    from convforge.train import engine

    def broken_epoch(self, epoch, position):
        raise RuntimeError("out of disk, say")

    monkeypatch.setattr(engine._Trainer, "_train_one_epoch", broken_epoch)
    with pytest.raises(RuntimeError, match="out of disk"):
        train(_config(epochs=1), tmp_path / "failed")
    info = json.loads((tmp_path / "failed" / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "RuntimeError: out of disk, say"


def test_resume_of_a_run_without_a_checkpoint_starts_it_afresh(tmp_path, monkeypatch):
    from convforge.train import engine, resume

    out = tmp_path / "early"
    monkeypatch.setattr(engine._Trainer, "_train_one_epoch", lambda self, epoch, position: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(_config(epochs=1, seed=5), out)
    assert not (out / "checkpoints" / "last.safetensors").exists()
    monkeypatch.undo()
    result = resume(out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["config"]["seed"] == 5 and "error" not in info
    assert [r["epoch"] for r in result.run.metrics("epoch")] == [1]


def test_force_replaces_a_run_folder_and_nothing_else(tmp_path):
    from convforge.errors import RunFolderError

    out = tmp_path / "run"
    train(_config(epochs=1), out)
    with pytest.raises(RunFolderError, match="already exists.*--force"):
        train(_config(epochs=1), out)
    (out / "stale.txt").write_text("from the old run")
    train(_config(epochs=1, seed=3), out, force=True)
    assert not (out / "stale.txt").exists() and json.loads((out / "run.json").read_text())["config"]["seed"] == 3
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(RunFolderError, match="not a run folder.*nothing was deleted"):
        train(_config(epochs=1), precious, force=True)
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_horizontal_flips_are_off_by_default_for_digits_only():
    from torch import nn

    model = nn.Linear(1, 1)
    flips = lambda data, **kw: resolve_preprocessing(model, (28, 28, 1), _config(data=data, **kw))[1].hflip  # noqa: E731
    assert flips("mnist:/data/mnist") == 0.0
    assert flips("fashion-mnist:/data/fmnist") == 0.5 and flips("shapes") == 0.5
    assert flips("mnist:/data/mnist", hflip=0.5) == 0.5 and flips("shapes", hflip=0.0) == 0.0
    with pytest.raises(ConfigError, match="hflip is a probability"):
        _config(hflip=2.0)


def test_without_a_terminal_training_prints_plain_progress_lines():
    import io

    from rich.console import Console

    from convforge.train import TrainProgress

    stream = io.StringIO()
    progress = TrainProgress(console=Console(file=stream, width=200), log_every=10, log_seconds=3600)
    assert progress.plain  # a StringIO is no terminal
    progress.start_epoch(1, 3, 25)
    for step in range(1, 26):
        progress.update(step, loss=1.0 / step, accuracy=0.5, images_per_second=640.0)
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["step 10/25", "step 20/25"]
    assert lines[0].startswith("epoch 1/3  step 10/25  loss 0.1000  acc 0.500  640 img/s  epoch ETA 0:")


def test_checkpoint_every_reads_durations_and_refuses_nonsense():
    from convforge.train.position import parse_duration
    from tests.helpers import invoke

    assert [parse_duration(t) for t in ("10m", "90s", "1.5h", "45", "off", "0")] == [600, 90, 5400, 45, None, None]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    result = invoke("train", "shapes", "--checkpoint-every", "soon")
    assert result.exit_code == 2 and "--checkpoint-every: not a duration: 'soon'" in result.output


def test_a_ctrl_c_in_the_final_evaluation_is_recorded_and_resume_finishes_it(tmp_path, monkeypatch):
    """The final test evaluation is part of the run: interrupted there, run.json says "interrupted" (it
    once stayed "running"), and a resume, with every epoch done, evaluates and finishes."""
    from convforge.train import engine, resume

    out = tmp_path / "late"
    evaluate_once = engine._Trainer._final_evaluation

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine._Trainer, "_final_evaluation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_config(epochs=1), out)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(engine._Trainer, "_final_evaluation", evaluate_once)
    result = resume(out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["test"]["images"] > 0 and result.test is not None
    assert [r["epoch"] for r in result.run.metrics("epoch")] == [1]  # no epoch trained again
