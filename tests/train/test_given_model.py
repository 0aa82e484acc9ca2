"""`train(model=...)`: a model narrowed by hand (as pruning leaves it) is fine-tuned, saved, loaded and
resumed as itself, rebuilt from the run's records rather than from the architecture's defaults."""

import json

import pytest
import torch
from torch import nn

from convforge import TrainConfig
from convforge.checkpoint import load_model
from convforge.errors import UserError
from convforge.models import create_model
from convforge.train import resume, train

SMALL_SHAPES = "shapes:size=32,train=256,val=64,test=64"


def _narrowed_resnet(num_classes: int) -> nn.Module:
    """resnet10t with the first block's inner width cut from 64 to 24 channels."""
    model = create_model("resnet10t", num_classes=num_classes)
    block = model.layer1[0]
    keep = torch.arange(24)
    conv1 = nn.Conv2d(block.conv1.in_channels, 24, 3, padding=1, bias=False)
    conv1.weight.data.copy_(block.conv1.weight.data[keep])
    bn1 = nn.BatchNorm2d(24)
    conv2 = nn.Conv2d(24, block.conv2.out_channels, 3, padding=1, bias=False)
    conv2.weight.data.copy_(block.conv2.weight.data[:, keep])
    block.conv1, block.bn1, block.conv2 = conv1, bn1, conv2
    return model


def _config(**overrides) -> TrainConfig:
    settings = dict(data=SMALL_SHAPES, model="resnet10t", epochs=2, batch_size=16, workers=0,
                    warmup_epochs=0, deterministic=True)  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def test_a_narrowed_model_trains_saves_and_loads_as_itself(tmp_path):
    result = train(_config(epochs=1), tmp_path / "fine", model=_narrowed_resnet(10))
    loaded, spec = load_model(result.run.path)
    assert loaded.layer1[0].conv1.out_channels == 24 and spec.shapes["layer1.0.conv1.weight"] == [24, 64, 3, 3]
    assert json.loads((result.run.path / "run.json").read_text())["model_given"] is True
    assert result.test is not None and result.test.images > 0


def test_a_stopped_fine_tune_resumes_with_its_own_widths(tmp_path, monkeypatch):
    from convforge.train import engine

    original = engine._Trainer._train_one_epoch
    calls = []

    def stop_in_second_epoch(self, epoch, position):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, position)

    monkeypatch.setattr(engine._Trainer, "_train_one_epoch", stop_in_second_epoch)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        train(_config(), out, model=_narrowed_resnet(10))
    monkeypatch.undo()
    result = resume(out)
    assert [r["epoch"] for r in result.run.metrics("epoch")] == [1, 2]
    loaded, _ = load_model(out)
    assert loaded.layer1[0].bn1.num_features == 24


def test_a_model_that_is_not_the_named_architecture_is_refused(tmp_path):
    with pytest.raises(UserError, match="is not a resnet18"):
        train(_config(model="resnet18"), tmp_path / "a", model=_narrowed_resnet(10))
    with pytest.raises(UserError, match=r"predicts 7 classes but .* has 10.*reset_classifier\(10\)"):
        train(_config(), tmp_path / "b", model=_narrowed_resnet(7))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
