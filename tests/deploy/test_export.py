"""ONNX export: the file carries what a consumer needs, computes what PyTorch computes, has a dynamic
batch axis, and is never handed over (nor left under its final name) when it does not."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from convforge.checkpoint import ModelSpec, load_model
from convforge.data.transforms import Preprocessing
from convforge.deploy.export import ParityError, export_model, export_run
from convforge.deploy.onnx_file import onnx_metadata, open_session
from convforge.models import create_model
from convforge.runs import Run
from tests.helpers import invoke


def test_a_trained_run_exports_with_metadata_parity_and_a_dynamic_batch(tiny_run_copy):
    result = export_run(tiny_run_copy, images=64)
    path = tiny_run_copy / "artifacts" / "model.onnx"
    assert result.path == "artifacts/model.onnx" and path.stat().st_size == result.size_bytes
    assert result.parity.passed and result.parity.images == 64 and result.parity.top1_agreement == 1.0
    model, spec = load_model(tiny_run_copy)
    metadata = onnx_metadata(path)
    assert json.loads(metadata["classes"]) == spec.classes
    assert json.loads(metadata["mean"]) == pytest.approx(list(spec.preprocessing.mean))
    assert json.loads(metadata["input_size"]) == list(spec.preprocessing.input_size)
    weights = json.loads((tiny_run_copy / "model.json").read_text())["weights"]
    assert metadata["source_weights_sha256"] == weights["sha256"]
    assert metadata["run"] == "run" and metadata["channel_order"] == "RGB"
    # what a consumer without convforge must do to an image, and what was done to the graph
    assert f"{spec.preprocessing.interpolation} resize of the shorter side to 32 px, then a centre crop of 32x32" \
        in metadata["resize"]
    assert metadata["pixel_scale"].startswith("uint8 pixels / 255") and json.loads(metadata["batchnorm_folded"])
    session = open_session(path)
    for batch in (1, 5):  # the batch axis is dynamic
        x = torch.randn(batch, 3, *spec.preprocessing.input_size, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        found = session.run(None, {"images": x.numpy()})[0]
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    record = Run(tiny_run_copy).metrics("export")[-1]
    assert record["status"] == "exported" and record["parity"]["passed"] is True and record["opset"] == result.opset


def test_batchnorm_is_folded_unless_asked_not_to(tiny_run_copy):
    ops = lambda path: {node.op_type for node in onnx.load(str(path)).graph.node}  # noqa: E731
    export_run(tiny_run_copy, images=8)
    assert "BatchNormalization" not in ops(tiny_run_copy / "artifacts" / "model.onnx")
    export_run(tiny_run_copy, images=8, fold=False, force=True)
    assert "BatchNormalization" in ops(tiny_run_copy / "artifacts" / "model.onnx")


class _DifferentWhenExported(nn.Module):
    """Computes x in eager mode but 1.5 x in an exported graph: an export that lies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.5 if torch.compiler.is_exporting() else x


def test_an_export_that_computes_something_else_is_rejected_and_kept_aside(tiny_run_copy, monkeypatch):
    from convforge.deploy import export

    real = export.deployable
    monkeypatch.setattr(export, "deployable", lambda model: nn.Sequential(real(model), _DifferentWhenExported()).eval())
    expected = r"largest logit difference .* \(allowed [0-9.e-]+\).*first module that differs is `1`.*kept as .*reject"
    with pytest.raises(ParityError, match=expected) as caught:
        export_run(tiny_run_copy, images=16)
    assert caught.value.parity.passed is False
    artifacts = tiny_run_copy / "artifacts"
    assert (artifacts / "model.onnx.rejected").is_file() and not (artifacts / "model.onnx").exists()
    result = invoke("export", tiny_run_copy, "--images", "16")
    assert result.exit_code == 1 and "parity check failed" in result.output and "REJECTED" in result.output
    assert not (artifacts / "model.onnx").exists()


@pytest.mark.parametrize(
    "name",
    ["resnet18", "mobilenetv3_small_050", "efficientnet_b0", "convnext_atto", "unireplknet_tiny_test",
     "replknet_tiny_test", "hornet_tiny_test"],  # fmt: skip
)
def test_every_family_exports_and_passes_the_gate(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    nn.init.normal_(model.get_classifier().weight)  # spread logits, so top-1 agreement means something
    for module in model.modules():  # non-trivial BN statistics, as after training
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    spec = ModelSpec(name, 10, 3, [str(i) for i in range(10)], Preprocessing((64, 64), (0.5,) * 3, (0.25,) * 3))
    inputs = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _, result = export_model(model, spec, inputs)
    scale = max(result.parity.max_abs_logit, 1.0)
    assert result.parity.max_abs_logit_diff <= 1e-4 * scale, result.parity
    assert result.parity.top1_agreement == 1.0


def test_export_mistakes_are_user_errors(tmp_path, tiny_run_copy):
    result = invoke("export", tmp_path / "nowhere")
    assert result.exit_code == 2 and "does not exist" in result.output
    Run.create(tmp_path / "empty", command="test", stage="train", config={})
    result = invoke("export", tmp_path / "empty")
    assert result.exit_code == 2 and "holds no trained model yet" in result.output
    assert invoke("export", tiny_run_copy, "--images", "8").exit_code == 0
    result = invoke("export", tiny_run_copy, "--images", "8")
    assert result.exit_code == 2 and "exists already; --force replaces it" in result.output
    assert invoke("export", tiny_run_copy, "--images", "8", "--force").exit_code == 0
    result = invoke("export", tiny_run_copy, "--images", "0", "--force")
    assert result.exit_code == 2 and "--images must be at least 1" in result.output


class _SingularValues(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x.flatten(2)).sum(-1)  # no ONNX translation for the SVD


def test_a_model_with_an_op_onnx_lacks_gets_a_message_naming_the_op_and_the_module():
    from convforge.errors import UserError

    model = nn.Sequential(nn.Conv2d(3, 4, 1), _SingularValues()).eval()
    spec = ModelSpec("custom", 4, 3, list("abcd"), Preprocessing((8, 8), (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(UserError, match=r"cannot be exported to ONNX: ONNX has no translation for aten\._linalg_svd, "
                                        r"called in module 1 \(_SingularValues\)"):  # fmt: skip
        export_model(model, spec, torch.zeros(2, 3, 8, 8))


def test_the_divergence_finder_names_the_first_module_that_differs():
    from convforge.deploy.divergence import find_divergence
    from convforge.deploy.export import deployable, export_onnx_bytes

    model = create_model("resnet10t", num_classes=10).eval()
    model.layer2[0].act1 = nn.Sequential(model.layer2[0].act1, _DifferentWhenExported())  # inside a block
    spec = ModelSpec("resnet10t", 10, 3, [str(i) for i in range(10)], Preprocessing((32, 32), (0.5,) * 3, (0.25,) * 3))
    deployed = deployable(model)
    onnx_bytes, _ = export_onnx_bytes(deployed, spec)
    found = find_divergence(deployed, onnx_bytes, torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert found.first.module == "layer2.0.act1.1" and found.first.kind == "_DifferentWhenExported"
    assert found.first.relative == pytest.approx(0.5, rel=1e-4)  # it multiplies by 1.5
    assert found.compared > 5  # every module before it was compared and agreed
    honest = deployable(create_model("resnet10t", num_classes=10))
    onnx_bytes, _ = export_onnx_bytes(honest, spec)
    clean = find_divergence(honest, onnx_bytes, torch.randn(4, 3, 32, 32))
    assert clean.first is None and clean.compared > 20


def test_the_parity_tolerance_scales_with_the_logits():
    """Logits near 1e5 differing by float rounding (7.5e-7 relative) pass; the same absolute difference on
    logits near 1 does not, and a real disagreement on large logits does not either."""
    from convforge.deploy.export import DEFAULT_ATOL, DEFAULT_MIN_AGREEMENT, compare_logits

    rng = np.random.default_rng(0)
    large = rng.normal(0, 1e5, size=(32, 10))
    rounding = compare_logits(large, large * (1 + 7.5e-7), DEFAULT_ATOL, DEFAULT_MIN_AGREEMENT)
    assert rounding.max_abs_logit_diff > DEFAULT_ATOL and rounding.passed  # once rejected: atol was absolute
    small = rng.normal(0, 1, size=(32, 10))
    assert not compare_logits(small, small + 0.2, DEFAULT_ATOL, DEFAULT_MIN_AGREEMENT).passed
    assert not compare_logits(large, large + 1e3, DEFAULT_ATOL, DEFAULT_MIN_AGREEMENT).passed  # 1e-2 relative
    assert rounding.to_dict()["allowed"] == pytest.approx(DEFAULT_ATOL * np.abs(large).max())
