"""Top-k predictions with class names for image files, decoded safely, a bad file never fatal."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from convforge.checkpoint import ModelSpec
from convforge.data.decode import DEFAULT_MAX_PIXELS, decode_image, is_image_file
from convforge.data.transforms import eval_transform
from convforge.errors import DatasetError, ImageDecodeError
from convforge.train.evaluate import autocast_context


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None  # (class, probability), most likely first
    error: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["top"] = [{"class": name, "probability": p} for name, p in self.top] if self.top else None
        return data


def expand_image_paths(items: list[str | os.PathLike]) -> list[str]:
    """Image files named directly or found (recursively, sorted) in named folders."""
    files = []
    for item in items:
        path = Path(item)
        if not path.exists():
            raise DatasetError(f"{path} does not exist")
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                raise DatasetError(f"folder {path} holds no image files")
            files.extend(found)
        else:
            files.append(str(path))
    return files


@torch.no_grad()
def predict_files(
    model: nn.Module,
    spec: ModelSpec,
    paths: list[str],
    *,
    top_k: int = 5,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Prediction]:
    """Predict every file in `paths`; files that cannot be decoded get an `error` instead of classes."""
    device = torch.device(device)
    model.eval()
    mode = "RGB" if spec.in_chans == 3 else "L"
    k = max(1, min(top_k, spec.num_classes))
    results: list[Prediction | None] = [None] * len(paths)
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        batch = torch.cat([x for _, x in pending])
        with autocast_context(device, amp_dtype):
            logits = model(batch)
        probabilities = logits.float().softmax(dim=1)
        values, indices = probabilities.topk(k, dim=1)
        for (index, _), row_values, row_indices in zip(
            pending, values.tolist(), indices.tolist(), strict=True
        ):
            top = [(spec.classes[c], round(p, 6)) for c, p in zip(row_indices, row_values, strict=True)]
            results[index] = Prediction(paths[index], top)
        pending.clear()

    for index, path in enumerate(paths):
        try:
            image = decode_image(path, mode=mode, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            results[index] = Prediction(path, None, exc.reason)
            continue
        tensor = torch.from_numpy(image).unsqueeze(0).to(device)
        pending.append((index, eval_transform(tensor, spec.preprocessing)))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results
