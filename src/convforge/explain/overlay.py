"""Heat maps over images, as uint8 arrays ready to save or to lay out in a grid."""

from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw

from convforge.data.transforms import Preprocessing
from convforge.files import atomic_write_bytes

OVERLAY_ALPHA = 0.45


def model_input_to_uint8(images: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """Undo the normalisation of model input: (B, C, H, W) float -> (B, H, W, 3) uint8 RGB."""
    mean = torch.tensor(preprocessing.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, device=images.device).view(1, -1, 1, 1)
    pixels = ((images.float() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return np.repeat(pixels, 3, axis=3) if pixels.shape[3] == 1 else pixels


def overlay(images: np.ndarray, maps: torch.Tensor | np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(B, H, W, 3) uint8 images with (B, H, W) maps in [0, 1] blended on top in the jet colours."""
    maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    heat = colormaps["jet"](np.clip(maps, 0, 1))[..., :3]
    blended = (1 - alpha) * images.astype(np.float32) / 255 + alpha * heat
    return (blended * 255).round().clip(0, 255).astype(np.uint8)


def captioned_png(image: np.ndarray, caption: str, path, min_side: int = 224) -> None:
    """Save one overlay, enlarged to at least `min_side` pixels, with a caption strip below it."""
    picture = Image.fromarray(image)
    scale = max(1, -(-min_side // min(picture.size)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.BILINEAR)
    lines = caption.split("\n")
    strip = 14 * len(lines) + 6
    canvas = Image.new("RGB", (picture.width, picture.height + strip), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, picture.height + 3 + 14 * i), line, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
