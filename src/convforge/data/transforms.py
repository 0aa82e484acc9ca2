"""Batched image transforms that run on the training device, on uint8 NHWC batches.

Why not torchvision/timm per-image transforms: those run in DataLoader workers on the CPU, one PIL
image at a time, and on a 2-core machine they compete with the model for the same cores. Here a
whole batch is cropped, flipped and normalised with a handful of tensor ops on the device the model
runs on: pad-and-random-crop and flip are one gather on uint8 (airbench-style translation),
random-resized-crop is one `torchvision.ops.roi_align` call (bilinear, with area sampling when it
shrinks). MixUp and CutMix are timm's `Mixup`, which already works on device batches.

Output: float32 NCHW in channels_last memory, normalised with the model's mean and std.
Randomness comes from an explicit `torch.Generator`, so an epoch's augmentation is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

CROP_MODES = ("pad", "rrc", "none")


@dataclass
class Preprocessing:
    """How raw images become model input; stored in model.json so a run folder is self-describing."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    channels: int = 3

    def __post_init__(self) -> None:
        """Checked as it is built, since it is read from files (model.json, ONNX metadata): ValueError
        naming the field, never a size or a statistic that fails later or divides by zero."""
        size = tuple(self.input_size)
        if len(size) != 2 or not all(isinstance(v, (int, float)) and float(v).is_integer() and 8 <= v <= 8192
                                     for v in size):  # fmt: skip
            raise ValueError(f"input_size must be [height, width] in pixels (8 to 8192), got {self.input_size!r}")
        self.input_size = tuple(int(v) for v in size)
        if not isinstance(self.channels, int) or not 1 <= self.channels <= 64:
            raise ValueError(f"channels must be a whole number from 1 to 64, got {self.channels!r}")
        self.mean, self.std = _fit_channels(self.mean, self.channels), _fit_channels(self.std, self.channels)
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"mean must be finite and std finite and positive, got {self.mean} and {self.std}")
        if not (isinstance(self.crop_pct, (int, float)) and 0 < self.crop_pct <= 2):  # timm has up to 1.15
            raise ValueError(f"crop_pct must be in (0, 2], got {self.crop_pct!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _fit_channels(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """ImageNet statistics are per RGB channel; a grayscale model uses their average."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or not len(values):
        raise ValueError(f"mean and std must be lists of numbers, got {values!r}")
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels


@dataclass
class AugmentConfig:
    """Training augmentation. `crop`: 'pad' (pad-and-random-crop, for small images), 'rrc'
    (random-resized-crop, for photos) or 'none'."""

    crop: str = "pad"
    pad: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")


def to_float_nchw(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (B, H, W, C) -> normalised float32 (B, C, H, W) in channels_last memory."""
    channels = images.shape[-1]
    scale = torch.tensor([1.0 / (255.0 * s) for s in preprocessing.std], device=images.device)
    shift = torch.tensor(
        [m / s for m, s in zip(preprocessing.mean, preprocessing.std, strict=True)], device=images.device
    )
    x = images.permute(0, 3, 1, 2).float()  # NCHW view of NHWC memory: already channels_last
    x = torch.addcmul(-shift.view(1, channels, 1, 1), x, scale.view(1, channels, 1, 1))
    return x.contiguous(memory_format=torch.channels_last)


def resize(x: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
    kwargs = {"align_corners": False, "antialias": True} if mode != "nearest" else {}
    return F.interpolate(x, size=size, mode=mode, **kwargs).contiguous(memory_format=torch.channels_last)


def eval_transform(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """timm's evaluation recipe on a batch: resize the shorter side to size / crop_pct, centre-crop."""
    x = to_float_nchw(images, preprocessing)
    out_h, out_w = preprocessing.input_size
    height, width = x.shape[-2:]
    if (height, width) == (out_h, out_w) and preprocessing.crop_pct >= 1.0:
        return x
    scale_size = math.floor(max(out_h, out_w) / preprocessing.crop_pct)
    factor = scale_size / min(height, width)
    resized = (max(out_h, round(height * factor)), max(out_w, round(width * factor)))
    x = resize(x, resized, preprocessing.interpolation)
    top, left = (resized[0] - out_h) // 2, (resized[1] - out_w) // 2
    return x[:, :, top : top + out_h, left : left + out_w].contiguous(memory_format=torch.channels_last)


PIXEL_SCALE = "uint8 pixels / 255, then (x - mean) / std per channel"


def resize_rule(preprocessing: Preprocessing) -> str:
    """`eval_transform`'s resize in words, for consumers without convforge (ONNX metadata, the server)."""
    out_h, out_w = preprocessing.input_size
    scale_size = math.floor(max(out_h, out_w) / preprocessing.crop_pct)
    return (f"{preprocessing.interpolation} resize of the shorter side to {scale_size} px, then a centre crop of "
            f"{out_h}x{out_w}" + (f" (an image of {out_h}x{out_w} is used as it is)" if preprocessing.crop_pct >= 1
                                  else ""))  # fmt: skip


def pixel_transform(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """`eval_transform` without the normalisation: model-sized float images in [0, 1], the space attacks
    and corruptions work in (the model's mean and std are applied after them)."""
    unit = replace(preprocessing, mean=(0.0,) * preprocessing.channels, std=(1.0,) * preprocessing.channels)
    return eval_transform(images, unit).clamp_(0, 1)


def normalize(pixels: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """[0, 1] pixels -> the model's input (the inverse of `unnormalize`)."""
    mean, std = _stats(preprocessing, pixels)
    return ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)


def unnormalize(inputs: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Model input -> [0, 1] pixels."""
    mean, std = _stats(preprocessing, inputs)
    return (inputs * std + mean).clamp_(0, 1)


def _stats(preprocessing: Preprocessing, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(preprocessing.mean, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing.std, device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
    return mean, std


class TrainAugment:
    """Random crop, flip, normalisation and optional MixUp/CutMix for one uint8 NHWC batch."""

    def __init__(
        self,
        config: AugmentConfig,
        preprocessing: Preprocessing,
        num_classes: int,
        label_smoothing: float = 0.0,
    ):
        self.config = config
        self.preprocessing = preprocessing
        self.mixup = None
        if config.mixup > 0 or config.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=config.mixup,
                cutmix_alpha=config.cutmix,
                prob=config.mix_prob,
                switch_prob=config.switch_prob,
                mode="batch",
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )

    @property
    def soft_targets(self) -> bool:
        return self.mixup is not None

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.preprocessing.input_size
        flips = torch.rand(len(images), generator=generator) < self.config.hflip
        if self.config.crop == "rrc":
            x = to_float_nchw(images, self.preprocessing)
            x = random_resized_crop(x, size, self.config.scale, self.config.ratio, flips, generator)
        else:
            pad = self.config.pad if self.config.crop == "pad" else 0
            x = to_float_nchw(translate_and_flip(images, pad, flips, generator), self.preprocessing)
            x = resize(x, size, self.preprocessing.interpolation)
        if self.mixup is not None:
            x, labels = self.mixup(x, labels)
        return x, labels


def translate_and_flip(
    images: torch.Tensor, pad: int, flips: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflection at the borders) and horizontal flips,
    as one row gather on the uint8 (B, H, W, C) batch; equivalent to reflect-pad then random crop."""
    batch, height, width, channels = images.shape
    device = images.device
    shifts = (
        torch.randint(-pad, pad + 1, (batch, 2), generator=generator) if pad > 0 else torch.zeros(batch, 2)
    )
    shifts = shifts.to(device=device, dtype=torch.long)
    rows = _reflect(torch.arange(height, device=device) + shifts[:, :1], height)
    cols = torch.arange(width, device=device).expand(batch, width)
    cols = torch.where(flips.to(device).view(-1, 1), width - 1 - cols, cols)
    cols = _reflect(cols + shifts[:, 1:], width)
    # index_select over pixels (each a C-byte row) is several times faster than 3-D advanced indexing.
    first_pixel = torch.arange(batch, device=device).view(-1, 1, 1) * (height * width)
    pixel_index = (first_pixel + rows[:, :, None] * width + cols[:, None, :]).reshape(-1)
    pixels = images.reshape(batch * height * width, channels).index_select(0, pixel_index)
    return pixels.view(batch, height, width, channels)


def _reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    index = index.abs()
    return torch.where(index > n - 1, 2 * (n - 1) - index, index).clamp_(0, n - 1)


def random_resized_crop(
    x: torch.Tensor,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flips: torch.Tensor,
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop parameters, sampled for the whole batch at once, then one
    `roi_align` call crops and resizes every image (sampling_ratio=0: area-averaged when shrinking)."""
    batch, _, height, width = x.shape
    area = height * width
    target_area = area * torch.empty(batch, attempts).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(batch, attempts).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator
    )
    aspect = torch.exp(log_ratio)
    crop_w = torch.sqrt(target_area * aspect).round()
    crop_h = torch.sqrt(target_area / aspect).round()
    valid = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((batch,), -1))
    fallback_w, fallback_h = _center_crop_fallback(height, width, ratio)
    pick = first.clamp(min=0).view(-1, 1)
    w = torch.where(first >= 0, crop_w.gather(1, pick).squeeze(1), torch.tensor(float(fallback_w)))
    h = torch.where(first >= 0, crop_h.gather(1, pick).squeeze(1), torch.tensor(float(fallback_h)))
    top = torch.floor(torch.rand(batch, generator=generator) * (height - h + 1))
    left = torch.floor(torch.rand(batch, generator=generator) * (width - w + 1))
    top = torch.where(first >= 0, top, ((height - h) / 2).floor())
    left = torch.where(first >= 0, left, ((width - w) / 2).floor())
    boxes = torch.stack([torch.arange(batch, dtype=torch.float32), left, top, left + w, top + h], dim=1)
    out = roi_align(
        x, boxes.to(x.device, x.dtype), output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True
    )
    out = torch.where(flips.to(x.device).view(-1, 1, 1, 1), out.flip(-1), out)
    return out.contiguous(memory_format=torch.channels_last)


def _center_crop_fallback(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    in_ratio = width / height
    if in_ratio < min(ratio):
        return width, round(width / min(ratio))
    if in_ratio > max(ratio):
        return round(height * max(ratio)), height
    return width, height
