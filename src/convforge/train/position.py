"""Where training stands inside an epoch, so a checkpoint taken mid-epoch resumes bit for bit.

An epoch's batch order is a seeded permutation (data/loader.py), so the position in it is a step
count; everything else random in the epoch comes from three generators (the augmentation generator,
torch's global generator for dropout and drop-path, NumPy's global generator for timm's Mixup),
whose states are saved with the step, together with the epoch's running loss and accuracy sums.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


@dataclass
class EpochPosition:
    """Steps done in the current epoch, the epoch's running sums, and the generators' states."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    numpy_rng: dict[str, Any] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        """The JSON part (the tensor part is `rng_tensors`)."""
        return {
            "step": self.step,
            "epoch_sums": {"loss_sum": self.loss_sum, "correct": self.correct, "seen": self.seen},
            "numpy_rng": self.numpy_rng,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> EpochPosition | None:
        """The position a checkpoint was taken at, or None when it was taken at an epoch's end."""
        if not state.get("step"):
            return None
        sums = state["epoch_sums"]
        return cls(
            state["step"], sums["loss_sum"], sums["correct"], sums["seen"], tensors, state["numpy_rng"]
        )


def capture_rng(generator: torch.Generator, device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """The states of every generator an epoch draws from: tensors, and NumPy's as JSON."""
    tensors = {"augment": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return tensors, {
        "kind": kind,
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def restore_rng(position: EpochPosition, generator: torch.Generator, device: torch.device) -> None:
    tensors, numpy_state = position.rng_tensors, position.numpy_rng
    generator.set_state(tensors["augment"])
    torch.set_rng_state(tensors["torch"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (
            numpy_state["kind"],
            keys,
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )


class CheckpointClock:
    """Says when a time-based checkpoint is due: every `every_seconds` (None or 0: never)."""

    def __init__(self, every_seconds: float | None):
        self.every_seconds = every_seconds or None
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.every_seconds is not None and time.monotonic() - self.last >= self.every_seconds

    def reset(self) -> None:
        self.last = time.monotonic()


def parse_duration(text: str | float | None) -> float | None:
    """`10m`, `90s`, `1.5h` or a number of seconds; `0`/`off`/`none` turn it off (None)."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text) or None
    value = text.strip().lower()
    if value in ("", "0", "off", "none", "never"):
        return None
    unit = value[-1] if value[-1] in DURATION_UNITS else "s"
    number = value[:-1] if value[-1] in DURATION_UNITS else value
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise ValueError(
            f"not a duration: {text!r}; use a number of seconds or 30s, 10m, 1h, or off"
        ) from None
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {text!r}")
    return seconds or None
