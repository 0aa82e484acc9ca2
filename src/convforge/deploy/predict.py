"""Top-k predictions with class names for image files, decoded safely, a bad file never fatal."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from convforge.checkpoint import ModelSpec
from convforge.data.decode import DEFAULT_MAX_PIXELS, decode_image
from convforge.data.transforms import eval_transform
from convforge.device import autocast_context
from convforge.errors import ImageDecodeError


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None  # (class, probability), most likely first
    error: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["top"] = [{"class": name, "probability": p} for name, p in self.top] if self.top else None
        return data


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
