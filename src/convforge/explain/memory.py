"""How many images (or masked copies of an image) fit in one forward pass."""

from __future__ import annotations

from pathlib import Path

import torch

from convforge.errors import ConfigError

_FALLBACK_BYTES = 4 * 1024**3


def available_memory(device: torch.device) -> int:
    """Free bytes on the device: CUDA's own count, else MemAvailable from /proc/meminfo."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _FALLBACK_BYTES


def memory_budget(device: torch.device, max_memory: int | None) -> int:
    """`max_memory` when given, else half of what is free now (the rest is the caller's)."""
    return int(max_memory) if max_memory is not None else available_memory(device) // 2


def chunk_size(per_item: int, budget: int, wanted: int, what: str) -> int:
    """Items per forward pass so that `per_item` bytes each stay inside `budget`; a single item that
    does not fit is an error that says how much it needs."""
    if per_item <= 0:
        return max(1, wanted)
    fits = budget // per_item
    if fits < 1:
        raise ConfigError(
            f"one {what} needs about {per_item / 2**20:.0f} MiB and the memory budget is "
            f"{budget / 2**20:.0f} MiB; free memory, raise max_memory, or use smaller images"
        )
    return int(max(1, min(wanted, fits)))
