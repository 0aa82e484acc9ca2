"""A model whose layers were narrowed by hand (as pruning does) is saved and rebuilt by `load_model`
from its model.json alone, computing exactly what it computed before: no pickle."""

import copy

import pytest
import torch
from torch import nn

from convforge.checkpoint import ModelSpec, load_model, save_model
from convforge.data.transforms import Preprocessing
from convforge.models import create_model
from convforge.models.resize import resize_to_shapes


# -------------------------------------------------------- narrowing by hand, independent of resize.py
def _conv(conv: nn.Conv2d, out_keep=None, in_keep=None) -> nn.Conv2d:
    weight = conv.weight.detach()
    out_keep = torch.arange(conv.out_channels) if out_keep is None else out_keep
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    if depthwise:
        weight, groups, in_channels = weight[out_keep], len(out_keep), len(out_keep)
    else:
        in_keep = torch.arange(conv.in_channels) if in_keep is None else in_keep
        weight, groups, in_channels = weight[out_keep][:, in_keep], conv.groups, len(in_keep)
    new = nn.Conv2d(in_channels, len(out_keep), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups, bias=conv.bias is not None)  # fmt: skip
    new.weight.data.copy_(weight)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach()[out_keep])
    return new


def _linear(linear: nn.Linear, out_keep=None, in_keep=None) -> nn.Linear:
    weight = linear.weight.detach()
    out_keep = torch.arange(linear.out_features) if out_keep is None else out_keep
    in_keep = torch.arange(linear.in_features) if in_keep is None else in_keep
    new = nn.Linear(len(in_keep), len(out_keep), bias=linear.bias is not None)
    new.weight.data.copy_(weight[out_keep][:, in_keep])
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.detach()[out_keep])
    return new


def _batchnorm(bn: nn.BatchNorm2d, keep) -> nn.BatchNorm2d:
    """A copy of the layer (timm's BatchNormAct2d keeps its activation) holding the kept channels."""
    new = copy.deepcopy(bn)
    new.num_features = len(keep)
    new.weight, new.bias = (nn.Parameter(getattr(bn, n).detach()[keep].clone()) for n in ("weight", "bias"))
    new.running_mean, new.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
    return new


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial statistics and scales, so a wrong channel shows up in the output."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    for name, parameter in model.named_parameters():
        if "gamma" in name or "grn" in name:
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def _spec(name: str, model: nn.Module, size: int) -> ModelSpec:
    preprocessing = Preprocessing((size, size), (0.5,) * 3, (0.25,) * 3)
    return ModelSpec(name, model.num_classes, 3, [str(i) for i in range(model.num_classes)], preprocessing)


def _keep(width: int, kept: int) -> torch.Tensor:
    return torch.randperm(width, generator=torch.Generator().manual_seed(width))[:kept].sort().values


def _narrow_resnet(model):
    block = model.layer2[1]  # conv1 -> bn1 -> conv2: the block's inner width
    keep = _keep(block.conv1.out_channels, 40)
    block.conv1, block.bn1 = _conv(block.conv1, out_keep=keep), _batchnorm(block.bn1, keep)
    block.conv2 = _conv(block.conv2, in_keep=keep)


def _narrow_convnext(model):
    mlp = model.stages[1].blocks[0].mlp  # the MLP's hidden width (1x1 convolutions in convnext_atto)
    keep = _keep(mlp.fc1.out_channels, 100)
    mlp.fc1, mlp.fc2 = _conv(mlp.fc1, out_keep=keep), _conv(mlp.fc2, in_keep=keep)


def _narrow_unireplknet(model):
    block = model.stages[0].blocks[0]  # pwconv1 -> GRN (1, 1, 1, C) -> pwconv2
    keep = _keep(block.pwconv1.out_features, 20)
    block.pwconv1, block.pwconv2 = _linear(block.pwconv1, out_keep=keep), _linear(block.pwconv2, in_keep=keep)
    block.grn.gamma = nn.Parameter(block.grn.gamma.detach()[..., keep])
    block.grn.beta = nn.Parameter(block.grn.beta.detach()[..., keep])


def _narrow_mobilenet(model):
    block = model.blocks[1][0]  # expansion -> depthwise -> projection: the depthwise groups follow
    keep = _keep(block.conv_pw.out_channels, 24)
    block.conv_pw, block.bn1 = _conv(block.conv_pw, out_keep=keep), _batchnorm(block.bn1, keep)
    block.conv_dw, block.bn2 = _conv(block.conv_dw, out_keep=keep), _batchnorm(block.bn2, keep)
    block.conv_pwl = _conv(block.conv_pwl, in_keep=keep)


def _narrow_hornet(model):
    """Narrow the first gate of a gnConv: its half of proj_in, its depthwise channels and pws[0]'s input.
    `dims` goes stale in the hand-made model too, so set it here; load_model must find it by itself."""
    gn = model.stages[1].blocks[0].gnconv
    d0, mixed = gn.dims[0], sum(gn.dims)
    kept = 4
    keep_rest = torch.cat([torch.arange(kept), torch.arange(d0, mixed)])
    gn.proj_in = _conv(gn.proj_in, out_keep=torch.cat([torch.arange(kept), d0 + keep_rest]))
    gn.dwconv = _conv(gn.dwconv, out_keep=keep_rest)
    gn.pws[0] = _conv(gn.pws[0], in_keep=torch.arange(kept))
    gn.dims = [kept, *gn.dims[1:]]


def _narrow_ibn(model):
    ibn = model.layer1[0].bn1  # IBN-a: instance-normalised first half, batch-normalised rest
    old_half = ibn.half
    keep_in = torch.arange(old_half - 1)
    keep_bn = torch.arange(ibn.BN.num_features)
    new_in = nn.InstanceNorm2d(len(keep_in), affine=True)
    new_in.weight.data.copy_(ibn.IN.weight.detach()[keep_in])
    new_in.bias.data.copy_(ibn.IN.bias.detach()[keep_in])
    ibn.IN, ibn.half = new_in, len(keep_in)
    block = model.layer1[0]
    keep = torch.cat([keep_in, old_half + keep_bn])
    block.conv1 = _conv(block.conv1, out_keep=keep)
    block.conv2 = _conv(block.conv2, in_keep=keep)
    ibn.BN = _batchnorm(ibn.BN, keep_bn)


CASES = {
    "resnet18": (_narrow_resnet, 64),
    "convnext_atto": (_narrow_convnext, 64),
    "unireplknet_tiny_test": (_narrow_unireplknet, 64),
    "mobilenetv3_small_050": (_narrow_mobilenet, 64),
    "hornet_tiny_test": (_narrow_hornet, 64),
    "resnet_ibn_tiny_test": (_narrow_ibn, 64),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_narrowed_model_loads_back_from_its_model_json(name, tmp_path):
    narrow, size = CASES[name]
    torch.manual_seed(0)
    model = _randomise(create_model(name, num_classes=7))
    narrow(model)
    model.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    save_model(tmp_path, model, _spec(name, model, size))

    loaded, spec = load_model(tmp_path)
    assert spec.shapes == {k: list(v.shape) for k, v in model.state_dict().items()}
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # the attributes describe the new tensors, as in a model built at these widths
    for (module_name, mine), theirs in zip(loaded.named_modules(), model.modules(), strict=True):
        for attribute in ("in_channels", "out_channels", "groups", "in_features", "out_features",
                          "num_features", "normalized_shape", "dims", "half"):  # fmt: skip
            if hasattr(theirs, attribute) and not callable(getattr(theirs, attribute)):  # Module.half()
                assert getattr(mine, attribute) == getattr(theirs, attribute), f"{module_name}.{attribute}"


def test_an_unchanged_model_is_left_alone():
    model = create_model("resnet18", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert resize_to_shapes(model, {k: list(v.shape) for k, v in before.items()}, "resnet18") == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_recorded_shape_with_other_dimensions_is_refused():
    from convforge.errors import CheckpointError

    model = create_model("resnet18", num_classes=3)
    with pytest.raises(CheckpointError, match=r"conv1.weight is recorded with shape \[64, 3, 7\].*dimensions"):
        resize_to_shapes(model, {"conv1.weight": [64, 3, 7]}, "resnet18")


def test_grn_is_declared_for_pruning_tools():
    from convforge.models.factory import model_file_hook

    model = create_model("unireplknet_tiny_test", num_classes=3)
    declared = model_file_hook("unireplknet_tiny_test", "unwrapped_parameters")(model)
    grns = [m for m in model.modules() if type(m).__name__ == "GRN"]
    assert len(declared) == 2 * len(grns) > 0
    assert all(dim == 3 and p.shape[3] == p.numel() for p, dim in declared)
