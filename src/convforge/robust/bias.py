"""Shape versus texture bias (Geirhos et al. 2019, "ImageNet-trained CNNs are biased towards texture;
increasing shape bias improves accuracy and robustness", arXiv:1811.12231) on the built-in shapes.

In `shapes:textured=1` every class has its own shape and its own texture (CLASS_TEXTURES), so both
cues predict the label. The cue-conflict set draws the shape of one class filled with the texture
of another. Shape bias is the fraction of decisions that follow the shape among the decisions that
follow either cue; decisions for a third class count for neither, and are reported too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from convforge.data.shapes import CLASS_TEXTURES, SHAPE_CLASSES, ShapesConfig, render_shape_image

CONFLICT_SPLIT_CODE = 7  # the image seeds of the conflict set differ from those of train/val/test


@dataclass(frozen=True)
class CueConflictSet:
    images: np.ndarray  # (N, S, S, 3) uint8
    shape_labels: np.ndarray  # (N,) the class whose shape is drawn
    texture_labels: np.ndarray  # (N,) the class whose texture fills it (never the same)
    masks: np.ndarray  # (N, S, S) uint8


def cue_conflict_set(config: ShapesConfig, count: int) -> CueConflictSet:
    """`count` cue-conflict images of `config`'s size and classes; every (shape, texture) pair of
    different classes appears equally often, and image i depends only on (config.seed, i)."""
    classes = config.classes
    textured = ShapesConfig(**{**asdict(config), "textured": 1})
    pairs = [(s, t) for s in range(classes) for t in range(classes) if s != t]
    images = np.empty((count, config.size, config.size, 3), dtype=np.uint8)
    masks = np.empty((count, config.size, config.size), dtype=np.uint8)
    shapes, textures = np.empty(count, np.int64), np.empty(count, np.int64)
    for i in range(count):
        shape, texture = pairs[i % len(pairs)]
        rng = np.random.Generator(np.random.PCG64([config.seed, CONFLICT_SPLIT_CODE, i]))
        images[i], masks[i] = render_shape_image(SHAPE_CLASSES[shape], rng, textured, texture_of=texture)
        shapes[i], textures[i] = shape, texture
    return CueConflictSet(images, shapes, textures, masks)


@dataclass
class ShapeBias:
    images: int
    shape_decisions: int
    texture_decisions: int
    other_decisions: int

    @property
    def shape_bias(self) -> float | None:
        cue = self.shape_decisions + self.texture_decisions
        return self.shape_decisions / cue if cue else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape_bias": self.shape_bias, "textures": list(CLASS_TEXTURES)}


def shape_bias(predictions: np.ndarray, shape_labels: np.ndarray, texture_labels: np.ndarray) -> ShapeBias:
    """Geirhos et al.'s shape bias from predicted classes on a cue-conflict set."""
    predictions = np.asarray(predictions)
    by_shape = predictions == shape_labels
    by_texture = predictions == texture_labels
    return ShapeBias(
        images=len(predictions),
        shape_decisions=int(by_shape.sum()),
        texture_decisions=int(by_texture.sum()),
        other_decisions=int((~by_shape & ~by_texture).sum()),
    )
