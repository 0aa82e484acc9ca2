"""SynFlow saliency (Tanaka et al., NeurIPS 2020, "Pruning neural networks without any data by
iteratively conserving synaptic flow"; official code: github.com/ganguli-lab/Synaptic-Flow), the
data-free score PreCropping reads its layer-wise widths from (compress/precrop.py).

Each parameter's score is |theta * dR/dtheta| where R is the sum of the outputs of the network with
every parameter and buffer replaced by its absolute value, fed an all-ones input, in eval mode and in
float64 (the products of many layers overflow float32), as the official code computes it. Torch-Pruning
then sums the scores over each channel group exactly as it sums weight magnitudes (the scores stand in
for the weights while it does), the sums are ranked across layers, and the scores are computed afresh
on the narrowed model before every step: SynFlow's iterative schedule, which keeps it from emptying a
layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def synflow_scores(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """{parameter name: SynFlow score of each of its elements} for `model` at `input_size`."""
    linear = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for tensor in linear.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    linear.zero_grad(set_to_none=True)
    with torch.enable_grad():
        linear(torch.ones(1, *input_size, dtype=torch.float64)).sum().backward()
    return {
        name: (param.grad * param).abs().detach().float() if param.grad is not None else torch.zeros_like(param).float()
        for name, param in linear.named_parameters()
    }


def synflow_importance(model: nn.Module, input_size: tuple[int, int, int]):
    """A Torch-Pruning importance over SynFlow scores; `refresh()` recomputes them on the current model."""
    import torch_pruning as tp

    class SynFlowImportance(tp.importance.GroupMagnitudeImportance):
        def __init__(self):
            super().__init__(p=1, group_reduction="mean", normalizer=None)
            self.scores: dict[str, torch.Tensor] = {}

        def refresh(self) -> None:
            self.scores = synflow_scores(model, input_size)

        @torch.no_grad()
        def __call__(self, group):
            params = dict(model.named_parameters())
            weights = {name: params[name].data for name in self.scores}
            try:
                for name, score in self.scores.items():
                    params[name].data = score.to(weights[name].device)
                return super().__call__(group)
            finally:
                for name, data in weights.items():
                    params[name].data = data

    return SynFlowImportance()
