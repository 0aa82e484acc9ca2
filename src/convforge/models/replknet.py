"""RepLKNet

Paper: `Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs` - Ding, Zhang, Han,
Ding (CVPR 2022)
    - https://arxiv.org/abs/2203.06717
Official code (MIT): https://github.com/DingXiaoH/RepLKNet-pytorch (weights on Google Drive and Baidu,
linked from its README)

Each RepLK block is BN -> 1x1 conv -> a very large depthwise kernel (31x31 in the first stage) with a
parallel 5x5 kernel that is merged into it for deployment -> ReLU -> 1x1 conv, residual; each is
followed by a ConvFFN block. The large depthwise convolutions use convforge's autotuned CPU
implementation in eval mode (models/large_kernel.py).

Where this differs from the official code, on purpose: `reparameterize()` is idempotent (the official
`merge_kernel` raises the second time) and works in any float dtype; module names follow timm (`stem`,
`stages.N.downsample` for the official `transitions`, `norm_pre`, `head.fc`), mapped by
`checkpoint_filter_fn`. Deployed form (`deploy=True`) = the official `small_kernel_merged=True`.
"""

from collections import OrderedDict

import torch
from timm.data import (
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
)
from timm.layers import ClassifierHead, DropPath
from timm.models import generate_default_cfgs, register_model
from torch import nn

from convforge.models._build import build_zoo_model, remap_official_keys, zoo_cfg
from convforge.models._staged import Stage, StagedClassifier, drop_path_rates
from convforge.models.large_kernel import DepthwiseConv2d, LargeKernelDWConv2d
from convforge.models.reparam import assign_weight_bias, fuse_bn, pad_kernel_to

__all__ = ["RepLKNet"]


def conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1, relu: bool = False,
            conv: nn.Module | None = None) -> nn.Sequential:  # fmt: skip
    """conv (no bias) -> BN [-> ReLU], named conv / bn / nonlinear as in the official code."""
    layers = OrderedDict(
        conv=conv
        or nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        bn=nn.BatchNorm2d(out_chs),
    )
    if relu:
        layers["nonlinear"] = nn.ReLU()
    return nn.Sequential(layers)


class ReparamLargeKernelConv(nn.Module):
    """A large depthwise kernel with BN, plus a small one with BN in parallel; one conv when deployed."""

    def __init__(self, channels: int, kernel_size: int, small_kernel: int | None, deploy: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        if deploy:
            self.lkb_reparam = LargeKernelDWConv2d(channels, kernel_size, bias=True)
        else:
            large = LargeKernelDWConv2d(channels, kernel_size, bias=False)
            self.lkb_origin = conv_bn(channels, channels, kernel_size, groups=channels, conv=large)
            if small_kernel is not None:
                if small_kernel > kernel_size:
                    raise ValueError("the small kernel cannot be larger than the large kernel")
                small = DepthwiseConv2d(channels, small_kernel, bias=False)
                self.small_conv = conv_bn(channels, channels, small_kernel, groups=channels, conv=small)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "lkb_reparam"):
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if hasattr(self, "small_conv"):
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        if hasattr(self, "lkb_reparam"):
            return
        weight, bias = fuse_bn(self.lkb_origin.conv.weight, None, self.lkb_origin.bn)
        if hasattr(self, "small_conv"):
            small_weight, small_bias = fuse_bn(self.small_conv.conv.weight, None, self.small_conv.bn)
            weight = weight + pad_kernel_to(small_weight, self.kernel_size)
            bias = bias + small_bias
            del self.small_conv
        merged = self.lkb_origin.conv
        assign_weight_bias(merged, weight, bias)
        del self.lkb_origin
        self.lkb_reparam = merged


class RepLKBlock(nn.Module):
    def __init__(self, in_chs: int, dw_chs: int, kernel_size: int, small_kernel: int | None, drop_path: float,
                 deploy: bool = False):  # fmt: skip
        super().__init__()
        self.pw1 = conv_bn(in_chs, dw_chs, 1, relu=True)
        self.pw2 = conv_bn(dw_chs, in_chs, 1)
        self.large_kernel = ReparamLargeKernelConv(dw_chs, kernel_size, small_kernel, deploy)
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = nn.BatchNorm2d(in_chs)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw2(self.lk_nonlinear(self.large_kernel(self.pw1(self.prelkb_bn(x)))))
        return x + self.drop_path(out)


class ConvFFN(nn.Module):
    def __init__(self, in_chs: int, hidden_chs: int, drop_path: float):
        super().__init__()
        self.preffn_bn = nn.BatchNorm2d(in_chs)
        self.pw1 = conv_bn(in_chs, hidden_chs, 1)
        self.pw2 = conv_bn(hidden_chs, in_chs, 1)
        self.nonlinear = nn.GELU()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.pw2(self.nonlinear(self.pw1(self.preffn_bn(x)))))


class RepLKNet(StagedClassifier):
    """RepLKNet with the timm model interface; `deploy=True` builds the merged-kernel form."""

    def __init__(
        self,
        large_kernel_sizes: tuple[int, ...] = (31, 29, 27, 13),
        layers: tuple[int, ...] = (2, 2, 18, 2),
        channels: tuple[int, ...] = (128, 256, 512, 1024),
        small_kernel: int | None = 5,
        dw_ratio: float = 1.0,
        ffn_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        deploy: bool = False,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        width = channels[0]
        self.stem = nn.Sequential(
            conv_bn(in_chans, width, 3, stride=2, relu=True),
            conv_bn(width, width, 3, groups=width, relu=True),
            conv_bn(width, width, 1, relu=True),
            conv_bn(width, width, 3, stride=2, groups=width, relu=True),
        )
        rates = drop_path_rates(drop_path_rate, sum(layers))
        stages, self.feature_info, first = [], [], 0
        for i, depth in enumerate(layers):
            downsample = nn.Identity() if i == 0 else nn.Sequential(
                conv_bn(channels[i - 1], channels[i], 1, relu=True),
                conv_bn(channels[i], channels[i], 3, stride=2, groups=channels[i], relu=True),
            )  # fmt: skip
            blocks = []
            for rate in rates[first : first + depth]:
                blocks.append(RepLKBlock(channels[i], int(channels[i] * dw_ratio), large_kernel_sizes[i], small_kernel,
                                         rate, deploy))  # fmt: skip
                blocks.append(ConvFFN(channels[i], int(channels[i] * ffn_ratio), rate))
            stages.append(Stage(downsample, blocks))
            self.feature_info.append({"num_chs": channels[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            first += depth
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = channels[-1]
        self.norm_pre = nn.BatchNorm2d(channels[-1])
        self.head = ClassifierHead(channels[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an official RepLKNet checkpoint (either form) to convforge's names."""
    return remap_official_keys(state_dict, "transitions.0.0.conv.weight", _official_key)


def _official_key(key: str) -> str | None:
    if key.startswith("transitions."):
        _, index, rest = key.split(".", 2)
        return f"stages.{int(index) + 1}.downsample.{rest}"
    if key.startswith("stages.") and key.split(".")[2] == "norm":
        return None  # the intermediate-feature BN of the detection backbones; unused for classification
    if key.startswith("norm."):
        return "norm_pre." + key[len("norm.") :]
    if key.startswith("head."):
        return "head.fc." + key[len("head.") :]
    return key


def _create(variant: str, pretrained: bool = False, **kwargs) -> RepLKNet:
    return build_zoo_model(RepLKNet, variant, pretrained, checkpoint_filter_fn, (0, 1, 2, 3), **kwargs)


def _cfg(notes: str = "", **kwargs) -> dict:
    return zoo_cfg(paper_ids="arXiv:2203.06717", license="mit", origin_url="https://github.com/DingXiaoH/RepLKNet-pytorch",
                   paper_name="Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design in CNNs",
                   first_conv="stem.0.conv", notes=notes, **kwargs)  # fmt: skip


def _drive(file_id: str) -> str:
    return (
        f"https://drive.google.com/file/d/{file_id}/view (see https://github.com/DingXiaoH/RepLKNet-pytorch)"
    )


_384 = {"input_size": (3, 384, 384), "pool_size": (12, 12), "crop_pct": 1.0}
default_cfgs = generate_default_cfgs({
    "replknet_31b.in1k": _cfg(_drive("1azQUiCxK9feYVkkrPqwVPBtNsTzDrX7S")),
    "replknet_31b.in1k_384": _cfg(_drive("1vo-P3XB6mRLUeDzmgv90dOu73uCeLfZN"), **_384),
    "replknet_31b.in22k_ft_in1k": _cfg(_drive("1DslZ2voXZQR1QoFY9KnbsHAeF84hzS0s")),
    "replknet_31b.in22k_ft_in1k_384": _cfg(_drive("1Sc46BWdXXm2fVP-K_hKKU_W8vAB-0duX"), **_384),
    "replknet_31l.in22k_ft_in1k_384": _cfg(_drive("1JYXoNHuRvC33QV1pmpzMTKEni1hpWfBl"), **_384),
    "replknet_xl.megdata73m_ft_in1k_320": _cfg(_drive("1tPC60El34GntXByIRHb-z-Apm4Y5LX1T"), input_size=(3, 320, 320),
                                              pool_size=(10, 10), crop_pct=1.0, mean=IMAGENET_INCEPTION_MEAN,
                                              std=IMAGENET_INCEPTION_STD),
    "replknet_tiny_test": _cfg(),
})  # fmt: skip


@register_model
def replknet_31b(pretrained: bool = False, **kwargs) -> RepLKNet:
    args = {
        "large_kernel_sizes": (31, 29, 27, 13),
        "layers": (2, 2, 18, 2),
        "channels": (128, 256, 512, 1024),
    }
    return _create("replknet_31b", pretrained, **dict(args, **kwargs))


@register_model
def replknet_31l(pretrained: bool = False, **kwargs) -> RepLKNet:
    args = {
        "large_kernel_sizes": (31, 29, 27, 13),
        "layers": (2, 2, 18, 2),
        "channels": (192, 384, 768, 1536),
    }
    return _create("replknet_31l", pretrained, **dict(args, **kwargs))


@register_model
def replknet_xl(pretrained: bool = False, **kwargs) -> RepLKNet:
    args = {"large_kernel_sizes": (27, 27, 27, 13), "layers": (2, 2, 18, 2), "channels": (256, 512, 1024, 2048),
            "small_kernel": None, "dw_ratio": 1.5}  # fmt: skip
    return _create("replknet_xl", pretrained, **dict(args, **kwargs))


@register_model
def replknet_tiny_test(pretrained: bool = False, **kwargs) -> RepLKNet:
    """About 11k parameters (10 classes), large kernels down to 7x7 with the 5x5 branch, for tests."""
    args = {"large_kernel_sizes": (13, 11, 9, 7), "layers": (1, 1, 1, 1), "channels": (4, 8, 12, 16)}
    return _create("replknet_tiny_test", pretrained, **dict(args, **kwargs))
