"""Weights files verify themselves: round trips are exact, truncation and tampering are refused."""

from __future__ import annotations

import json

import pytest
import torch

from convforge.checkpoint import ModelSpec, load_model, save_model
from convforge.data.transforms import Preprocessing
from convforge.errors import CheckpointError
from convforge.models import create_model
from convforge.tensorfile import read_tensors, write_tensors


def _saved(tmp_path, num_classes=5):
    spec = ModelSpec(
        "resnet10t",
        num_classes,
        3,
        [f"c{i}" for i in range(num_classes)],
        Preprocessing((32, 32), (0.5,) * 3, (0.25,) * 3),
    )
    model = create_model("resnet10t", num_classes=num_classes)
    save_model(tmp_path, model, spec)
    return model, spec


def test_round_trip_is_exact(tmp_path):
    model, spec = _saved(tmp_path)
    loaded, loaded_spec = load_model(tmp_path)
    assert loaded_spec == spec
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    description = json.loads((tmp_path / "model.json").read_text())
    assert description["shapes"]["fc.weight"] == [5, 512]
    assert description["classes"] == spec.classes


def test_truncated_weights_are_refused(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_model(tmp_path)


def test_tampered_weights_are_refused(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="fails its integrity check"):
        load_model(tmp_path)


def test_swapped_model_json_is_refused(tmp_path):
    _saved(tmp_path / "a")
    _saved(tmp_path / "b")
    (tmp_path / "a" / "model.json").write_text((tmp_path / "b" / "model.json").read_text())
    with pytest.raises(CheckpointError, match="disagree"):
        load_model(tmp_path / "a")


def test_class_count_mismatch_names_both(tmp_path):
    _, spec = _saved(tmp_path, num_classes=5)
    wanted = ModelSpec("resnet10t", 10, 3, [str(i) for i in range(10)], spec.preprocessing)
    with pytest.raises(
        CheckpointError, match="holds resnet10t with 5 classes, but resnet10t with 10 classes"
    ):
        load_model(tmp_path, expect=wanted)
    other_arch = ModelSpec("resnet18", 5, 3, spec.classes, spec.preprocessing)
    with pytest.raises(CheckpointError, match="holds resnet10t with 5 classes, but resnet18 with 5"):
        load_model(tmp_path, expect=other_arch)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="not written by convforge"):
        read_tensors(tmp_path / "x.safetensors")


def test_tied_and_shared_tensors_can_be_written(tmp_path):
    shared = torch.arange(6.0)
    write_tensors(tmp_path / "t.safetensors", {"a": shared, "b": shared, "c": shared[:3]}, {"k": 1})
    tensors, metadata, _ = read_tensors(tmp_path / "t.safetensors")
    assert metadata == {"k": 1} and torch.equal(tensors["c"], torch.arange(3.0))


@pytest.mark.parametrize(
    ("field", "edit", "message"),
    [
        ("classes", lambda d: d["classes"].reverse(), "classes differ"),
        ("preprocessing", lambda d: d["preprocessing"].update(mean=[0.0, 0.0, 0.0]), "preprocessing differ"),
        ("model_kwargs", lambda d: d["model_kwargs"].update(drop_rate=0.5), "model_kwargs differ"),
        ("in_chans", lambda d: d.update(in_chans=1), "in_chans differ"),
    ],
)
def test_a_hand_edited_model_json_is_refused(tmp_path, field, edit, message):
    _saved(tmp_path)
    path = tmp_path / "model.json"
    description = json.loads(path.read_text())
    edit(description)
    path.write_text(json.dumps(description))
    with pytest.raises(CheckpointError, match=f"does not describe the weights in model.safetensors: {message}"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pretrained": True},
        {"checkpoint_path": "elsewhere.pth"},
        {"pretrained_cfg": {"url": "https://example.org/w.pth"}},
        {"weights": "https://example.org/w.pth"},
    ],
)
def test_model_keywords_that_reach_outside_the_run_are_refused_at_load(tmp_path, kwargs, monkeypatch):
    import timm.models._hub as hub

    _saved(tmp_path)
    path = tmp_path / "model.json"
    description = json.loads(path.read_text())
    description["model_kwargs"] = kwargs
    path.write_text(json.dumps(description))
    monkeypatch.setattr(hub, "hf_hub_download", lambda *a, **k: pytest.fail("a download was attempted"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("a download was attempted"))
    with pytest.raises(CheckpointError, match=r"model\.json: .* would download weights or read another file"):
        load_model(tmp_path)


def test_training_refuses_model_keywords_that_download():
    from convforge import TrainConfig
    from convforge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--model-arg: pretrained=True would download.*--pretrained"):
        TrainConfig(data="shapes", model_kwargs={"pretrained": True})


def test_a_run_saved_before_unireplknet_renamed_its_branches_still_loads(tmp_path):
    """Weights and recorded shapes under the old names (`dil_conv_k{k}_{r}`, the official layout) load:
    the model's own renaming runs before the fit check, as it does in create_model(checkpoint_path=)."""
    import re

    spec = ModelSpec("unireplknet_a", 3, 3, ["a", "b", "c"], Preprocessing((32, 32), (0.5,) * 3, (0.25,) * 3))
    model = create_model("unireplknet_a", num_classes=3).eval()
    save_model(tmp_path, model, spec)
    tensors, description, _ = read_tensors(tmp_path / "model.safetensors")

    def old_name(key: str) -> str:  # stage block i's dilated_branches.{j}.conv -> dil_conv_k{k}_{r}
        match = re.search(r"dilated_branches\.(\d+)\.(conv|bn)\.", key)
        if not match:
            return key
        from convforge.models.unireplknet import DILATED_BRANCHES

        k, r = DILATED_BRANCHES[13][int(match.group(1))]  # unireplknet_a's large kernels are 13
        return key.replace(match.group(0), f"dil_{match.group(2)}_k{k}_{r}.")

    old = {old_name(k): v for k, v in tensors.items()}
    assert old.keys() != tensors.keys()
    description["shapes"] = {old_name(k): v for k, v in description["shapes"].items()}
    digest = write_tensors(tmp_path / "model.safetensors", old, description)
    (tmp_path / "model.json").write_text(json.dumps({**description, "weights": {"file": "model.safetensors",
                                                                                 "sha256": digest}}))  # fmt: skip
    loaded, _ = load_model(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
