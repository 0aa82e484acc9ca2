"""Several methods on one set of images, each measured: the library behind `convforge explain`.

`compare_methods` explains the same images with every method and scores each one the same way:
localisation against ground-truth masks when there are masks (with a uniform random map as the
reference point), deletion and insertion AUC, and the randomisation sanity check.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from convforge.explain.cam import Explainer, Explanation, check_method
from convforge.explain.metrics import deletion_insertion, localisation, randomization_check


@dataclass
class MethodScores:
    method: str
    layer: str | None
    seconds: float  # wall time of the explanation itself (median-free: one call, for orientation)
    pointing_game: float | None = None
    energy_inside: float | None = None
    deletion_auc: float | None = None
    insertion_auc: float | None = None
    sanity_correlation: float | None = None
    sanity_passed: bool | None = None  # None: not run, or too few non-constant maps to say
    sanity_constant_maps: int | None = None  # pairs left out of the correlation (a constant map)
    tied_pixels: float | None = None  # mean pixels tied for the maximum (coarse maps: a plateau)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class MethodComparison:
    images: int
    scores: list[MethodScores]
    explanations: dict[str, Explanation] = field(repr=False)
    random_map: dict[str, float] | None = None  # localisation of uniform random maps, the reference
    faithfulness_images: int = 0
    sanity_images: int = 0

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "methods": [s.to_dict() for s in self.scores],
            "random_map": self.random_map,
            "faithfulness_images": self.faithfulness_images,
            "sanity_images": self.sanity_images,
        }


def compare_methods(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str],
    *,
    targets: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    layer: str | None = None,
    faithfulness_images: int = 64,
    sanity_images: int = 16,
    steps: int = 16,
    seed: int = 0,
    **options,
) -> MethodComparison:
    """Explain `images` with each method (for `targets`, default the predictions) and score them.
    Deletion/insertion runs on the first `faithfulness_images`, the sanity check on the first
    `sanity_images` (0 turns either off); localisation on all images when `masks` are given."""
    methods = [check_method(m) for m in methods]
    explainer = Explainer(model, layer, seed=seed, **options)
    scores, explanations = [], {}
    for method in methods:
        started = time.perf_counter()
        result = explainer(images, method, targets)
        row = MethodScores(method, result.layer, round(time.perf_counter() - started, 3))
        if masks is not None:
            located = localisation(result.maps, masks)
            row.pointing_game, row.energy_inside = located.pointing_game, located.energy_inside
            row.tied_pixels = located.tied_pixels
        if faithfulness_images > 0:
            n = faithfulness_images
            faithful = deletion_insertion(model, images[:n], result.maps[:n], result.targets[:n], steps=steps)
            row.deletion_auc, row.insertion_auc = faithful.deletion_auc, faithful.insertion_auc
        if sanity_images > 0:
            n = sanity_images
            sanity = randomization_check(
                model, images[:n], method, result.targets[:n], layer=layer, seed=seed, **options
            )
            row.sanity_correlation, row.sanity_passed = sanity.rank_correlation, sanity.passed
            row.sanity_constant_maps = sanity.constant_maps
        scores.append(row)
        explanations[method] = result
    random_map = None
    if masks is not None:
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(masks.shape, generator=generator).to(images.device)
        located = localisation(noise, masks)
        random_map = {"pointing_game": located.pointing_game, "energy_inside": located.energy_inside}
    return MethodComparison(
        images=len(images),
        scores=scores,
        explanations=explanations,
        random_map=random_map,
        faithfulness_images=min(faithfulness_images, len(images)),
        sanity_images=min(sanity_images, len(images)),
    )
