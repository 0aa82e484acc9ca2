"""What one loaded PyTorch model costs at each batch size: parameters, MACs, peak activation memory,
latency and throughput, with the thread count it was measured at.

`measure_latency` is the oracle the pruning work calls after every step; `measure_model` adds the
counts and the memory for a whole table. Both time `model(x)` under no_grad (and autocast when a
dtype is given) on one input tensor made once per batch size.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from convforge.measure.counting import count_macs, count_params
from convforge.measure.latency import Latency, time_calls
from convforge.measure.memory import peak_activation_bytes


@dataclass
class ModelCost:
    params: int
    macs: int  # one image
    input_size: tuple[int, int, int]
    threads: int
    device: str
    dtype: str
    latency: list[Latency] = field(default_factory=list)
    peak_activation_bytes: dict[int, int] = field(default_factory=dict)  # batch -> bytes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency"] = [row.to_dict() for row in self.latency]
        return data


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run with `threads` intra-op threads (None: leave as is), restoring the previous count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batch: int,
    *,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    warmup: int = 3,
    iterations: int | None = None,
    budget_seconds: float = 2.0,
) -> Latency:
    """Latency of `model` (eval mode, on its own device) for one batch of zeros of `input_size`.
    `dtype` (torch.bfloat16, say) runs the forward under autocast."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = torch.zeros(batch, *input_size, device=device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def forward() -> Any:
        with torch.no_grad(), autocast:
            return model(inputs)

    with torch_threads(threads):
        return time_calls(forward, batch=batch, warmup=warmup, iterations=iterations,
                          budget_seconds=budget_seconds, device=device)  # fmt: skip


def footprint(model: nn.Module, input_size: tuple[int, int, int], batches: tuple[int, ...] | list[int]
              ) -> tuple[int, int, dict[int, int]]:  # fmt: skip
    """Parameters, MACs of one image, and peak activation bytes at each batch size (no timing)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    peaks = {batch: peak_activation_bytes(model, torch.zeros(batch, *input_size, device=device)) for batch in batches}
    return count_params(model), count_macs(model, input_size), peaks


def measure_model(
    model: nn.Module,
    input_size: tuple[int, int, int],
    batches: tuple[int, ...] = (1, 64),
    *,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    budget_seconds: float = 2.0,
) -> ModelCost:
    """Parameters, MACs, and for each batch size peak activation memory and latency."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch_threads(threads) as used:
        params, macs, peaks = footprint(model, input_size, batches)
        cost = ModelCost(params, macs, tuple(input_size), used, str(device),
                         str(dtype or torch.float32).replace("torch.", ""), peak_activation_bytes=peaks)  # fmt: skip
        for batch in batches:
            cost.latency.append(measure_latency(model, input_size, batch, dtype=dtype, budget_seconds=budget_seconds))
    return cost
