"""The native zoo: faithful to the official implementations, exact re-parameterization, timm interface.

For each architecture, tests/models/official/<arch>.json (see official_weights.py) holds the official
state-dict layout of a small configuration and the official code's logits for fixed weights; loading
that layout through `checkpoint_filter_fn` must reproduce those logits.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub.utils import EntryNotFoundError

import convforge
from convforge.errors import CheckpointError
from convforge.models import create_model, reparameterize_model
from tests.helpers import assert_close_scaled
from tests.models.official_weights import formula_state_dict, load_reference, probe_input

# architecture -> (module, the tiny test variant, whether it re-parameterizes)
ZOO = {
    "unireplknet": ("convforge.models.unireplknet", "unireplknet_tiny_test", True),
    "replknet": ("convforge.models.replknet", "replknet_tiny_test", True),
    "hornet": ("convforge.models.hornet", "hornet_tiny_test", False),
    "ibnnet": ("convforge.models.ibnnet", "resnet_ibn_tiny_test", False),
    "simplenet": ("convforge.models.simplenet", "simplenet_tiny_test", False),
}
# reference file in tests/models/official -> architecture
REFERENCES = {arch: arch for arch in ZOO} | {"ibnnet_b": "ibnnet", "simplenet_imagenet": "simplenet"}


def _module(arch: str):
    import importlib

    return importlib.import_module(ZOO[arch][0])


def _model_class(arch: str):
    module = _module(arch)
    return getattr(module, module.__all__[0])


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BN statistics, so that folding errors cannot hide behind default values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.3)
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator, dtype=buffer.dtype) + 0.5)
            elif name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator, dtype=buffer.dtype) * 0.3)
    return model


FORMS = [(ref, "train") for ref in sorted(REFERENCES)] + [
    (ref, "deploy") for ref in sorted(REFERENCES) if ZOO[REFERENCES[ref]][2]
]


@pytest.mark.parametrize(("reference_name", "form"), FORMS)
def test_official_layout_reproduces_official_outputs(reference_name, form):
    reference, arch = load_reference(reference_name), REFERENCES[reference_name]
    config = reference["config"]
    model = _model_class(arch)(**config, **({"deploy": True} if form == "deploy" else {})).eval()
    official_state = formula_state_dict(reference[f"{form}_keys"])
    model.load_state_dict(_module(arch).checkpoint_filter_fn(official_state, model), strict=True)
    with torch.no_grad():
        logits = model(probe_input(reference["input_shape"]))
    expected = torch.tensor(reference[f"{form}_logits"])
    assert_close_scaled(logits, expected, rtol=1e-5)


@pytest.mark.parametrize("arch", [a for a in sorted(ZOO) if ZOO[a][2]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reparameterization_is_exact_idempotent_and_smaller(arch, dtype):
    name = ZOO[arch][1]
    model = randomize(create_model(name, num_classes=5).to(dtype)).eval()
    x = torch.randn(2, 3, 64, 64, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        folded = reparameterize_model(model)
        after = folded(x)
        again = reparameterize_model(folded, inplace=True)
        after_again = again(x)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert ((after - before).abs().max() / before.abs().max()).item() < tolerance
    assert torch.equal(after, after_again)  # the second call changed nothing
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(folded) < count(model)
    deployed = create_model(name, num_classes=5, deploy=True)
    assert sorted(deployed.state_dict()) == sorted(
        folded.state_dict()
    )  # folded weights load into deploy=True


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_timm_interface_and_features(arch):
    name = ZOO[arch][1]
    model = create_model(name, num_classes=4)
    assert timm.create_model(name, num_classes=4).__class__ is model.__class__  # registered with timm
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 4)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    features = model.forward_features(x)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    assert model.get_classifier().out_features == 4
    model.reset_classifier(9)
    assert model(x).shape == (2, 9)
    intermediates = model.forward_intermediates(x, intermediates_only=True)
    extractor = create_model(name, features_only=True, out_indices=(1, 3))
    maps = extractor(x)
    assert [m.shape[1] for m in maps] == extractor.feature_info.channels()
    assert [m.shape for m in maps] == [intermediates[1].shape, intermediates[3].shape]
    cfg = model.pretrained_cfg
    assert cfg["mean"] and cfg["std"] and cfg["input_size"] and cfg["license"] and cfg["paper_ids"]


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_tracing_and_export(arch):
    model = create_model(ZOO[arch][1], num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), expected)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected)


@pytest.mark.parametrize("arch", [a for a in sorted(ZOO) if ZOO[a][2]])
def test_reparameterized_model_exports_to_onnx(arch, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = reparameterize_model(randomize(create_model(ZOO[arch][1], num_classes=3)).eval())
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert_close_scaled(torch.from_numpy(onnx_logits), model(x), rtol=1e-4)


def _official_checkpoint(arch: str, path, form: str = "train"):
    reference = load_reference(arch)
    torch.save({"model": formula_state_dict(reference[f"{form}_keys"])}, path)
    return reference


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_checkpoint_path_loads_an_official_file_offline(arch, tmp_path):
    reference = _official_checkpoint(arch, tmp_path / "official.pth")
    config = reference["config"]
    name = ZOO[arch][1]
    model = create_model(name, checkpoint_path=tmp_path / "official.pth", **config).eval()
    with torch.no_grad():
        logits = model(probe_input(reference["input_shape"]))
    expected = torch.tensor(reference["train_logits"])
    assert_close_scaled(logits, expected, rtol=1e-5)


def _fake_hub(arch: str, tmp_path, monkeypatch) -> tuple[dict, dict, list]:
    """A pretrained cfg whose hub download returns an official-layout file the test wrote: (cfg, the
    reference record, the (repo, filename) requests made)."""
    import timm.models._hub as hub

    reference = _official_checkpoint(arch, tmp_path / "weights.pth")
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        if filename.endswith(".safetensors"):
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(tmp_path / "weights.pth")

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    cfg = dict(copy.deepcopy(timm.models.get_pretrained_cfg(ZOO[arch][1]).to_dict()), hf_hub_id="org/repo",
               hf_hub_filename="weights.pth", url="", num_classes=reference["config"]["num_classes"])  # fmt: skip
    return cfg, reference, requested


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_pretrained_goes_through_the_real_download_code(arch, tmp_path, monkeypatch):
    """pretrained=True uses timm's hub download; here the download returns a file the test wrote."""
    cfg, reference, requested = _fake_hub(arch, tmp_path, monkeypatch)
    model = create_model(ZOO[arch][1], pretrained=True, pretrained_cfg=cfg, **reference["config"]).eval()
    assert ("org/repo", "weights.pth") in requested
    with torch.no_grad():
        logits = model(probe_input(reference["input_shape"]))
    assert_close_scaled(logits, torch.tensor(reference["train_logits"]), rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_pretrained_weights_adapt_like_timms_own(arch, tmp_path, monkeypatch):
    """What timm's test_model_load_pretrained / features_pretrained ask, offline and with outputs
    checked: one input channel (the first conv's weights summed, so a grey image gives the RGB
    model's logits for that image repeated), a new or no classifier, and features_only."""
    cfg, reference, _ = _fake_hub(arch, tmp_path, monkeypatch)
    config = {k: v for k, v in reference["config"].items() if k != "num_classes"}
    name = ZOO[arch][1]
    rgb = create_model(name, pretrained=True, pretrained_cfg=cfg, **reference["config"]).eval()
    grey = create_model(name, pretrained=True, pretrained_cfg=cfg, in_chans=1, num_classes=5, **config).eval()
    no_head = create_model(name, pretrained=True, pretrained_cfg=cfg, num_classes=0, **config).eval()
    features = create_model(name, pretrained=True, pretrained_cfg=cfg, features_only=True, **config).eval()
    x = probe_input(reference["input_shape"])
    x_grey = x.mean(dim=1, keepdim=True)
    with torch.no_grad():
        assert grey(x_grey).shape == (x.shape[0], 5)
        assert_close_scaled(grey.forward_features(x_grey), rgb.forward_features(x_grey.expand_as(x)), rtol=1e-5)
        assert_close_scaled(no_head(x), rgb.forward_head(rgb.forward_features(x), pre_logits=True), rtol=1e-5)
        expected = rgb.forward_intermediates(x, intermediates_only=True)
        for index, feature_map in zip(features.feature_info.out_indices, features(x), strict=True):
            assert_close_scaled(feature_map, expected[index], rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_mismatched_checkpoint_names_the_key(arch, tmp_path):
    reference = load_reference(arch)
    state = formula_state_dict(reference["train_keys"])
    key = sorted(k for k in state if k.endswith("weight") and state[k].dim() > 1)[0]
    state[key] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="shape mismatch for"):
        create_model(ZOO[arch][1], checkpoint_path=tmp_path / "bad.pth", **reference["config"])


def test_public_reparameterize_function_is_exported():
    assert convforge.reparameterize_model is reparameterize_model


@pytest.mark.parametrize(
    "name", ["repvgg_a0", "mobileone_s0", "fastvit_t8", "repvit_m0_9", "repghostnet_050"]
)
def test_timms_reparameterizable_models_go_through_the_same_call(name):
    model = randomize(create_model(name, num_classes=5)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.no_grad():
        before = model(x)
        folded = reparameterize_model(model)
        after = folded(x)
        again = reparameterize_model(folded)  # FastViT's own RepMixer would raise here
        assert torch.equal(again(x), after)
    assert ((after - before).abs().max() / before.abs().max()).item() < 1e-5
    assert count(folded) <= count(model)


@pytest.mark.parametrize(("arch", "url"), [
    ("ibnnet", "https://example.org/releases/resnet_ibn.pth"),  # a file name: timm's own downloader
    ("hornet", "https://cloud.example.org/f/abc123/?dl=1"),  # none (Tsinghua Cloud style): convforge names it
])  # fmt: skip
def test_pretrained_from_a_url_goes_through_the_real_download_code(arch, url, tmp_path, monkeypatch):
    reference = _official_checkpoint(arch, tmp_path / "published.pth")
    downloads = []

    def fake_download(source, destination, *args, **kwargs):
        downloads.append(source)
        Path(destination).write_bytes((tmp_path / "published.pth").read_bytes())

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    name = ZOO[arch][1]
    cfg = dict(timm.models.get_pretrained_cfg(name).to_dict(), url=url, hf_hub_id=None,
               num_classes=reference["config"]["num_classes"])  # fmt: skip
    model = create_model(name, pretrained=True, pretrained_cfg=cfg, **reference["config"]).eval()
    assert downloads == [url]
    with torch.no_grad():
        logits = model(probe_input(reference["input_shape"]))
    assert_close_scaled(logits, torch.tensor(reference["train_logits"]), rtol=1e-5)


def test_weights_published_only_by_hand_say_where():
    with pytest.raises(CheckpointError, match=r"drive\.google\.com.*checkpoint_path="):
        create_model("replknet_31b", pretrained=True)
    with pytest.raises(CheckpointError, match="no pretrained weights exist for unireplknet_tiny_test"):
        create_model("unireplknet_tiny_test", pretrained=True)


def _simplenet_variants() -> list[str]:
    return sorted(timm.list_models("simplenet*"))


@pytest.mark.parametrize("name", [ZOO[arch][1] for arch in sorted(ZOO)] + _simplenet_variants())
def test_pool_size_is_the_feature_map_at_the_input_size(name):
    """timm's contract (its test_models.py checks it): pretrained_cfg['pool_size'] is the spatial size
    of forward_features at pretrained_cfg['input_size']."""
    model = create_model(name).eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, *cfg["input_size"]))
    assert tuple(features.shape[-2:]) == tuple(cfg["pool_size"])


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_no_global_pool_returns_the_feature_map(arch):
    """num_classes=0 with global_pool='' (at creation or through reset_classifier) gives an NCHW map of
    forward_features' shape (the head's norm, in the ConvNeXt-style heads, still applies, as in timm)."""
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    unpooled = create_model(ZOO[arch][1], num_classes=0, global_pool="").eval()
    reset = create_model(ZOO[arch][1], num_classes=5).eval()
    reset.reset_classifier(0, "")
    with torch.no_grad():
        features = unpooled.forward_features(x)
        assert features.ndim == 4 and unpooled(x).shape == features.shape == reset(x).shape
        if arch == "simplenet":  # no head norm: the map itself
            assert torch.equal(unpooled(x), features)


def test_simplenet_refuses_an_unknown_pooling():
    with pytest.raises(ValueError, match="global_pool must be 'max', 'avg' or ''"):
        create_model("simplenet_tiny_test", global_pool="catavgmax")


def test_every_official_reference_has_a_recipe_that_regenerates_it():
    """make_official_references.py covers every committed reference (run it with the official checkouts;
    its --check agreed with all of them on the commits they record)."""
    from tests.models.make_official_references import OFFICIALS, compare
    from tests.models.official_weights import OFFICIAL

    assert set(OFFICIALS) == {path.stem for path in OFFICIAL.glob("*.json")} == set(REFERENCES)
    reference = load_reference("replknet")
    made = {field: reference[field] for field in ("train_keys", "train_logits", "deploy_keys", "deploy_logits")}
    assert compare("replknet", made, reference) == []
    made["deploy_logits"] = (torch.tensor(reference["deploy_logits"]) * (1 + 1e-4)).tolist()
    made["train_keys"] = {**reference["train_keys"], "extra.weight": [1]}
    assert [p.split(" differ")[0] for p in compare("replknet", made, reference)] == ["replknet: train_keys",
                                                                                     "replknet: deploy_logits"]
    assert all(OFFICIALS[name].deploys == ("deploy_keys" in load_reference(name)) for name in OFFICIALS)
