"""HorNet

Paper: `HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions` - Rao,
Zhao, Tang, Zhou, Lim, Lu (NeurIPS 2022)
    - https://arxiv.org/abs/2207.14284
Official code (MIT): https://github.com/raoyongming/HorNet (weights on Tsinghua Cloud, linked from
its README)

The recursive gated convolution gnConv of order n projects the input into n+1 groups of halving width,
mixes all but the first with one depthwise conv (7x7, or the global filter: half 3x3 depthwise, half a
learnable frequency-domain filter), then multiplies them in recursively with 1x1 projections between,
giving n-th order spatial interactions at the cost of a convolution. Blocks use it where ConvNeXt uses
its depthwise conv, with a layer-scaled MLP after.

Module names follow timm (`stem`, `stages.N.downsample`, `stages.N.blocks.M`, `head.norm`, `head.fc`);
`checkpoint_filter_fn` maps the official keys. Nothing in HorNet re-parameterizes.
"""

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerNorm2d, NormMlpClassifierHead, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from torch import nn

from convforge.models._build import (
    build_zoo_model,
    convnext_layout_key,
    remap_official_keys,
    zoo_cfg,
)
from convforge.models._staged import Stage, StagedClassifier, drop_path_rates

__all__ = ["HorNet"]


class GlobalLocalFilter(nn.Module):
    """Half the channels through a 3x3 depthwise conv, half through a learnable global filter (an
    element-wise product in the 2-D Fourier domain, resized to the input's frequency grid)."""

    def __init__(self, dim: int, h: int = 14, w: int = 8):
        super().__init__()
        self.dw = nn.Conv2d(dim // 2, dim // 2, kernel_size=3, padding=1, bias=False, groups=dim // 2)
        self.complex_weight = nn.Parameter(torch.zeros(dim // 2, h, w, 2))
        trunc_normal_(self.complex_weight, std=0.02)
        self.pre_norm = LayerNorm2d(dim, eps=1e-6)
        self.post_norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(x)
        local, spectral = torch.chunk(x, 2, dim=1)
        local = self.dw(local)
        batch, channels, height, width = spectral.shape
        spectrum = torch.fft.rfft2(spectral.float(), dim=(2, 3), norm="ortho")
        # resized to the input's frequency grid unconditionally, not only when the sizes differ as in the
        # official code: at equal sizes align_corners bilinear is an exact copy, and without the branch
        # on shapes the filter traces (FX, torch.export) for every input size
        weight = F.interpolate(self.complex_weight.permute(3, 0, 1, 2), size=spectrum.shape[2:4],
                               mode="bilinear", align_corners=True).permute(1, 2, 3, 0)  # fmt: skip
        spectrum = spectrum * torch.view_as_complex(weight.float().contiguous())
        spectral = torch.fft.irfft2(spectrum, s=(height, width), dim=(2, 3), norm="ortho").to(local.dtype)
        # interleave the two halves channel by channel, as the official implementation does
        x = torch.stack([local, spectral], dim=2).reshape(batch, 2 * channels, height, width)
        return self.post_norm(x)


class GnConv(nn.Module):
    """Recursive gated convolution of order `order` (orders 1 to 5 in the paper)."""

    def __init__(
        self, dim: int, order: int = 5, global_filter: tuple[int, int] | None = None, scale: float = 1.0
    ):
        super().__init__()
        if order < 1 or dim % 2 ** (order - 1):
            raise ValueError(
                f"gnConv of order {order} needs a width divisible by {2 ** (order - 1)}, got {dim}"
            )
        self.order = order
        self.dims = [dim // 2**i for i in range(order)][::-1]
        self.proj_in = nn.Conv2d(dim, 2 * dim, 1)
        mixed = sum(self.dims)
        if global_filter is None:
            self.dwconv = nn.Conv2d(mixed, mixed, kernel_size=7, padding=3, groups=mixed)
        else:
            self.dwconv = GlobalLocalFilter(mixed, *global_filter)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.pws = nn.ModuleList([nn.Conv2d(self.dims[i], self.dims[i + 1], 1) for i in range(order - 1)])
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(self.proj_in(x), (self.dims[0], sum(self.dims)), dim=1)
        gates = torch.split(self.dwconv(rest) * self.scale, self.dims, dim=1)
        x = first * gates[0]
        for i, projection in enumerate(self.pws):  # TorchScript iterates a ModuleList, not a zip of one
            x = projection(x) * gates[i + 1]
        return self.proj_out(x)


class HorNetBlock(nn.Module):
    """LN -> gnConv -> layer scale, residual; then LN -> MLP (4x) -> layer scale, residual."""

    def __init__(
        self, dim: int, gnconv: GnConv, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6
    ):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.gnconv = gnconv
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        scale = layer_scale_init_value
        self.gamma1 = nn.Parameter(scale * torch.ones(dim)) if scale > 0 else None
        self.gamma2 = nn.Parameter(scale * torch.ones(dim)) if scale > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gnconv(self.norm1(x))
        if self.gamma1 is not None:
            y = self.gamma1.view(-1, 1, 1) * y
        x = x + self.drop_path(y)
        y = self.pwconv2(self.act(self.pwconv1(self.norm2(x.permute(0, 2, 3, 1)))))
        if self.gamma2 is not None:
            y = self.gamma2 * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class HorNet(StagedClassifier):
    """HorNet with the timm model interface. `orders` and `global_filters` (None or (h, w) of the
    filter's frequency grid) are given per stage."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (2, 3, 18, 2),
        base_dim: int = 64,
        orders: tuple[int, ...] = (2, 3, 4, 5),
        global_filters: tuple[tuple[int, int] | None, ...] = (None, None, None, None),
        gnconv_scale: float = 1.0 / 3.0,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        head_init_scale: float = 1.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        dims = [base_dim * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6)
        )
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info, first = [], [], 0
        for i, depth in enumerate(depths):
            downsample = nn.Identity()
            if i > 0:
                downsample = nn.Sequential(
                    LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dims[i], 2, 2)
                )
            make_gnconv = partial(GnConv, dims[i], orders[i], global_filters[i], gnconv_scale)
            blocks = [HorNetBlock(dims[i], make_gnconv(), rate, layer_scale_init_value)
                      for rate in rates[first : first + depth]]  # fmt: skip
            stages.append(Stage(downsample, blocks))
            self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            first += depth
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm_pre = nn.Identity()
        self.head = NormMlpClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                          norm_layer=partial(LayerNorm2d, eps=1e-6))  # fmt: skip
        self.init_weights(head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return self.parameters_named(".gamma1", ".gamma2", ".complex_weight")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an official HorNet checkpoint to convforge's names."""
    return remap_official_keys(state_dict, "downsample_layers.0.0.weight", convnext_layout_key)


def pruning_protected(model: nn.Module) -> dict[nn.Module, str]:
    """For structured pruning: gnConv's projections, whose outputs it splits into its recursion's
    widths (`dims`); Torch-Pruning cannot follow those splits, so their output channels stay whole. The
    stages' widths and the MLPs still prune."""
    protected = {}
    for module in model.modules():
        if isinstance(module, GnConv):
            for layer in (module.proj_in, module.dwconv, *module.pws):
                protected[layer] = "gnConv splits its output into the recursion's widths"
    return protected


def after_resize(model: nn.Module) -> None:
    """GnConv splits its channels by `dims`, a list fixed at construction: read it back from the
    layers that `load_model` narrowed (each recursion's width is its projection's input)."""
    for module in model.modules():
        if isinstance(module, GnConv):
            module.dims = [projection.in_channels for projection in module.pws] + [module.proj_out.in_channels]


def _create(variant: str, pretrained: bool = False, **kwargs) -> HorNet:
    return build_zoo_model(HorNet, variant, pretrained, checkpoint_filter_fn, (0, 1, 2, 3), **kwargs)


def _cfg(url: str = "", **kwargs) -> dict:
    return zoo_cfg(paper_ids="arXiv:2207.14284", license="mit", origin_url="https://github.com/raoyongming/HorNet",
                   paper_name="HorNet: Efficient High-Order Spatial Interactions with Recursive Gated Convolutions",
                   url=url, **kwargs)  # fmt: skip


def _tsinghua(file_id: str) -> str:
    return f"https://cloud.tsinghua.edu.cn/f/{file_id}/?dl=1"


default_cfgs = generate_default_cfgs({
    "hornet_tiny_7x7.in1k": _cfg(_tsinghua("bac9690c72944d19aca1")),
    "hornet_tiny_gf.in1k": _cfg(_tsinghua("460e759c82324ea6bfa3")),
    "hornet_small_7x7.in1k": _cfg(_tsinghua("8ef64277da0e469ea857")),
    "hornet_small_gf.in1k": _cfg(_tsinghua("959603ca287d4c09ad49")),
    "hornet_base_7x7.in1k": _cfg(_tsinghua("13a748487711492e9704")),
    "hornet_base_gf.in1k": _cfg(_tsinghua("c212d1d8a3914b47a5c1")),
    "hornet_tiny_test": _cfg(),
})  # fmt: skip

_GF = (None, None, (14, 8), (7, 4))  # the global filter's frequency grid at 224x224 input, stages 3 and 4


@register_model
def hornet_tiny_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create("hornet_tiny_7x7", pretrained, **dict({"base_dim": 64}, **kwargs))


@register_model
def hornet_tiny_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create("hornet_tiny_gf", pretrained, **dict({"base_dim": 64, "global_filters": _GF}, **kwargs))


@register_model
def hornet_small_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create("hornet_small_7x7", pretrained, **dict({"base_dim": 96}, **kwargs))


@register_model
def hornet_small_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create("hornet_small_gf", pretrained, **dict({"base_dim": 96, "global_filters": _GF}, **kwargs))


@register_model
def hornet_base_7x7(pretrained: bool = False, **kwargs) -> HorNet:
    return _create("hornet_base_7x7", pretrained, **dict({"base_dim": 128}, **kwargs))


@register_model
def hornet_base_gf(pretrained: bool = False, **kwargs) -> HorNet:
    return _create("hornet_base_gf", pretrained, **dict({"base_dim": 128, "global_filters": _GF}, **kwargs))


@register_model
def hornet_tiny_test(pretrained: bool = False, **kwargs) -> HorNet:
    """About 25k parameters (10 classes) with gnConv orders 1 to 4 and a global filter, for tests."""
    args = {
        "depths": (1, 1, 1, 1),
        "base_dim": 4,
        "orders": (1, 2, 3, 4),
        "global_filters": (None, None, (4, 3), None),
    }
    return _create("hornet_tiny_test", pretrained, **dict(args, **kwargs))
