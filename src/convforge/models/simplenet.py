"""SimpleNet (SimpleNetV1)

Paper: `Lets keep it simple, Using simple architectures to outperform deeper and more complex
architectures` - Hasanpour, Rouhani, Fayyaz, Sabokrou (2016)
    - https://arxiv.org/abs/1608.06037
Official code and weights (MIT): https://github.com/Coderx7/SimpleNet_Pytorch

A plain stack of 3x3 (and two 1x1) convolutions with batch norm and ReLU, max pooling between groups,
and global max pooling before one linear classifier: no branches, no residuals. The CIFAR networks
(13 layers; 5.5M, 460k and 310k parameters) keep the input resolution until the pools; the ImageNet
networks add strided convolutions at the start (stride "mode" 1-4: the higher, the later the first
downsampling, the more accurate and the slower).

The layer layout (and so every state-dict key, `features.N`/`classifier`) follows the official code,
so its checkpoints load unchanged; `checkpoint_filter_fn` only unwraps the CIFAR training checkpoints.
"""

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from convforge.models._build import build_zoo_model, unwrap_checkpoint, zoo_cfg

__all__ = ["SimpleNet"]

# "p": a 2x2 max pool; otherwise (channels, dropout rate or None for no dropout layer[, kernel size, default 3])
_POOL = "p"
LAYOUTS: dict[str, list[tuple]] = {
    "cifar_310k": [(64, 0.0), (32, 0.0), (32, 0.0), (32, None), "p", (32, 0.0), (32, 0.0), (64, None), "p",
                   (64, 0.0), (64, None), "p", (128, 0.0), (256, 0.0, 1), (64, None, 1), "p", (64, None)],
    "cifar_460k": [(32, 0.0), (32, 0.0), (32, 0.0), (64, None), "p", (64, 0.0), (64, 0.0), (64, None), "p",
                   (64, 0.0), (64, None), "p", (96, 0.0), (96, 0.0, 1), (96, None, 1), "p", (100, None)],
    "cifar_5m": [(64, 0.0), (128, 0.0), (128, 0.0), (128, None), "p", (128, 0.0), (128, 0.0), (256, None), "p",
                 (256, 0.0), (256, None), "p", (512, 0.0), (2048, 0.0, 1), (256, None, 1), "p", (256, None)],
    # the early PyTorch CIFAR model with one more pool, which the CIFAR checkpoints in the repository need
    "cifar_5m_extra_pool": [(64, 0.0), (128, 0.0), (128, 0.0), (128, None), "p", (128, 0.0), (128, 0.0),
                            (256, None), "p", (256, 0.0), (256, None), "p", (512, 0.0), "p", (2048, 0.0, 1),
                            (256, None, 1), "p", (256, None)],
    "imagenet_5m": [(64, 0.0), (128, 0.0), (128, 0.0), (128, 0.0), (128, 0.0), (128, 0.0), "p", (256, 0.0),
                    (256, 0.0), (256, 0.0), (512, 0.0), "p", (2048, 0.0, 1), (256, 0.0, 1), (256, 0.0)],
    "imagenet_9m": [(128, 0.0), (192, 0.0), (192, 0.0), (192, 0.0), (192, 0.0), (192, 0.0), "p", (320, 0.0),
                    (320, 0.0), (320, 0.0), (640, 0.0), "p", (2560, 0.0, 1), (320, 0.0, 1), (320, 0.0)],
}  # fmt: skip
# stride "mode": layer index -> stride, for the ImageNet networks (mode 0: no early strides)
STRIDE_MODES = {
    0: {},
    1: {0: 2, 1: 2, 2: 2},
    2: {0: 2, 1: 2, 2: 1, 3: 2},
    3: {0: 2, 1: 2, 2: 1, 3: 1, 4: 2},
    4: {0: 2, 1: 1, 2: 2, 3: 1, 4: 2, 5: 1},
}


class SimpleNet(nn.Module):
    """SimpleNet with the timm model interface. `layout` names a network of LAYOUTS, `scale` widens
    or narrows every layer, `mode` sets the early strides, `drop_rates` overrides the dropout rate of
    the layer with that index (pools count), index 15 meaning the dropout after global pooling."""

    def __init__(
        self,
        layout: str = "imagenet_5m",
        num_classes: int = 1000,
        in_chans: int = 3,
        scale: float = 1.0,
        mode: int = 2,
        drop_rates: dict[int, float] | None = None,
        global_pool: str = "max",
    ):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}")
        self.num_classes = num_classes
        self.global_pool = _check_pool(global_pool)
        drop_rates = {int(k): float(v) for k, v in (drop_rates or {}).items()}
        self.last_dropout = drop_rates.get(15, 0.0)
        strides = STRIDE_MODES[mode]
        layers: list[nn.Module] = []
        self.feature_info = []
        channels, reduction = in_chans, 1
        for index, spec in enumerate(LAYOUTS[layout]):
            stride = strides.get(index, 2 if spec == _POOL else 1)
            rate = drop_rates.get(index)
            if spec == _POOL:
                self.feature_info.append({"num_chs": channels, "reduction": reduction,
                                          "module": f"features.{len(layers) - 1}"})  # fmt: skip
                layers += [nn.MaxPool2d(kernel_size=2, stride=stride), nn.Dropout2d(p=rate if rate is not None else 0.0,
                                                                                  inplace=True)]  # fmt: skip
            else:
                width, default_rate, kernel = (*spec, 3)[:3]
                rate = default_rate if rate is None else rate
                filters = round(width * scale)
                layers += [nn.Conv2d(channels, filters, kernel, stride=stride, padding=kernel // 2),
                           nn.BatchNorm2d(filters, eps=1e-05, momentum=0.05), nn.ReLU(inplace=True)]  # fmt: skip
                if rate is not None:
                    layers.append(nn.Dropout2d(p=float(rate)))
                channels = filters
            reduction *= stride
        self.feature_info.append(
            {"num_chs": channels, "reduction": reduction, "module": f"features.{len(layers) - 1}"}
        )
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = channels
        self.classifier = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain("relu"))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^features\.0", "blocks": r"^features\.(\d+)"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise ValueError("SimpleNet does not support gradient checkpointing")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature maps just before each pool and at the end (timm's `forward_intermediates`)."""
        if output_fmt != "NCHW":
            raise ValueError("output_fmt must be 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        taps = {int(info["module"].split(".")[1]): i for i, info in enumerate(self.feature_info)}
        last_layer = (
            max(layer for layer, i in taps.items() if i == max_index)
            if stop_early
            else len(self.features) - 1
        )
        intermediates = []
        for layer, module in enumerate(self.features):
            x = module(x)
            if taps.get(layer) in take_indices:
                intermediates.append(x)
            if layer == last_layer:
                break
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, drop out, classify. With `global_pool=''` (timm's "no pooling") the map stays NCHW:
        returned as it is without a classifier, else classified at every position."""
        if self.global_pool == "max":
            x = F.adaptive_max_pool2d(x, 1)
        elif self.global_pool == "avg":
            x = F.adaptive_avg_pool2d(x, 1)
        x = F.dropout2d(x, self.last_dropout, training=self.training)
        if self.global_pool == "":
            if pre_logits or self.num_classes == 0:  # no classifier (an Identity)
                return x
            return self.classifier(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x.flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _check_pool(global_pool: str) -> str:
    if global_pool not in ("max", "avg", ""):
        raise ValueError(f"global_pool must be 'max', 'avg' or '' (no pooling), got {global_pool!r}")
    return global_pool


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Unwrap the CIFAR training checkpoints (`state_dict`, DataParallel's `module.`)."""
    return unwrap_checkpoint(state_dict)


def _create(variant: str, pretrained: bool = False, **kwargs) -> SimpleNet:
    features = LAYOUTS[kwargs.get("layout", "imagenet_5m")].count(_POOL) + 1  # before each pool, and the end
    return build_zoo_model(
        SimpleNet, variant, pretrained, checkpoint_filter_fn, tuple(range(features)), **kwargs
    )


def _cfg(url: str = "", **kwargs) -> dict:
    return zoo_cfg(paper_ids="arXiv:1608.06037", license="mit", origin_url="https://github.com/Coderx7/SimpleNet_Pytorch",
                   paper_name="Lets keep it simple, Using simple architectures to outperform deeper and more complex "
                   "architectures", first_conv="features.0", classifier="classifier", url=url,
                   **{"pool_size": (7, 7), **kwargs})  # fmt: skip


_RELEASES = "https://github.com/Coderx7/SimpleNet_Pytorch/releases/download/v1.0.0/"
_SNAPSHOTS = "https://github.com/Coderx7/SimpleNet_Pytorch/raw/master/cifar/snapshots/simplenetv1/"
# pool_size: forward_features' map at input_size (7x7 at 224 for ImageNet, 2x2 at 32 for CIFAR; the
# extra-pool CIFAR layout pools once more, to 1x1)
_CIFAR = {"input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear", "pool_size": (2, 2)}
_CIFAR10 = dict(_CIFAR, num_classes=10, mean=(0.4914, 0.4824, 0.4467), std=(0.2471, 0.2435, 0.2616))
_CIFAR100 = dict(_CIFAR, num_classes=100, mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))
default_cfgs = generate_default_cfgs({
    "simplenetv1_5m_m1.in1k": _cfg(_RELEASES + "simplenetv1_5m_m1-36c4ca4d.pth"),
    "simplenetv1_5m_m2.in1k": _cfg(_RELEASES + "simplenetv1_5m_m2-9bd6bb36.pth"),
    "simplenetv1_9m_m1.in1k": _cfg(_RELEASES + "simplenetv1_9m_m1-524f9972.pth"),
    "simplenetv1_9m_m2.in1k": _cfg(_RELEASES + "simplenetv1_9m_m2-59e8733b.pth"),
    "simplenetv1_small_m1_05.in1k": _cfg(_RELEASES + "simplenetv1_small_m1_05-be804903.pth"),
    "simplenetv1_small_m2_05.in1k": _cfg(_RELEASES + "simplenetv1_small_m2_05-ca4b3e2b.pth"),
    "simplenetv1_small_m1_075.in1k": _cfg(_RELEASES + "simplenetv1_small_m1_075-098acbff.pth"),
    "simplenetv1_small_m2_075.in1k": _cfg(_RELEASES + "simplenetv1_small_m2_075-609ff4da.pth"),
    "simplenet_cifar_5m": _cfg(**_CIFAR10),
    "simplenet_cifar_5m_extra_pool.cifar10": _cfg(
        _SNAPSHOTS + "CIFAR10/95.51/best_chkpt_simplenet_cifar10_2018-12-25_00-34-57.pth.tar",
        **dict(_CIFAR10, pool_size=(1, 1))),
    "simplenet_cifar_5m_extra_pool.cifar100": _cfg(
        _SNAPSHOTS + "CIFAR100/78.37/best_chkpt_simplenet_cifar100_2018-12-25_06-02-38.pth.tar",
        **dict(_CIFAR100, pool_size=(1, 1))),
    "simplenet_cifar_460k": _cfg(**_CIFAR10),
    "simplenet_cifar_310k": _cfg(**_CIFAR10),
    "simplenet_tiny_test": _cfg(**_CIFAR10),
})  # fmt: skip


@register_model
def simplenet_cifar_5m(pretrained: bool = False, **kwargs) -> SimpleNet:
    """The 13-layer CIFAR network of the paper (5.5M parameters)."""
    return _create("simplenet_cifar_5m", pretrained, **dict({"layout": "cifar_5m", "mode": 0}, **kwargs))


@register_model
def simplenet_cifar_5m_extra_pool(pretrained: bool = False, **kwargs) -> SimpleNet:
    args = {"layout": "cifar_5m_extra_pool", "mode": 0}
    return _create("simplenet_cifar_5m_extra_pool", pretrained, **dict(args, **kwargs))


@register_model
def simplenet_cifar_460k(pretrained: bool = False, **kwargs) -> SimpleNet:
    return _create("simplenet_cifar_460k", pretrained, **dict({"layout": "cifar_460k", "mode": 0}, **kwargs))


@register_model
def simplenet_cifar_310k(pretrained: bool = False, **kwargs) -> SimpleNet:
    return _create("simplenet_cifar_310k", pretrained, **dict({"layout": "cifar_310k", "mode": 0}, **kwargs))


@register_model
def simplenetv1_5m_m1(pretrained: bool = False, **kwargs) -> SimpleNet:
    return _create("simplenetv1_5m_m1", pretrained, **dict({"layout": "imagenet_5m", "mode": 1}, **kwargs))


@register_model
def simplenetv1_5m_m2(pretrained: bool = False, **kwargs) -> SimpleNet:
    return _create("simplenetv1_5m_m2", pretrained, **dict({"layout": "imagenet_5m", "mode": 2}, **kwargs))


@register_model
def simplenetv1_9m_m1(pretrained: bool = False, **kwargs) -> SimpleNet:
    return _create("simplenetv1_9m_m1", pretrained, **dict({"layout": "imagenet_9m", "mode": 1}, **kwargs))


@register_model
def simplenetv1_9m_m2(pretrained: bool = False, **kwargs) -> SimpleNet:
    return _create("simplenetv1_9m_m2", pretrained, **dict({"layout": "imagenet_9m", "mode": 2}, **kwargs))


@register_model
def simplenetv1_small_m1_05(pretrained: bool = False, **kwargs) -> SimpleNet:
    args = {"layout": "imagenet_5m", "mode": 1, "scale": 0.5}
    return _create("simplenetv1_small_m1_05", pretrained, **dict(args, **kwargs))


@register_model
def simplenetv1_small_m2_05(pretrained: bool = False, **kwargs) -> SimpleNet:
    args = {"layout": "imagenet_5m", "mode": 2, "scale": 0.5}
    return _create("simplenetv1_small_m2_05", pretrained, **dict(args, **kwargs))


@register_model
def simplenetv1_small_m1_075(pretrained: bool = False, **kwargs) -> SimpleNet:
    args = {"layout": "imagenet_5m", "mode": 1, "scale": 0.75}
    return _create("simplenetv1_small_m1_075", pretrained, **dict(args, **kwargs))


@register_model
def simplenetv1_small_m2_075(pretrained: bool = False, **kwargs) -> SimpleNet:
    args = {"layout": "imagenet_5m", "mode": 2, "scale": 0.75}
    return _create("simplenetv1_small_m2_075", pretrained, **dict(args, **kwargs))


@register_model
def simplenet_tiny_test(pretrained: bool = False, **kwargs) -> SimpleNet:
    """The 13-layer CIFAR layout at 1/16 width (about 20k parameters), for tests."""
    args = {"layout": "cifar_5m", "mode": 0, "scale": 1 / 16}
    return _create("simplenet_tiny_test", pretrained, **dict(args, **kwargs))
