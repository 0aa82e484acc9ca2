"""`shapes`: the built-in procedural dataset, with a ground-truth object mask for every image.

Ten classes of filled shapes with random colour, size, position and rotation, drawn over varied
textured backgrounds (smooth noise, stripes, checkers, gradients) plus pixel noise. Nothing is
downloaded; image i of a split depends only on (seed, split, i), so any count gives the same first
images. The masks let explanations be scored against the truth (pointing game, energy inside the
object) and the textures let shape and texture cues be separated.

A linear classifier on raw pixels does badly here (position, rotation, colour and background all
vary) while a small CNN does well; tests/data/test_shapes.py states both numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = (
    "circle",
    "triangle",
    "square",
    "star",
    "cross",
    "ring",
    "crescent",
    "heart",
    "arrow",
    "semicircle",
)
TEXTURES = ("noise", "stripes", "checkers", "gradient")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
GENERATOR_VERSION = 2  # part of the cache key: bump when the drawing changes
BACKGROUND_CONTRAST = 45.0
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges


@dataclass(frozen=True)
class ShapesConfig:
    """Size of the images and of each split; `seed` makes a different but equally hard dataset."""

    size: int = 64
    train: int = 10_000
    val: int = 1_000
    test: int = 2_000
    seed: int = 0
    min_radius: float = 0.2  # radius of the shape's bounding circle, as a fraction of the image side
    max_radius: float = 0.4
    classes: int = len(SHAPE_CLASSES)  # the first N shapes of SHAPE_CLASSES (2 to 10): an easier task
    textured: int = 0  # 1: each class's shape is filled with its own texture (a second cue, for shape bias)

    @property
    def class_names(self) -> list[str]:
        return list(SHAPE_CLASSES[: self.classes])

    def split_sizes(self) -> dict[str, int]:
        return {
            name: n for name, n in (("train", self.train), ("val", self.val), ("test", self.test)) if n > 0
        }


CLASS_TEXTURES = (
    "horizontal stripes",
    "vertical stripes",
    "small checkers",
    "large checkers",
    "diagonal stripes",
    "anti-diagonal stripes",
    "dots",
    "speckle",
    "concentric rings",
    "waves",
)


def render_split(
    config: ShapesConfig, split: str, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [start, stop) of a split: (N, S, S, 3) uint8, labels (N,) int64, masks (N, S, S) uint8."""
    stop = config.split_sizes()[split] if stop is None else stop
    n, size = stop - start, config.size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for row, i in enumerate(range(start, stop)):
        rng = np.random.Generator(np.random.PCG64([config.seed, SPLIT_CODES[split], i]))
        label = i % config.classes  # balanced classes; the loader shuffles
        images[row], masks[row] = render_shape_image(SHAPE_CLASSES[label], rng, config)
        labels[row] = label
    return images, labels, masks


def render_shape_image(
    shape: str, rng: np.random.Generator, config: ShapesConfig, texture_of: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One image of `shape` on a random texture, and its object mask (1 inside the shape). With
    `config.textured` the shape is filled with the texture of class `texture_of` (default: its own)."""
    size = config.size
    radius = rng.uniform(config.min_radius, config.max_radius) * size
    center = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    alpha = _rasterize(shape, center, radius, angle, size)

    background_colors = _background_colors(rng)
    if config.textured:
        # Smooth backgrounds only, so that the one patterned region is the object's own texture.
        background = texture(("noise", "gradient")[rng.integers(2)], rng, size, background_colors)
        fill = texture_of if texture_of is not None else SHAPE_CLASSES.index(shape)
        foreground = class_texture(fill, rng, size, center, _texture_colors(rng, background_colors))
    else:
        background = texture(TEXTURES[rng.integers(len(TEXTURES))], rng, size, background_colors)
        foreground = np.broadcast_to(_contrasting_color(rng, background_colors), (size, size, 3))

    image = alpha[..., None] * foreground + (1.0 - alpha[..., None]) * background
    image += rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), (alpha >= 0.5).astype(np.uint8)


def texture(kind: str, rng: np.random.Generator, size: int, colors: np.ndarray) -> np.ndarray:
    """A (size, size, 3) float texture in [0, 255] mixing two colours with a random pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = rng.uniform(0, math.pi)
    along = xx * math.cos(theta) + yy * math.sin(theta)
    across = -xx * math.sin(theta) + yy * math.cos(theta)
    if kind == "stripes":
        period = rng.uniform(4, 14)
        mix = 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * along / period + rng.uniform(0, 2 * math.pi)))
    elif kind == "checkers":
        cell = rng.uniform(3, 10)
        mix = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float64)
    elif kind == "gradient":
        mix = (along - along.min()) / max(np.ptp(along), 1e-6)
    elif kind == "noise":
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
        mix = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)) / 255.0
    else:
        raise ValueError(f"unknown texture {kind!r}; choose from {TEXTURES}")
    return mix[..., None] * colors[0] + (1.0 - mix[..., None]) * colors[1]


def class_texture(
    index: int, rng: np.random.Generator, size: int, center: np.ndarray, colors: np.ndarray
) -> np.ndarray:
    """Texture `index` of CLASS_TEXTURES as a (size, size, 3) mix of two colours. Orientation and scale
    are fixed per texture (they are the cue); only the phase and the colours vary."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * math.pi)
    kind = CLASS_TEXTURES[index]
    if kind == "horizontal stripes":
        mix = np.sin(2 * math.pi * yy / 5 + phase) > 0
    elif kind == "vertical stripes":
        mix = np.sin(2 * math.pi * xx / 8 + phase) > 0
    elif kind in ("small checkers", "large checkers"):
        cell = 3 if kind == "small checkers" else 7
        shift = rng.integers(cell)
        mix = ((xx + shift) // cell + (yy + shift) // cell) % 2 == 0
    elif kind == "diagonal stripes":
        mix = np.sin(2 * math.pi * (xx + yy) / (6 * math.sqrt(2)) + phase) > 0
    elif kind == "anti-diagonal stripes":
        mix = np.sin(2 * math.pi * (xx - yy) / (6 * math.sqrt(2)) + phase) > 0
    elif kind == "dots":
        shift = rng.uniform(0, 6, size=2)
        mix = ((xx + shift[0]) % 6 - 3) ** 2 + ((yy + shift[1]) % 6 - 3) ** 2 < 2.2**2
    elif kind == "speckle":
        mix = rng.random((size, size)) < 0.5
    elif kind == "concentric rings":
        mix = np.sin(2 * math.pi * np.hypot(xx - center[0], yy - center[1]) / 5 + phase) > 0
    elif kind == "waves":
        mix = np.sin(2 * math.pi * (yy + 2.5 * np.sin(2 * math.pi * xx / 9)) / 7 + phase) > 0
    else:
        raise ValueError(f"unknown class texture {index}")
    mix = mix.astype(np.float64)[..., None]
    return mix * colors[0] + (1.0 - mix) * colors[1]


def _texture_colors(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Two colours for an object's texture: both stand out from the background and from each other."""
    first = _contrasting_color(rng, background)
    second = _contrasting_color(rng, np.vstack([background, first[None]]), min_distance=110.0)
    return np.stack([first, second])


def _background_colors(rng: np.random.Generator) -> np.ndarray:
    """Two colours for a texture: a random base and a variation of it, so textures are visible but
    the shape, drawn in a contrasting colour, stays the most salient thing in the image."""
    base = rng.uniform(0, 255, size=3)
    other = np.clip(base + rng.normal(0.0, BACKGROUND_CONTRAST, size=3), 0, 255)
    return np.stack([base, other])


def _contrasting_color(rng: np.random.Generator, avoid: np.ndarray, min_distance: float = 90.0) -> np.ndarray:
    """A colour at least `min_distance` (RGB Euclidean) from every colour in `avoid`, so the shape shows."""
    best, best_distance = None, -1.0
    for _ in range(64):
        candidate = rng.uniform(0, 255, size=3)
        distance = float(np.min(np.linalg.norm(avoid - candidate, axis=1)))
        if distance >= min_distance:
            return candidate
        if distance > best_distance:
            best, best_distance = candidate, distance
    return best


def _rasterize(shape: str, center: np.ndarray, radius: float, angle: float, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of `shape` placed at `center` with `radius` and rotation `angle`."""
    scale = _SUPERSAMPLE
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for polygon, fill in shape_polygons(shape):
        points = (polygon @ rotation.T * radius + center) * scale
        draw.polygon([tuple(p) for p in points], fill=fill)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def shape_polygons(shape: str) -> list[tuple[np.ndarray, int]]:
    """Polygons in unit coordinates (inside the unit circle), drawn in order with fill 255 or 0 (holes)."""
    if shape == "circle":
        return [(_regular(64), 255)]
    if shape == "triangle":
        return [(_regular(3, phase=math.pi / 2), 255)]
    if shape == "square":
        return [(_regular(4, phase=math.pi / 4), 255)]
    if shape == "star":
        outer, inner = _regular(5, 1.0, math.pi / 2), _regular(5, 0.42, math.pi / 2 + math.pi / 5)
        return [(np.stack([outer, inner], axis=1).reshape(-1, 2), 255)]
    if shape == "cross":
        a, b = 0.3, 0.95
        points = [
            (a, b),
            (a, a),
            (b, a),
            (b, -a),
            (a, -a),
            (a, -b),
            (-a, -b),
            (-a, -a),
            (-b, -a),
            (-b, a),
            (-a, a),
            (-a, b),
        ]
        return [(np.array(points), 255)]
    if shape == "ring":
        return [(_regular(64), 255), (_regular(64, 0.55), 0)]
    if shape == "crescent":
        bite = _regular(64, 0.85) + np.array([0.45, 0.0])
        return [(_regular(64), 255), (bite, 0)]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        points = np.stack([x, -y - 2.5], axis=1) / 17.0
        return [(points, 255)]
    if shape == "arrow":
        points = [
            (-0.95, 0.22),
            (0.2, 0.22),
            (0.2, 0.6),
            (0.95, 0.0),
            (0.2, -0.6),
            (0.2, -0.22),
            (-0.95, -0.22),
        ]
        return [(np.array(points), 255)]
    if shape == "semicircle":
        t = np.linspace(0, math.pi, 48)
        arc = np.stack([np.cos(t), np.sin(t) - 0.4], axis=1)
        return [(arc, 255)]
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPE_CLASSES}")
