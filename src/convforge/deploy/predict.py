"""Top-k predictions with class names for image files, decoded safely, a bad file never fatal."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from convforge.checkpoint import ModelSpec
from convforge.data.decode import DEFAULT_MAX_PIXELS, decode_image
from convforge.data.transforms import eval_transform
from convforge.device import autocast_context, precision_name
from convforge.errors import ImageDecodeError


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None  # (class, probability), most likely first
    error: str | None = None
    precision: str = "float32"  # what the forward ran in (device.resolve_inference_amp)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["top"] = [{"class": name, "probability": p} for name, p in self.top] if self.top else None
        return data


def image_tensor(
    source: str | os.PathLike | bytes, spec: ModelSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None
) -> torch.Tensor:
    """One image file (or its bytes) as the model's input: decoded safely (`ImageDecodeError` when it
    cannot be), resized and normalised by the run's own preprocessing; shape (1, C, H, W), float32.
    `convforge predict` and `convforge serve` both go through here, so they see the same pixels."""
    mode = "RGB" if spec.in_chans == 3 else "L"
    image = decode_image(source, mode=mode, max_pixels=max_pixels, name=name)
    return eval_transform(torch.from_numpy(image).unsqueeze(0), spec.preprocessing)


def top_classes(logits: torch.Tensor, classes: list[str], top_k: int) -> list[list[tuple[str, float]]]:
    """The `top_k` most likely classes of each row of logits, with softmax probabilities rounded to
    six decimals (k is clipped to the number of classes)."""
    k = max(1, min(top_k, len(classes)))
    values, indices = logits.float().softmax(dim=1).topk(k, dim=1)
    return [[(classes[c], round(p, 6)) for c, p in zip(row_indices, row_values, strict=True)]
            for row_values, row_indices in zip(values.tolist(), indices.tolist(), strict=True)]  # fmt: skip


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
    precision = getattr(model, "precision", None) or precision_name(amp_dtype)
    results: list[Prediction | None] = [None] * len(paths)
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if not pending:
            return
        batch = torch.cat([x for _, x in pending]).to(device)
        with autocast_context(device, amp_dtype):
            logits = model(batch)
        for (index, _), top in zip(pending, top_classes(logits, list(spec.classes), top_k), strict=True):
            results[index] = Prediction(paths[index], top, precision=precision)
        pending.clear()

    for index, path in enumerate(paths):
        try:
            pending.append((index, image_tensor(path, spec, max_pixels=max_pixels)))
        except ImageDecodeError as exc:
            results[index] = Prediction(path, None, exc.reason)
            continue
        if len(pending) >= batch_size:
            flush()
    flush()
    return results
