"""create_model and list_models: timm's interface, clear errors, safe weight loading, honest counts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from convforge.errors import CheckpointError, ModelNotFoundError
from convforge.measure import count_macs, count_params
from convforge.models import create_model, list_models


def test_unknown_model_suggests_names():
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'resnet19'.*Did you mean: resnet18"):
        create_model("resnet19")
    with pytest.raises(ModelNotFoundError, match="convnext_tiny"):
        create_model("convnext_tinny")


def test_timm_interface():
    model = create_model("resnet18", num_classes=7, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 7)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 512)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    assert model.pretrained_cfg["mean"] and model.feature_info


def test_checkpoint_path_safetensors_and_pth(tmp_path):
    source = create_model("resnet10t", num_classes=4)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = create_model("resnet10t", num_classes=4, checkpoint_path=tmp_path / name)
        for key, value in loaded.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_checkpoint_that_does_not_fit_names_the_key(tmp_path):
    save_file(
        {k: v.clone() for k, v in create_model("resnet10t", num_classes=4).state_dict().items()},
        tmp_path / "w.safetensors",
    )
    with pytest.raises(
        CheckpointError, match=r"shape mismatch for fc\.weight: checkpoint \(4, 512\) vs model \(9, 512\)"
    ):
        create_model("resnet10t", num_classes=9, checkpoint_path=tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="missing keys"):
        create_model("resnet18", num_classes=4, checkpoint_path=tmp_path / "w.safetensors")


def test_convforge_checkpoint_of_another_class_count_names_both(tiny_run):
    weights = tiny_run.run.path / "model.safetensors"
    with pytest.raises(
        CheckpointError, match="holds resnet10t with 10 classes, but resnet10t with 4 classes"
    ):
        create_model(
            "resnet10t", num_classes=4, checkpoint_path=weights, channels=[16, 24, 32, 48], stem_width=8
        )
    with pytest.raises(
        CheckpointError, match="holds resnet10t with 10 classes, but resnet18 with 10 classes"
    ):
        create_model("resnet18", num_classes=10, checkpoint_path=weights)
    model = create_model(
        "resnet10t", num_classes=10, checkpoint_path=weights, channels=[16, 24, 32, 48], stem_width=8
    )
    assert model.num_classes == 10


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        create_model("resnet10t", checkpoint_path=tmp_path / "evil.pth")


def test_counts_agree_with_the_published_figures():
    """timm's model card for resnet18: 11.7 M parameters, 1.8 GMACs at 224x224."""
    (info,) = [m for m in list_models("resnet18") if m.name == "resnet18"]
    assert info.params == 11_689_512
    assert info.gmacs == pytest.approx(1.814, abs=0.01)
    assert info.family == "resnet" and "He et al." in info.paper
    model = create_model("resnet18")
    assert count_params(model) == info.params
    assert count_macs(model, (3, 224, 224)) / 1e9 == pytest.approx(info.gmacs, abs=1e-3)


def test_list_models_pattern_and_input_size():
    small = list_models("resnet10t", input_size=64)
    assert [m.name for m in small] == ["resnet10t"]
    assert small[0].input_size == (3, 64, 64)
    big = list_models("resnet10t")
    assert small[0].gmacs < big[0].gmacs
    assert list_models("no_such_architecture_xyz") == []
