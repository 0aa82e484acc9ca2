"""What `convforge explain` explains: images from a dataset split (with labels and, for the built-in
shapes, ground-truth masks) or image files, as model input."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convforge.checkpoint import ModelSpec
from convforge.data.decode import decode_image, expand_image_paths
from convforge.data.sample import sample_split
from convforge.data.spec import absolute_spec
from convforge.data.transforms import eval_transform
from convforge.errors import DatasetError, ImageDecodeError


@dataclass
class ExplainInputs:
    """Model-input images with what is known about them (labels and masks only for datasets)."""

    images: torch.Tensor
    names: list[str]
    source: str
    split: str | None = None
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    skipped: int = 0


def dataset_inputs(
    spec_text: str, spec: ModelSpec, split: str | None, count: int, device: torch.device, strict: bool
) -> ExplainInputs:
    """`count` images spread evenly over a split, as model input, with labels and masks."""
    sample = sample_split(spec_text, spec.classes, spec.in_chans, split, count, strict)
    masks = sample.imageset.gather_masks(sample.positions)
    images = eval_transform(torch.from_numpy(sample.pixels).to(device), spec.preprocessing)
    return ExplainInputs(
        images=images,
        names=[f"{sample.imageset.name}-{int(p):05d}" for p in sample.positions],
        source=absolute_spec(spec_text),  # the report names the data wherever it is read from
        split=sample.imageset.name,
        labels=torch.from_numpy(sample.labels).to(device),
        masks=_masks_for(masks, images) if masks is not None else None,
        skipped=sample.skipped,
    )


def _masks_for(masks: np.ndarray, images: torch.Tensor) -> torch.Tensor | None:
    """Ground-truth masks, when they line up with the model input (no resize or crop in between)."""
    if masks.shape[1:] != images.shape[2:]:
        return None
    return torch.from_numpy(masks).to(images.device)


def file_inputs(paths: list[str], spec: ModelSpec, device: torch.device) -> tuple[ExplainInputs, list[str]]:
    """Image files (or folders of them); unreadable files are returned as messages, not fatal."""
    files = expand_image_paths(paths)
    mode = "RGB" if spec.in_chans == 3 else "L"
    images, names, problems = [], [], []
    for path in files:
        try:
            pixels = decode_image(path, mode=mode)
        except ImageDecodeError as exc:
            problems.append(f"{path}: {exc.reason}")
            continue
        images.append(eval_transform(torch.from_numpy(pixels).unsqueeze(0).to(device), spec.preprocessing))
        names.append(Path(path).stem)
    if not images:
        raise DatasetError(f"none of the {len(files)} image file(s) could be read: {'; '.join(problems[:3])}")
    return ExplainInputs(torch.cat(images), names, "files", skipped=len(problems)), problems
