"""The zoo under graph capture: TorchScript, FX (plain and timm's feature extraction), torch.jit.trace
and torch.export all give the eager model's outputs, in training and deployed form.

timm's own tests/test_models.py scripts, FX-traces and FX-then-scripts every registered model; these
are the project's own checks of the same contracts, with outputs compared, not just run. The layers
that skip padding-only taps choose their crop from the input's size, so a graph that must hold for
every size records the plain convolution: traced at one size, it must still be right at another.
"""

import pytest
import timm
import torch
from timm.models import FeatureGraphNet, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer

from convforge.models import create_model, reparameterize_model
from convforge.models.padding_taps import skip_padding_taps
from tests.helpers import assert_close_scaled
from tests.models.test_zoo import ZOO, randomize

FORMS = [(arch, "train") for arch in sorted(ZOO)] + [(arch, "deploy") for arch in sorted(ZOO) if ZOO[arch][2]]
# sizes where the deepest maps of the tiny variants are small enough for taps to be cropped, and not
SIZES = [(2, 3, 64, 64), (1, 3, 32, 48)]


def _model(arch: str, form: str, **kwargs) -> torch.nn.Module:
    with timm.set_scriptable(True):
        model = randomize(create_model(ZOO[arch][1], num_classes=5, **kwargs)).eval()
    return reparameterize_model(model) if form == "deploy" else model


def _inputs(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in SIZES]


@pytest.mark.parametrize(("arch", "form"), FORMS)
def test_torchscript_gives_the_eager_outputs(arch, form):
    model = _model(arch, form)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for x in _inputs():
            assert_close_scaled(scripted(x), model(x), rtol=1e-5)


@pytest.mark.parametrize(("arch", "form"), FORMS)
def test_plain_fx_trace_gives_the_eager_outputs_and_scripts(arch, form):
    """torch.fx.symbolic_trace with no leaf modules declared traces through every layer, and the graph
    module scripts (its generated code carries real annotations, not `from __future__` strings)."""
    model = _model(arch, form)
    graph = torch.fx.symbolic_trace(model)
    scripted = torch.jit.script(graph)
    with torch.no_grad():
        for x in _inputs(1):
            expected = model(x)
            assert_close_scaled(graph(x), expected, rtol=1e-5)
            assert_close_scaled(scripted(x), expected, rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_timm_fx_feature_extraction_matches_forward_intermediates(arch):
    """What timm's FX feature extraction (`FeatureGraphNet`, behind `features_only=True,
    feature_cls='fx'`) returns equals the model's own `forward_intermediates`."""
    model = _model(arch, "train")
    indices = tuple(range(len(model.feature_info)))
    extractor = FeatureGraphNet(model, out_indices=indices)
    x = _inputs(2)[0]
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        maps = extractor(x)
    assert len(maps) == len(indices)
    for index, feature_map in zip(indices, maps, strict=True):
        assert_close_scaled(feature_map, expected[index], rtol=1e-5)
    with timm.set_scriptable(True):
        through_timm = timm.create_model(ZOO[arch][1], features_only=True, feature_cls="fx").eval()
    with torch.no_grad():
        assert [m.shape for m in through_timm(x)] == [expected[i].shape for i in through_timm.feature_info.out_indices]


def test_timm_tracer_needs_no_leaf_modules_from_the_zoo():
    """Nothing in the zoo hides from FX: timm's notrace registry holds none of its classes."""
    zoo_types = [t for t in get_notrace_modules() if t.__module__.startswith("convforge")]
    zoo_functions = [f for f in get_notrace_functions() if f.__module__.startswith("convforge")]
    assert zoo_types == [] and zoo_functions == []
    NodePathTracer(leaf_modules=get_notrace_modules()).trace(_model("unireplknet", "train"))


@pytest.mark.parametrize(("arch", "form"), FORMS)
def test_jit_trace_at_one_size_holds_at_another(arch, form):
    """torch.jit.trace (what the TorchScript-based ONNX export records) must not bake in one size's
    crop of the kernel taps: traced at 64x64, the graph still gives the eager outputs at 32x48."""
    model = _model(arch, form)
    big, small = _inputs(3)
    with torch.no_grad():
        traced = torch.jit.trace(model, big, check_trace=False)
        assert_close_scaled(traced(small), model(small), rtol=1e-5)


@pytest.mark.parametrize(("arch", "form"), FORMS)
def test_torch_export_with_a_dynamic_batch(arch, form):
    model = _model(arch, form)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        for n in (1, 2, 5):
            x_n = x[:1].expand(n, -1, -1, -1).contiguous()
            assert_close_scaled(exported.module()(x_n), model(x_n), rtol=1e-5)


def test_a_resnet_with_padding_taps_skipped_scripts_and_fx_traces():
    """`skip_padding_taps` (used in training) leaves a model that scripts and traces like before."""
    model = randomize(timm.create_model("resnet10t", num_classes=5)).eval()
    assert skip_padding_taps(model) > 0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
        assert_close_scaled(torch.jit.script(model)(x), expected, rtol=1e-5)
        assert_close_scaled(torch.fx.symbolic_trace(model)(x), expected, rtol=1e-5)
        traced = torch.jit.trace(model, torch.randn(1, 3, 8, 8), check_trace=False)
        assert_close_scaled(traced(x), expected, rtol=1e-5)


@pytest.mark.parametrize("grid", [(8, 5), (6, 4)])
def test_hornet_global_filter_equals_the_official_formula(grid):
    """The filter now always resizes its frequency weights (no branch on shapes, so it traces): at the
    input's own frequency grid that is an exact copy, elsewhere the official bilinear resize."""
    import torch.nn.functional as F

    from convforge.models.hornet import GlobalLocalFilter

    layer = randomize(GlobalLocalFilter(8, *grid)).eval()
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        normed = layer.pre_norm(x)
        local, spectral = torch.chunk(normed, 2, dim=1)
        spectrum = torch.fft.rfft2(spectral, dim=(2, 3), norm="ortho")
        weight = layer.complex_weight
        if weight.shape[1:3] != spectrum.shape[2:4]:  # the official code's condition
            weight = F.interpolate(weight.permute(3, 0, 1, 2), size=spectrum.shape[2:4], mode="bilinear",
                                   align_corners=True).permute(1, 2, 3, 0)  # fmt: skip
        spectral = torch.fft.irfft2(spectrum * torch.view_as_complex(weight.contiguous()), s=(8, 8),
                                    dim=(2, 3), norm="ortho")  # fmt: skip
        expected = layer.post_norm(torch.stack([layer.dw(local), spectral], dim=2).reshape(2, 8, 8, 8))
        assert torch.equal(layer(x), expected)


def test_unireplknet_loads_the_old_branch_names():
    """Branches were attributes named like the official code's (`dil_conv_k5_1`); state dicts saved
    that way (by the official code or convforge before) still load, and give the same outputs."""
    import re

    model = _model("unireplknet", "train")
    old_names = {}
    for key, value in model.state_dict().items():
        match = re.match(r"(.*)dilated_branches\.(\d+)\.(conv|bn)\.(.*)", key)
        if match is None:
            old_names[key] = value
            continue
        prefix, index, part, rest = match.groups()
        block = model.get_submodule(prefix.rstrip("."))
        branch = block.dilated_branches[int(index)]
        old_names[f"{prefix}dil_{part}_k{branch.kernel_size}_{branch.dilation}.{rest}"] = value
    assert any(".dil_conv_k" in key for key in old_names)
    fresh = create_model(ZOO["unireplknet"][1], num_classes=5).eval()
    fresh.load_state_dict(old_names)
    x = _inputs(7)[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
