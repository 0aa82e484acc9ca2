"""UniRepLKNet

Paper: `UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud,
Time-Series and Image Recognition` - Ding, Zhang, Ge, Zhao, Song, Yue, Shan (CVPR 2024)
    - https://arxiv.org/abs/2311.15599
Official code and weights (Apache-2.0): https://github.com/AILab-CVC/UniRepLKNet,
https://huggingface.co/DingXiaoH/UniRepLKNet

A ConvNeXt-like macro design whose blocks pair a large depthwise kernel with parallel dilated
small-kernel branches (the Dilated Reparam Block, folded into the large kernel for deployment), a
squeeze-and-excitation module, and a GRN-gated inverted-bottleneck FFN with batch norms that fold
into the linear layers.

Where this differs from the official code, on purpose:
* re-parameterization works in float64 (the official dilation helper builds a float32 tensor and
  fails) and is idempotent; the eval-mode large-kernel convolution picks its fastest exact CPU
  implementation (models/large_kernel.py);
* module names follow timm (`stem`, `stages.N.downsample`, `stages.N.blocks.M`, `head.norm`,
  `head.fc`, `se.fc1`/`se.fc2`, `grn`, `pwconv2_bn`); `checkpoint_filter_fn` maps the official keys,
  training-form and deployed (`deploy=True`) checkpoints alike.

Parameter counts equal the official definitions' (tests/models/test_zoo_counts.py). The paper's
tables count the deployed model.
"""

from functools import partial

import torch
from timm.layers import DropPath, LayerNorm2d, NormMlpClassifierHead, SEModule
from timm.models import generate_default_cfgs, register_model
from torch import nn

from convforge.models._build import build_zoo_model, convnext_layout_key, remap_official_keys, zoo_cfg
from convforge.models._staged import Stage, StagedClassifier, drop_path_rates
from convforge.models.large_kernel import DepthwiseConv2d, LargeKernelDWConv2d
from convforge.models.reparam import assign_weight_bias, dilate_kernel, fuse_bn, pad_kernel_to

__all__ = ["UniRepLKNet"]

# (kernel size, dilation) of the parallel branches for each large kernel size, as in the paper's code.
DILATED_BRANCHES = {
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    7: ((5, 1), (3, 2), (3, 3)),
    5: ((3, 1), (3, 2)),
}


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2) on NHWC input: x * (1 + gamma * N(x)) + beta.
    Not timm's GlobalResponseNorm because the deployed block folds beta into the next linear layer
    and must then hold no beta at all."""

    def __init__(self, dim: int, use_bias: bool = True):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim)) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_norm = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        normalized = global_norm / (global_norm.mean(dim=-1, keepdim=True) + 1e-6)
        out = (self.gamma * normalized + 1) * x
        return out + self.beta if self.beta is not None else out


class DilatedBranch(nn.Module):
    """One parallel branch of the Dilated Reparam Block: a dilated small depthwise conv, then BN."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.conv = DepthwiseConv2d(channels, kernel_size, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DilatedReparamBlock(nn.Module):
    """A large depthwise kernel plus parallel dilated small kernels, each followed by BN; in eval
    mode exactly one large depthwise convolution after `reparameterize()`.

    The branches live in a ModuleList (`dilated_branches.I.conv`/`.bn`), so that TorchScript can
    iterate them; the official names (`dil_conv_k5_1`, `dil_bn_k5_1`, also used by convforge before)
    are renamed when a state dict is loaded."""

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"Dilated Reparam Block kernel size must be one of {sorted(DILATED_BRANCHES)}")
        self.kernel_size = kernel_size
        self.lk_origin = LargeKernelDWConv2d(channels, kernel_size, bias=deploy)
        self.origin_bn = None if deploy else nn.BatchNorm2d(channels)
        self.dilated_branches = nn.ModuleList(
            [] if deploy else [DilatedBranch(channels, k, r) for k, r in DILATED_BRANCHES[kernel_size]]
        )
        self.register_load_state_dict_pre_hook(_rename_official_branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.origin_bn is None:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for branch in self.dilated_branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.origin_bn is None:
            return
        weight, bias = fuse_bn(self.lk_origin.weight, self.lk_origin.bias, self.origin_bn)
        for branch in self.dilated_branches:
            branch_weight, branch_bias = fuse_bn(branch.conv.weight, None, branch.bn)
            weight = weight + pad_kernel_to(dilate_kernel(branch_weight, branch.dilation), self.kernel_size)
            bias = bias + branch_bias
        assign_weight_bias(self.lk_origin, weight, bias)
        self.dilated_branches = nn.ModuleList()
        self.origin_bn = None


def _rename_official_branches(block: DilatedReparamBlock, state_dict: dict, prefix: str, *args) -> None:
    rename_branch_keys(state_dict, prefix, block.kernel_size)


def rename_branch_keys(state_dict: dict, prefix: str, kernel_size: int) -> None:
    """`dil_conv_k{k}_{r}.*` / `dil_bn_k{k}_{r}.*` -> `dilated_branches.{i}.conv.*` / `.bn.*` under
    `prefix` (one Dilated Reparam Block of this kernel size), in place."""
    for index, (k, r) in enumerate(DILATED_BRANCHES[kernel_size]):
        for old, new in ((f"dil_conv_k{k}_{r}.", "conv."), (f"dil_bn_k{k}_{r}.", "bn.")):
            old_prefix, new_prefix = prefix + old, f"{prefix}dilated_branches.{index}.{new}"
            for key in [key for key in state_dict if key.startswith(old_prefix)]:
                state_dict[new_prefix + key[len(old_prefix) :]] = state_dict.pop(key)


class UniRepLKNetBlock(nn.Module):
    """Depthwise (dilated-reparam) conv -> BN -> SE -> Linear -> GELU -> GRN -> Linear -> BN -> layer scale,
    with a residual connection. `kernel_size=0` makes the token mixer an identity."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
        ffn_factor: int = 4,
    ):
        super().__init__()
        if kernel_size == 0:
            self.dwconv = nn.Identity()
        elif kernel_size >= 7:
            self.dwconv = DilatedReparamBlock(dim, kernel_size, deploy=deploy)
        elif kernel_size in (3, 5):
            self.dwconv = DepthwiseConv2d(dim, kernel_size, bias=deploy)
        else:
            raise ValueError(f"UniRepLKNet block kernel size must be 0, 3, 5 or >= 7, got {kernel_size}")
        self.norm = nn.Identity() if deploy or kernel_size == 0 else nn.BatchNorm2d(dim)
        self.se = SEModule(dim, rd_channels=dim // 4, act_layer=nn.ReLU)
        ffn_dim = int(ffn_factor * dim)
        self.pwconv1 = nn.Linear(dim, ffn_dim)
        self.act = nn.GELU()
        self.grn = GRN(ffn_dim, use_bias=not deploy)
        self.pwconv2 = nn.Linear(ffn_dim, dim, bias=deploy)
        self.pwconv2_bn = None if deploy else nn.BatchNorm2d(dim)
        use_scale = not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.norm(self.dwconv(x)))
        y = self.pwconv2(self.grn(self.act(self.pwconv1(y.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        if self.pwconv2_bn is not None:
            y = self.pwconv2_bn(y)
        if self.gamma is not None:
            y = self.gamma.view(1, -1, 1, 1) * y
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the branches and BNs into the depthwise conv, and GRN's beta, the second BN and the
        layer scale into the second linear layer. Exact in eval mode; a no-op the second time."""
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
        if isinstance(self.norm, nn.BatchNorm2d):
            conv = self.dwconv.lk_origin if isinstance(self.dwconv, DilatedReparamBlock) else self.dwconv
            assign_weight_bias(conv, *fuse_bn(conv.weight, conv.bias, self.norm))
            self.norm = nn.Identity()
        if self.pwconv2_bn is not None:
            linear = self.pwconv2
            linear_bias = linear.bias if linear.bias is not None else torch.zeros_like(self.pwconv2_bn.bias)
            if self.grn.beta is not None:  # GRN's additive beta passes through the linear layer
                linear_bias = linear_bias + linear.weight @ self.grn.beta.reshape(-1)
            weight, bias = fuse_bn(linear.weight, linear_bias, self.pwconv2_bn)
            scale = self.gamma if self.gamma is not None else torch.ones_like(bias)
            assign_weight_bias(linear, weight * scale.view(-1, 1), bias * scale)
            self.pwconv2_bn, self.gamma, self.grn.beta = None, None, None


class UniRepLKNet(StagedClassifier):
    """UniRepLKNet with the timm model interface. `kernel_sizes` gives each block's kernel (defaults
    per depth configuration as in the paper); `deploy=True` builds the re-parameterized form."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (3, 3, 27, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        kernel_sizes: tuple[tuple[int, ...], ...] | None = None,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        deploy: bool = False,
    ):
        super().__init__()
        depths = tuple(depths)
        kernel_sizes = kernel_sizes or DEFAULT_KERNEL_SIZES.get(depths)
        if kernel_sizes is None or [len(k) for k in kernel_sizes] != list(depths):
            raise ValueError(f"give kernel_sizes with one entry per block for depths {depths}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.deploy = deploy
        norm = partial(LayerNorm2d, eps=1e-6)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, kernel_size=3, stride=2, padding=1),
            norm(dims[0] // 2),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1),
            norm(dims[0]),
        )
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info, block_index = [], [], 0
        for i, depth in enumerate(depths):
            downsample = nn.Identity() if i == 0 else nn.Sequential(
                nn.Conv2d(dims[i - 1], dims[i], kernel_size=3, stride=2, padding=1), norm(dims[i]))  # fmt: skip
            blocks = [
                UniRepLKNetBlock(
                    dims[i], kernel_sizes[i][j], rates[block_index + j], layer_scale_init_value, deploy
                )
                for j in range(depth)
            ]
            stages.append(Stage(downsample, blocks))
            self.feature_info.append({"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"})
            block_index += depth
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm_pre = nn.Identity()
        self.head = NormMlpClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                          norm_layer=norm)  # fmt: skip
        self.init_weights(head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return self.parameters_named(".gamma", ".grn.gamma", ".grn.beta")


DEFAULT_KERNEL_SIZES = {
    (2, 2, 6, 2): ((3, 3), (13, 13), (13,) * 6, (13, 13)),
    (2, 2, 8, 2): ((3, 3), (13, 13), (13,) * 8, (13, 13)),
    (3, 3, 18, 3): ((3, 3, 3), (13, 13, 13), (13, 3) * 9, (13, 13, 13)),
    (3, 3, 27, 3): ((3, 3, 3), (13, 13, 13), (13, 3, 3) * 9, (13, 13, 13)),
}


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an official UniRepLKNet checkpoint (training or deployed form) to convforge's names; a
    convforge state dict passes through, its branches renamed if it predates `dilated_branches`."""
    state_dict = dict(remap_official_keys(state_dict, "downsample_layers.0.0.weight",
                                          lambda key: convnext_layout_key(key, _official_block_key)))  # fmt: skip
    for name, module in model.named_modules():
        if isinstance(module, DilatedReparamBlock):
            rename_branch_keys(state_dict, name + ".", module.kernel_size)
    return state_dict


def _official_block_key(rest: str) -> str:
    """The official block's Sequential wrappers and SE names, as timm's layers name them."""
    return (rest.replace("se.down.", "se.fc1.").replace("se.up.", "se.fc2.")
            .replace("pwconv1.1.", "pwconv1.").replace("act.1.", "grn.")
            .replace("pwconv2.0.", "pwconv2.").replace("pwconv2.2.", "pwconv2_bn."))  # fmt: skip


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """GRN's gamma and beta, shaped (1, 1, 1, C): channel dimension 3, for a pruning tool."""
    return [
        (parameter, 3)
        for module in model.modules()
        if isinstance(module, GRN)
        for parameter in (module.gamma, module.beta)
        if parameter is not None
    ]


def _create(variant: str, pretrained: bool = False, **kwargs) -> UniRepLKNet:
    return build_zoo_model(UniRepLKNet, variant, pretrained, checkpoint_filter_fn, (0, 1, 2, 3), **kwargs)


def _cfg(filename: str = "", **kwargs) -> dict:
    hub = {"hf_hub_id": "DingXiaoH/UniRepLKNet", "hf_hub_filename": filename} if filename else {}
    return zoo_cfg(paper_ids="arXiv:2311.15599", license="apache-2.0", origin_url="https://github.com/AILab-CVC/UniRepLKNet",
                   paper_name="UniRepLKNet: A Universal Perception Large-Kernel ConvNet for Audio, Video, Point Cloud, "
                   "Time-Series and Image Recognition", **hub, **kwargs)  # fmt: skip


_384 = {"input_size": (3, 384, 384), "pool_size": (12, 12), "crop_pct": 1.0}
default_cfgs = generate_default_cfgs({
    "unireplknet_a.in1k": _cfg("unireplknet_a_in1k_224_acc77.03.pth"),
    "unireplknet_f.in1k": _cfg("unireplknet_f_in1k_224_acc78.58.pth"),
    "unireplknet_p.in1k": _cfg("unireplknet_p_in1k_224_acc80.23.pth"),
    "unireplknet_n.in1k": _cfg("unireplknet_n_in1k_224_acc81.64.pth"),
    "unireplknet_t.in1k": _cfg("unireplknet_t_in1k_224_acc83.21.pth"),
    "unireplknet_s.in1k": _cfg("unireplknet_s_in1k_224_acc83.91.pth"),
    "unireplknet_s.in22k_ft_in1k_384": _cfg("unireplknet_s_in22k_to_in1k_384_acc86.44.pth", **_384),
    "unireplknet_s.in22k": _cfg("unireplknet_s_in22k_pretrain.pth", num_classes=21841),
    "unireplknet_b.in22k_ft_in1k_384": _cfg("unireplknet_b_in22k_to_in1k_384_acc87.40.pth", **_384),
    "unireplknet_b.in22k": _cfg("unireplknet_b_in22k_pretrain.pth", num_classes=21841),
    "unireplknet_l.in22k_ft_in1k_384": _cfg("unireplknet_l_in22k_to_in1k_384_acc87.88.pth", **_384),
    "unireplknet_l.in22k": _cfg("unireplknet_l_in22k_pretrain.pth", num_classes=21841),
    "unireplknet_xl.in22k_ft_in1k_384": _cfg("unireplknet_xl_in22k_to_in1k_384_acc87.96.pth", **_384),
    "unireplknet_xl.in22k": _cfg("unireplknet_xl_in22k_pretrain.pth", num_classes=21841),
    "unireplknet_tiny_test": _cfg(),
})  # fmt: skip


@register_model
def unireplknet_a(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (2, 2, 6, 2), "dims": (40, 80, 160, 320)}
    return _create("unireplknet_a", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_f(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (2, 2, 6, 2), "dims": (48, 96, 192, 384)}
    return _create("unireplknet_f", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_p(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (2, 2, 6, 2), "dims": (64, 128, 256, 512)}
    return _create("unireplknet_p", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_n(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (2, 2, 8, 2), "dims": (80, 160, 320, 640)}
    return _create("unireplknet_n", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_t(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (3, 3, 18, 3), "dims": (80, 160, 320, 640)}
    return _create("unireplknet_t", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_s(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768)}
    return _create("unireplknet_s", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_b(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024)}
    return _create("unireplknet_b", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_l(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (3, 3, 27, 3), "dims": (192, 384, 768, 1536)}
    return _create("unireplknet_l", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_xl(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    args = {"depths": (3, 3, 27, 3), "dims": (256, 512, 1024, 2048)}
    return _create("unireplknet_xl", pretrained, **dict(args, **kwargs))


@register_model
def unireplknet_tiny_test(pretrained: bool = False, **kwargs) -> UniRepLKNet:
    """About 14k parameters (10 classes) with every kind of block (kernel 3, 5, 13, identity), for tests."""
    args = {"depths": (1, 1, 2, 1), "dims": (4, 8, 12, 16), "kernel_sizes": ((3,), (13,), (5, 0), (7,))}
    return _create("unireplknet_tiny_test", pretrained, **dict(args, **kwargs))
