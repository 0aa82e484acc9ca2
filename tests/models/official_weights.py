"""Deterministic stand-in weights in an official checkpoint layout, and the reference outputs.

tests/models/official/<arch>.json holds, for a small configuration of an architecture: the key names
and shapes of the official implementation's state dict (training form, and deployed form where the
model re-parameterizes) and the logits the official code computed with these weights on `probe_input`.
Each file records the official repository and commit it was produced with;
tests/models/make_official_references.py regenerates (or checks) them from checkouts of those. The weights
are a formula of the key's position, not random numbers, so they are the same on every machine and library
version.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

OFFICIAL = Path(__file__).parent / "official"


def load_reference(arch: str) -> dict:
    return json.loads((OFFICIAL / f"{arch}.json").read_text())


def formula_state_dict(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Weights for every key: smooth, bounded values; BN running variances kept positive."""
    state = {}
    for index, key in enumerate(sorted(shapes)):
        shape = tuple(shapes[key])
        n = int(np.prod(shape)) if shape else 1
        wave = np.sin(0.7 * np.arange(n) + 1.3 * index)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.from_numpy((1.0 + 0.5 * wave).reshape(shape).astype(np.float32))
        else:
            state[key] = torch.from_numpy((0.3 * wave).reshape(shape).astype(np.float32))
    return state


def probe_input(shape: list[int]) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.sin(0.05 * np.arange(n)).reshape(shape).astype(np.float32))
