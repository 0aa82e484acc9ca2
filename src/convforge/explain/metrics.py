"""How good an explanation is: faithfulness, localisation, sanity and drift, all batched in torch.

- `deletion_insertion`: the RISE protocol (Petsiuk et al. 2018). Pixels are removed (deletion) or
  revealed (insertion) in the order of the map, most salient first, and the target probability is
  read after each step; the area under that curve is the score (deletion: lower is better,
  insertion: higher). The replaced pixels come from a baseline: `zeros` (zero model input, i.e.
  the dataset mean colour after normalisation, RISE's deletion substrate), `blur` (a Gaussian blur
  of the image, kernel 11 and sigma 5 as RISE's insertion substrate) or `mean` (the image's mean
  colour). Every step of every image is one row of a few large batched forward passes.
- `pointing_game` and `energy_inside`: does the map's maximum fall on the object (Zhang et al.
  2016, with an optional tolerance in pixels), and what share of the map's mass lies on it (the
  energy-based pointing game of Score-CAM), against ground-truth masks.
- `randomization_check`: the model-parameter randomisation test of Adebayo et al. 2018. Every weight
  tensor is redrawn from a normal distribution with its own mean and standard deviation (the
  learned structure goes, the scale stays so activations remain finite), and the Spearman rank
  correlation between the maps before and after is measured. A method whose maps stay similar
  explains the input more than the model, and is flagged.
- `explanation_drift`: how much a derived model (pruned, quantized, distilled) changed what it
  looks at: the mean rank correlation of the two models' maps for the same images and classes, and
  the change in pointing-game accuracy.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from convforge.errors import ConfigError, did_you_mean
from convforge.explain.cam import Explainer, Targets, model_prepared, resolve_targets
from convforge.explain.memory import chunk_size, memory_budget

BASELINES = ("zeros", "blur", "mean")


class _Result:
    def to_dict(self) -> dict:
        return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in asdict(self).items()}


# ------------------------------------------------------------------ deletion and insertion
@dataclass
class DeletionInsertion(_Result):
    deletion_auc: float  # mean over images; lower is better
    insertion_auc: float  # mean over images; higher is better
    deletion_per_image: torch.Tensor
    insertion_per_image: torch.Tensor
    deletion_curve: torch.Tensor  # (steps + 1,) mean probability after each step
    insertion_curve: torch.Tensor
    steps: int
    deletion_baseline: str
    insertion_baseline: str


def baseline_images(images: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    if kind == "blur":
        return gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    raise ConfigError(
        f"unknown baseline {kind!r}; use one of {', '.join(BASELINES)}.{did_you_mean(kind, BASELINES)}"
    )


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Trapezoidal area under curves sampled at equal steps over [0, 1] (last dimension)."""
    steps = curve.shape[-1] - 1
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / steps


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    insertion: bool,
    baseline: str,
    steps: int,
    max_memory: int | None = None,
) -> torch.Tensor:
    """(B, steps + 1) target probabilities as the most salient pixels are deleted (or inserted)."""
    batch, _, height, width = images.shape
    pixels = height * width
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(pixels, device=order.device).expand(batch, -1)
    )
    rank = rank.view(batch, 1, height, width)
    substrate = baseline_images(images, baseline)
    counts = torch.tensor([round(k * pixels / steps) for k in range(steps + 1)], device=images.device)
    budget = memory_budget(images.device, max_memory)
    per_row = images[0].numel() * images.element_size() * 8
    rows_per_pass = chunk_size(per_row, budget, 512, "perturbed image")
    # one row per (image, step); built and evaluated a chunk at a time
    image_index = torch.arange(batch, device=images.device).repeat_interleave(steps + 1)
    step_index = torch.arange(steps + 1, device=images.device).repeat(batch)
    probabilities = torch.empty(batch * (steps + 1), device=images.device)
    for start in range(0, len(image_index), rows_per_pass):
        rows, step_rows = (
            image_index[start : start + rows_per_pass],
            step_index[start : start + rows_per_pass],
        )
        changed = rank[rows] < counts[step_rows].view(-1, 1, 1, 1)
        if insertion:
            x = torch.where(changed, images[rows], substrate[rows])
        else:
            x = torch.where(changed, substrate[rows], images[rows])
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        probabilities[start : start + len(rows)] = (
            logits.softmax(1).gather(1, targets[rows].unsqueeze(1)).squeeze(1)
        )
    return probabilities.view(batch, steps + 1)


def deletion_insertion(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: Targets = None,
    *,
    steps: int = 32,
    deletion_baseline: str = "zeros",
    insertion_baseline: str = "blur",
    max_memory: int | None = None,
) -> DeletionInsertion:
    """Deletion and insertion AUC of `maps` (B, H, W) for `images` (the model's input); the targets
    default to the model's predictions, the classes the maps usually explain."""
    if maps.shape != (images.shape[0], *images.shape[2:]):
        raise ConfigError(
            f"maps of shape {tuple(maps.shape)} do not match images of shape {tuple(images.shape)}"
        )
    if steps < 1:
        raise ConfigError("steps must be at least 1")
    with model_prepared(model), torch.no_grad():
        chosen = resolve_targets(targets, model(images).float())
        curves = {
            insertion: perturbation_curves(
                model,
                images,
                maps,
                chosen,
                insertion=insertion,
                baseline=insertion_baseline if insertion else deletion_baseline,
                steps=steps,
                max_memory=max_memory,
            )
            for insertion in (False, True)
        }
    deletion, insertion = auc(curves[False]), auc(curves[True])
    return DeletionInsertion(
        deletion_auc=float(deletion.mean()),
        insertion_auc=float(insertion.mean()),
        deletion_per_image=deletion.cpu(),
        insertion_per_image=insertion.cpu(),
        deletion_curve=curves[False].mean(0).cpu(),
        insertion_curve=curves[True].mean(0).cpu(),
        steps=steps,
        deletion_baseline=deletion_baseline,
        insertion_baseline=insertion_baseline,
    )


# ----------------------------------------------------------------------------- localisation
def _check_masks(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    masks = torch.as_tensor(masks, device=maps.device)
    if masks.shape != maps.shape:
        raise ConfigError(
            f"masks of shape {tuple(masks.shape)} do not match maps of shape {tuple(maps.shape)}"
        )
    return masks > 0


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """(B,) float in [0, 1]: whether the map's maximum lies on the mask (or within `tolerance` pixels).

    A map upsampled from a coarse layer (2x2, 3x3) has a plateau of hundreds of pixels tied for the
    maximum. Scoring the first of them would score the plateau's top-left corner; counting a hit when
    any of them is on the object (Quantus) rewards flat maps. Ties score the share of tied maxima on
    the object: the expected hit of a random tie-break (1 or 0 when the maximum is unique)."""
    masks = _check_masks(maps, masks)
    if tolerance > 0:
        kernel = 2 * tolerance + 1
        masks = F.max_pool2d(masks.float().unsqueeze(1), kernel, stride=1, padding=tolerance).squeeze(1) > 0
    peaks = tied_maxima(maps)
    return (peaks & masks.flatten(1)).sum(1).double().div(peaks.sum(1)).float()


def tied_maxima(maps: torch.Tensor) -> torch.Tensor:
    """(B, H*W) bool: the pixels equal to each map's maximum."""
    flat = maps.flatten(1)
    return flat == flat.amax(dim=1, keepdim=True)


def energy_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B,) share of each map's total mass that lies on the mask (0 for an all-zero map)."""
    masks = _check_masks(maps, masks)
    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp(min=1e-12), torch.zeros_like(total))


@dataclass
class Localisation(_Result):
    pointing_game: float  # share of images whose map peaks on the object (ties: the share on it)
    energy_inside: float  # mean share of the map's mass on the object
    images: int
    tolerance: int
    tied_pixels: float = 1.0  # mean number of pixels tied for each map's maximum (1: unique peaks)


def localisation(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> Localisation:
    hits = pointing_game(maps, masks, tolerance)
    tied = float(tied_maxima(maps).sum(1).double().mean())
    return Localisation(
        float(hits.float().mean()), float(energy_inside(maps, masks).mean()), len(maps), tolerance, tied
    )


# ---------------------------------------------------------------------------- rank correlation
def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension, ties sharing their average rank (as scipy's rankdata)."""
    ordered = values.sort(dim=-1).values
    below = torch.searchsorted(ordered, values.contiguous(), side="left")
    up_to = torch.searchsorted(ordered, values.contiguous(), side="right")
    return (below + up_to + 1).to(torch.float64) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps, (B, ...) x (B, ...) -> (B,). A constant map
    has no ranking; its correlation is reported as 0 (see `is_constant` to leave such pairs out)."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(
        denominator > 0, (ra * rb).sum(1) / denominator.clamp(min=1e-300), torch.zeros_like(denominator)
    )


# ------------------------------------------------------------------------------ sanity check
@dataclass
class SanityCheck(_Result):
    method: str
    rank_correlation: float | None  # mean Spearman correlation over the pairs where neither map is constant
    per_image: torch.Tensor  # NaN where a map is constant
    threshold: float
    passed: bool | None  # False: the maps barely depend on the learned weights; None: too few maps to say
    constant_maps: int = 0  # pairs left out: a constant map (no gradient, say) has no ranking
    compared: int = 0  # pairs the correlation rests on


MIN_SANITY_MAPS = 8  # fewer non-constant pairs than this (or than half the images): the check says nothing


def is_constant(maps: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the map has a single value (nothing to rank)."""
    flat = maps.flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy whose every weight tensor is redrawn from N(its mean, its std); buffers are kept, and
    so are constant tensors (a single value or zero spread), which hold no learned structure."""
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in clone.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.numel() > 1:
                values = parameter.detach().float().cpu()
                parameter.copy_((values.mean() + values.std() * noise).to(parameter))
    return clone


def randomization_check(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    layer: str | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    **options,
) -> SanityCheck:
    """Adebayo et al.'s parameter randomisation test for one method; `passed` when the mean rank
    correlation between the trained and the randomised model's maps is below `threshold`.

    Pairs where either map is constant (a randomised model whose gradient vanishes gives all-equal
    maps) have no rank correlation: counting them as 0 would pass the check for nothing. They are
    left out and counted, and a check resting on fewer than `MIN_SANITY_MAPS` pairs (or fewer than half
    the images) gives `passed=None`."""
    trained = Explainer(model, layer, **options)(images, method, targets)
    randomized = Explainer(randomized_copy(model, seed), layer, **options)(images, method, trained.targets)
    constant = (is_constant(trained.maps) | is_constant(randomized.maps)).cpu()
    per_image = spearman(trained.maps, randomized.maps).float().cpu()
    per_image[constant] = float("nan")
    compared = int((~constant).sum())
    correlation = float(per_image[~constant].mean()) if compared else None
    enough = compared >= min(MIN_SANITY_MAPS, len(images)) and compared * 2 >= len(images)
    passed = (correlation < threshold) if enough and correlation is not None else None
    return SanityCheck(trained.method, correlation, per_image, threshold, passed, int(constant.sum()), compared)


# ------------------------------------------------------------------------------------ drift
@dataclass
class Drift(_Result):
    method: str
    rank_correlation: float  # mean Spearman correlation of the two models' maps
    per_image: torch.Tensor
    pointing_game_before: float | None
    pointing_game_after: float | None
    pointing_game_change: float | None
    images: int
    maps: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # (before, after) per image

    def to_dict(self) -> dict:  # the maps stay out: asdict would copy them only to drop them
        return {f.name: (v.tolist() if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
                for f in fields(self) if f.name != "maps"}  # fmt: skip


def explanation_drift(
    model: nn.Module,
    derived: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    targets: Targets = None,
    *,
    masks: torch.Tensor | None = None,
    layer: str | None = None,
    derived_layer: str | None = None,
    **options,
) -> Drift:
    """How `derived` (a pruned, quantized or distilled child of `model`) explains the same images for
    the same classes (by default `model`'s predictions)."""
    before = Explainer(model, layer, **options)(images, method, targets)
    after = Explainer(derived, derived_layer, **options)(images, method, before.targets)
    per_image = spearman(before.maps, after.maps).float().cpu()
    pointing = None, None, None
    if masks is not None:
        hits_before = float(pointing_game(before.maps, masks).float().mean())
        hits_after = float(pointing_game(after.maps, masks).float().mean())
        pointing = hits_before, hits_after, hits_after - hits_before
    maps = (before.maps.detach().cpu(), after.maps.detach().cpu())
    return Drift(before.method, float(per_image.mean()), per_image, *pointing, len(images), maps)
