"""Tensor files: safetensors with a convforge header, verified on reading. Never pickle.

A file written here is self-verifying: its safetensors `__metadata__` carries a JSON description
(`convforge`), a SHA-256 over every tensor's name, dtype, shape and bytes (`sha256`: the weights'
digest, which model.json and exported files cite) and a SHA-256 over that digest and the description
(`description_sha256`, from format 2 on). Reading recomputes both, so a truncated file (safetensors
refuses it), a tampered one (digest mismatch) or an edited description (relabelled classes) is refused
with a clear error instead of producing a silently wrong model. Files of format 1 (no description
digest) still load.

`read_state_dict` is the other door: weights that someone else wrote (an official checkpoint, a
timm file), safetensors or a PyTorch file loaded with `weights_only=True`, so no code runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from convforge.errors import CheckpointError
from convforge.files import atomic_write_bytes

FORMAT = 2  # 2: the description is covered by description_sha256


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> str:
    """Atomically write tensors with JSON metadata and their digest; returns the digest."""
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share memory (tied weights, views).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    digest = tensors_digest(tensors)
    description = json.dumps(metadata, default=str)
    header = {"convforge": description, "sha256": digest, "format": str(FORMAT),
              "description_sha256": description_digest(digest, description)}  # fmt: skip
    atomic_write_bytes(path, save(tensors, metadata=header))
    return digest


def description_digest(weights_digest: str, description: str) -> str:
    """SHA-256 over the weights' digest and the description's JSON text: what `description_sha256` holds."""
    return hashlib.sha256(f"{weights_digest}\0{description}".encode()).hexdigest()


def checked_description(header: dict[str, str], path: Path) -> dict[str, Any]:
    """The description of a convforge header whose description digest holds (CheckpointError otherwise)."""
    if "sha256" not in header or "convforge" not in header:
        raise CheckpointError(f"{path} was not written by convforge (no digest in its header)")
    sealed = header.get("description_sha256")
    if sealed is None and header.get("format", "1") != "1":
        raise CheckpointError(f"{path} lacks the digest of its description; the header was edited")
    if sealed is not None and sealed != description_digest(header["sha256"], header["convforge"]):
        raise CheckpointError(f"{path}: its description (classes, preprocessing, model keywords) was edited after "
                              "the file was written; restore the file from the run it belongs to")  # fmt: skip
    try:
        return json.loads(header["convforge"])
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its description is not JSON ({exc})") from None


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Tensors, metadata and digest of a file written by `write_tensors`, verified."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    try:
        tensors = load(raw)
        header = safetensors_metadata(raw)
    except (SafetensorError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or damaged"
        ) from None
    description = checked_description(header, path)
    digest = tensors_digest(tensors)
    if digest != header["sha256"]:
        raise CheckpointError(
            f"{path} fails its integrity check (tensor digest {digest[:12]} != recorded {header['sha256'][:12]}): "
            "the file was modified or damaged after it was written"
        )
    return tensors, description, digest


def sealed_description(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """The checked description and the recorded weights digest of a convforge file, from its header alone
    (no tensor is read: the tensors' own digest is checked when they are loaded)."""
    path = Path(path)
    try:
        header = _header(path).get("__metadata__") or {}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    return checked_description(header, path), header.get("sha256", "")


def safetensors_metadata(raw: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors file from its first bytes (8-byte length, JSON header)."""
    if len(raw) < 8:
        raise ValueError("file too short for a safetensors header")
    size = int.from_bytes(raw[:8], "little")
    if size > len(raw) - 8:
        raise ValueError("safetensors header runs past the end of the file")
    return json.loads(raw[8 : 8 + size]).get("__metadata__", {}) or {}


def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor dtypes, shapes, offsets and `__metadata__`),
    read without loading any tensor."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("file too short for a safetensors header")
        raw = handle.read(int.from_bytes(prefix, "little"))
    if len(raw) < int.from_bytes(prefix, "little"):
        raise ValueError("safetensors header runs past the end of the file")
    return json.loads(raw)


def safetensors_description(path: str | os.PathLike) -> dict[str, Any] | None:
    """The convforge description in a safetensors header, read without loading any tensor (or None)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        return json.loads((_header(path).get("__metadata__") or {}).get("convforge", "null"))
    except (OSError, ValueError):
        return None


def stored_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Each tensor's shape in a safetensors file, from its header alone."""
    try:
        header = _header(Path(path))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    return {name: list(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a PyTorch file loaded with weights_only (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to parse means the same thing to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
