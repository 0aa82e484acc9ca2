"""The training engine learns, keeps its checkpoints honest, stops on a NaN, and repeats over seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convforge import TrainConfig, load_model, train, train_seeds
from convforge.checkpoint import read_tensors
from convforge.errors import ConfigError, TrainingDiverged
from convforge.train.setup import resolve_amp, resolve_preprocessing
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
    # 10 classes, 6 short epochs: chance is 10% (+-1.7% on 300 images); the tiny run reaches ~20%.
    assert tiny_run.test.top1 > 0.15
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
    amp = resolve_amp("auto", torch.device("cpu"))
    again = evaluate(
        model.to(memory_format=torch.channels_last), dataset.test, spec.preprocessing, amp_dtype=amp
    )
    assert again.top1 == tiny_run.test.top1
    assert again.confusion == tiny_run.test.confusion


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from convforge.train import engine

    out = tmp_path / "diverge"
    original = engine._Trainer._train_one_epoch

    def poison_second_epoch(self, epoch):
        if epoch == 1:
            with torch.no_grad():
                for parameter in self.model.parameters():
                    parameter.fill_(float("nan"))
        return original(self, epoch)

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
