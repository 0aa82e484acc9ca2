"""Counting a model's size and arithmetic without timing anything.

Multiply-accumulates come from `torch.utils.flop_counter.FlopCounterMode` (PyTorch's own counter,
which sees every aten call, including the zoo's custom layers), halved: it counts a
multiply-accumulate as two FLOPs, the papers and timm's tables count MACs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Parameters (tied ones once, as `model.parameters()` yields them)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on a batch of one (FLOPs / 2 for conv and matmul).

    Runs in eval mode under no_grad and restores the training mode; a model on the meta device is
    counted without allocating memory or doing arithmetic."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
