"""IBN-Net (ResNet-IBN-a and ResNet-IBN-b)

Paper: `Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net` - Pan, Luo, Shi,
Tang (ECCV 2018)
    - https://arxiv.org/abs/1807.09441
Official code and weights (MIT): https://github.com/XingangPan/IBN-Net

Instance normalization removes appearance (colour, style) variation that batch normalization keeps;
IBN-Net mixes the two in the shallow layers of a ResNet. IBN-a replaces the first BN of every block in
stages 1-3 with half instance-norm, half batch-norm; IBN-b instance-normalizes the stem and the output
of the last block of stages 1 and 2 (when that is not also their first), after the residual addition.

Built on timm's ResNet, so the module names, features and interface are timm's; they match the official
key names already (`checkpoint_filter_fn` only unwraps checkpoint containers). The official head pools
with a fixed 7x7 window (224x224 input); timm's adaptive pooling computes the same there and also
works at other sizes.
"""

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from convforge.models._build import build_zoo_model, unwrap_checkpoint, zoo_cfg

__all__ = ["IBNResNet"]


class IBN(nn.Module):
    """Instance-Batch Normalization: the first `ratio` of the channels instance-normalized (affine),
    the rest batch-normalized."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, (self.half, x.shape[1] - self.half), dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


class IBNBasicBlock(BasicBlock):
    """timm's BasicBlock with IBN-b's optional instance norm after the residual addition."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.IN: nn.Module | None = None  # set by IBNResNet on the blocks IBN-b normalizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        x = x + shortcut
        if self.IN is not None:
            x = self.IN(x)
        return self.act2(x)


class IBNBottleneck(Bottleneck):
    """timm's Bottleneck with IBN-b's optional instance norm after the residual addition."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.IN: nn.Module | None = None  # set by IBNResNet on the blocks IBN-b normalizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        x = x + shortcut
        if self.IN is not None:
            x = self.IN(x)
        return self.act3(x)


class IBNResNet(ResNet):
    """timm's ResNet with IBN layers: `ibn_cfg` gives each stage 'a', 'b' or None; `block` is
    'basic' or 'bottleneck' (or the block class)."""

    def __init__(self, block: str | type[nn.Module], layers: tuple[int, ...],
                 ibn_cfg: tuple[str | None, ...] = ("a", "a", "a", None), **kwargs):  # fmt: skip
        block = {"basic": IBNBasicBlock, "bottleneck": IBNBottleneck}.get(block, block)
        super().__init__(block=block, layers=tuple(layers), **kwargs)
        if ibn_cfg[0] == "b":
            self.bn1 = nn.InstanceNorm2d(self.bn1.num_features, affine=True)
        for index, mode in enumerate(ibn_cfg):
            stage = getattr(self, f"layer{index + 1}")
            for position, unit in enumerate(stage):
                if mode == "a":
                    unit.bn1 = IBN(unit.bn1.num_features)
                elif mode == "b" and position == len(stage) - 1 and position > 0:
                    # the official layout: a stage's last block, never its first (a 1-block stage has none)
                    out_channels = (unit.bn3 if isinstance(unit, Bottleneck) else unit.bn2).num_features
                    unit.IN = nn.InstanceNorm2d(out_channels, affine=True)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official IBN-Net checkpoints use timm's names already; unwrap a training checkpoint's container."""
    return unwrap_checkpoint(state_dict)


def pruning_protected(model: nn.Module) -> dict[nn.Module, str]:
    """For structured pruning: the convolutions whose outputs an IBN splits into its instance- and
    batch-normalised halves at a fixed index; Torch-Pruning cannot follow that split, so their output
    channels stay whole (every other channel prunes)."""
    return {
        block.conv1: "its output is split by IBN into instance- and batch-normalised halves"
        for block in model.modules()
        if isinstance(block, (IBNBasicBlock, IBNBottleneck)) and isinstance(block.bn1, IBN)
    }


def after_resize(model: nn.Module) -> None:
    """IBN splits its input at `half`, the instance-normalised part: read back from the narrowed layer."""
    for module in model.modules():
        if isinstance(module, IBN):
            module.half = module.IN.num_features


def _create(
    variant: str, pretrained: bool, block: type[nn.Module], layers: tuple[int, ...], **kwargs
) -> IBNResNet:
    # timm's ResNet keeps its stages as top-level layer1..layer4: features need no flattening
    return build_zoo_model(IBNResNet, variant, pretrained, checkpoint_filter_fn, (0, 1, 2, 3, 4),
                           flatten_sequential=False, block=block, layers=layers, **kwargs)  # fmt: skip


def _cfg(url: str = "", **kwargs) -> dict:
    return zoo_cfg(paper_ids="arXiv:1807.09441", license="mit", origin_url="https://github.com/XingangPan/IBN-Net",
                   paper_name="Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net",
                   first_conv="conv1", classifier="fc", interpolation="bilinear", url=url, **kwargs)  # fmt: skip


_RELEASES = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"
default_cfgs = generate_default_cfgs({
    "resnet18_ibn_a.in1k": _cfg(_RELEASES + "resnet18_ibn_a-2f571257.pth"),
    "resnet34_ibn_a.in1k": _cfg(_RELEASES + "resnet34_ibn_a-94bc1577.pth"),
    "resnet50_ibn_a.in1k": _cfg(_RELEASES + "resnet50_ibn_a-d9d0bb7b.pth"),
    "resnet101_ibn_a.in1k": _cfg(_RELEASES + "resnet101_ibn_a-59ea0ac6.pth"),
    "resnet18_ibn_b.in1k": _cfg(_RELEASES + "resnet18_ibn_b-bc2f3c11.pth"),
    "resnet34_ibn_b.in1k": _cfg(_RELEASES + "resnet34_ibn_b-04134c37.pth"),
    "resnet50_ibn_b.in1k": _cfg(_RELEASES + "resnet50_ibn_b-9ca61e85.pth"),
    "resnet101_ibn_b.in1k": _cfg(_RELEASES + "resnet101_ibn_b-c55f6dba.pth"),
    "resnet_ibn_tiny_test": _cfg(),
})  # fmt: skip

_A, _B = ("a", "a", "a", None), ("b", "b", None, None)


@register_model
def resnet18_ibn_a(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "basic", "layers": (2, 2, 2, 2), "ibn_cfg": _A}
    return _create("resnet18_ibn_a", pretrained, **dict(args, **kwargs))


@register_model
def resnet34_ibn_a(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "basic", "layers": (3, 4, 6, 3), "ibn_cfg": _A}
    return _create("resnet34_ibn_a", pretrained, **dict(args, **kwargs))


@register_model
def resnet50_ibn_a(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "bottleneck", "layers": (3, 4, 6, 3), "ibn_cfg": _A}
    return _create("resnet50_ibn_a", pretrained, **dict(args, **kwargs))


@register_model
def resnet101_ibn_a(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "bottleneck", "layers": (3, 4, 23, 3), "ibn_cfg": _A}
    return _create("resnet101_ibn_a", pretrained, **dict(args, **kwargs))


@register_model
def resnet18_ibn_b(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "basic", "layers": (2, 2, 2, 2), "ibn_cfg": _B}
    return _create("resnet18_ibn_b", pretrained, **dict(args, **kwargs))


@register_model
def resnet34_ibn_b(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "basic", "layers": (3, 4, 6, 3), "ibn_cfg": _B}
    return _create("resnet34_ibn_b", pretrained, **dict(args, **kwargs))


@register_model
def resnet50_ibn_b(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "bottleneck", "layers": (3, 4, 6, 3), "ibn_cfg": _B}
    return _create("resnet50_ibn_b", pretrained, **dict(args, **kwargs))


@register_model
def resnet101_ibn_b(pretrained: bool = False, **kwargs) -> IBNResNet:
    args = {"block": "bottleneck", "layers": (3, 4, 23, 3), "ibn_cfg": _B}
    return _create("resnet101_ibn_b", pretrained, **dict(args, **kwargs))


@register_model
def resnet_ibn_tiny_test(pretrained: bool = False, **kwargs) -> IBNResNet:
    """A narrow ResNet (about 20k parameters) with both IBN kinds (a in stage 1, b in stage 2), for tests."""
    args = {"block": "basic", "layers": (1, 2, 1, 1), "channels": (4, 8, 12, 16), "stem_width": 4,
            "ibn_cfg": ("a", "b", None, None)}  # fmt: skip
    return _create("resnet_ibn_tiny_test", pretrained, **dict(args, **kwargs))
