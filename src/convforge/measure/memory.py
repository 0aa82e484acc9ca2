"""Peak activation memory of a forward pass: the most bytes that the tensors a model creates hold
at once (its parameters, buffers and the input excluded).

Why not the profiler: on the CPU `torch.profiler`'s memory events attribute allocations to ops and
frees to `[memory]` events inconsistently (their running sum goes negative on a resnet18) and it
logs GPU probing errors on machines without one. Instead a dispatch mode sees every tensor an ATen
op returns, counts each storage once while any tensor on it is alive (views share it; in-place ops
return it again) and releases it when the last one is freed, which is what the allocator sees. On a
GPU the allocator's own peak (`torch.cuda.max_memory_allocated`) is used.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _LiveBytes(TorchDispatchMode):
    def __init__(self, ignored: set[int]):
        super().__init__()
        self.ignored = ignored
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors alive on it]
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address == 0 or address in self.ignored:
            return
        entry = self.live.get(address)
        if entry is None:
            entry = self.live[address] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        entry = self.live.get(address)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[address]


def peak_activation_bytes(model: nn.Module, inputs: torch.Tensor) -> int:
    """Peak bytes held by the tensors that `model(inputs)` (under no_grad) creates."""
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)
        before = torch.cuda.memory_allocated(inputs.device)
        torch.cuda.reset_peak_memory_stats(inputs.device)
        with torch.no_grad():
            model(inputs)
        torch.cuda.synchronize(inputs.device)
        return int(torch.cuda.max_memory_allocated(inputs.device) - before)
    ignored = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), inputs)}
    with torch.no_grad(), _LiveBytes(ignored) as tracker:
        result = model(inputs)
        del result
    return tracker.peak
