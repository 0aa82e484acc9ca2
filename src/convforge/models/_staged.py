"""The timm model interface for networks shaped stem -> stages -> norm_pre -> head.

UniRepLKNet, RepLKNet and HorNet share this shape (as timm's ConvNeXt does), so the interface is
written once here: forward_features / forward_head (pre_logits=), get_classifier / reset_classifier,
forward_intermediates and prune_intermediate_layers (which give `features_only=True` through timm's
builder), gradient checkpointing, and the parameter groups timm's optimizers use for layer decay.

A subclass sets `self.stem`, `self.stages` (an nn.Sequential of modules with `grad_checkpointing`),
`self.norm_pre`, `self.head` (a timm ClassifierHead or NormMlpClassifierHead), `self.num_features`,
`self.head_hidden_size`, `self.num_classes` and `self.feature_info`.
"""

import torch
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn


class StagedClassifier(nn.Module):
    grad_checkpointing = False

    def init_weights(self, head_init_scale: float = 1.0) -> None:
        """ConvNeXt's initialization: truncated normal (std 0.02) convs and linears, zero biases, and a
        scaled classifier."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if isinstance(self.head.fc, nn.Linear):
            self.head.fc.weight.data.mul_(head_init_scale)
            self.head.fc.bias.data.mul_(head_init_scale)

    def parameters_named(self, *suffixes: str) -> set[str]:
        """Full names of the parameters ending in any of `suffixes` (for `no_weight_decay`)."""
        return {name for name, _ in self.named_parameters() if name.endswith(suffixes)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return {
            "stem": r"^stem",
            "blocks": r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm_pre", (99999,)),
            ],
        }  # fmt: skip

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        return self.norm_pre(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (NCHW) as timm's `forward_intermediates`: the last n stages when `indices`
        is an int, all when None, the listed ones otherwise."""
        if output_fmt != "NCHW":
            raise ValueError("output_fmt must be 'NCHW'")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early and not torch.jit.is_scripting() else self.stages
        intermediates = []
        last = len(self.stages) - 1
        x = self.stem(x)
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take_indices:
                intermediates.append(self.norm_pre(x) if norm and index == last else x)
        if intermediates_only:
            return intermediates
        if index == last:
            x = self.norm_pre(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm_pre = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic depth growing linearly from 0 to `rate` over the blocks (plain Python, so that models
    can be built on the meta device)."""
    return [rate * i / (blocks - 1) if blocks > 1 else 0.0 for i in range(blocks)]


class Stage(nn.Module):
    """An optional downsampling layer followed by a sequence of blocks."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)
