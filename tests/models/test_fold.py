"""Folding for inference: every BatchNorm after a convolution folded into it and re-parameterizable blocks
folded compute the same logits (float64: to rounding), agree with torch.fx's own conv-BN fusion, and a
folded model saved with model.json's `folded` flag loads back identically, also after pruning."""

import onnxruntime
import pytest
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse as fx_fuse
from torch.nn.modules.batchnorm import _BatchNorm

from convforge.checkpoint import ModelSpec, load_model, save_model
from convforge.compress.prune import prune_model
from convforge.data.transforms import Preprocessing
from convforge.deploy.export import deployable, export_onnx_bytes
from convforge.models import create_model
from convforge.models.fold import FoldedNormAct, fold_model


def _trained_like(name: str, num_classes: int = 5) -> nn.Module:
    """A model whose norms hold statistics and affine terms far from their initial 0/1 (as after training),
    so a wrong fold shows in the logits."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.running_mean is not None:
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _max_change(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        before, after = model(x), folded(x)
    return float((after - before).abs().max()), float(before.abs().max())


@pytest.mark.parametrize(
    ("name", "folds"),
    [("resnet18", 20), ("mobilenetv2_100", 52), ("ghostnetv2_100", 122), ("repvgg_a0", 0), ("resnet18_ibn_a", 14)],
)
def test_folding_keeps_the_function_in_float64_and_leaves_no_foldable_norm(name, folds):
    model = _trained_like(name).double()
    result = fold_model(model)
    change, scale = _max_change(model, result.model, torch.randn(2, 3, 64, 64, dtype=torch.float64))
    assert change <= 1e-10 * scale
    assert len(result.folded) == folds and result.untraceable is None
    left = [n for n, m in result.model.named_modules() if isinstance(m, _BatchNorm)]
    assert len(left) == len(result.kept)  # every norm that is left is named with its reason
    assert all("no convolution before it" in reason for reason in result.kept)  # IBN-a's half BatchNorms
    if name == "mobilenetv2_100":  # timm's BatchNormAct2d keeps its activation
        assert any(isinstance(m, FoldedNormAct) and isinstance(m.act, nn.ReLU6) for m in result.model.modules())


def test_folding_agrees_with_torch_fx_conv_bn_fusion():
    """torch.fx's `fuse` folds the same conv -> BatchNorm2d pairs (into a GraphModule that keeps no model class)."""
    model = _trained_like("resnet18")
    reference = fx_fuse(model)
    folded = fold_model(model).model
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), folded(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    count = sum(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    assert count == sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0", "unireplknet_a", "replknet_31b"])
def test_a_pruned_reparameterizable_model_folds_saves_loads_and_exports(name, tmp_path):
    """Pruning narrows the tensors, not a block's own record of its widths (MobileOne's `groups`, read by its
    re-parameterization): the folded child still computes what the pruned one did, and loads from disk."""
    model = _trained_like(name)
    prune_model(model, (3, 64, 64), target="macs", goal=0.6, architecture=name)
    spec = ModelSpec(name, 5, 3, [str(i) for i in range(5)], Preprocessing((64, 64), (0.5,) * 3, (0.25,) * 3))
    folded = fold_model(model)
    change, scale = _max_change(model.eval(), folded.model, torch.randn(2, 3, 64, 64))
    assert change <= 1e-4 * scale + 1e-6
    save_model(tmp_path, folded.model, spec.folded_from(model))
    loaded, loaded_spec = load_model(tmp_path)
    assert loaded_spec.folded and loaded_spec.shapes == {k: list(v.shape) for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), folded.model(x))
    if name == "repvgg_a0":  # exporting re-parameterizes again: a no-op on a folded model
        onnx, _ = export_onnx_bytes(deployable(loaded), loaded_spec)
        session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = loaded(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert abs(got - expected).max() <= 1e-4 * abs(expected).max() + 1e-6


def test_a_folded_model_is_saved_with_its_unfolded_widths_or_refused(tmp_path):
    model = _trained_like("resnet18")
    spec = ModelSpec("resnet18", 5, 3, [str(i) for i in range(5)], Preprocessing((32, 32), (0.5,) * 3, (0.25,) * 3))
    with pytest.raises(ValueError, match="widths it had before folding"):
        save_model(tmp_path, fold_model(model).model, ModelSpec(**{**spec.__dict__, "folded": True}))
