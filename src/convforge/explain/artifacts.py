"""`convforge explain`'s output in a run folder: overlays per image, one captioned grid per method,
and the scores as a metrics record (the report's "Explanations" section reads them)."""

import numpy as np
import torch

from convforge.checkpoint import ModelSpec
from convforge.data.sample import spread_positions
from convforge.explain.inputs import ExplainInputs
from convforge.explain.metrics import explanation_drift
from convforge.explain.overlay import captioned_png, model_input_to_uint8, overlay
from convforge.explain.study import MethodComparison, compare_methods
from convforge.files import atomic_write_bytes
from convforge.report.plots import figure_to_png, image_grid_figure
from convforge.runs import EXPLAIN_DIR, Run

_RIGHT, _WRONG, _UNKNOWN = "#1a7f37", "#cf222e", "#24292f"


def explain_into_run(
    run: Run,
    model: torch.nn.Module,
    spec: ModelSpec,
    inputs: ExplainInputs,
    methods: list[str],
    *,
    shown: int = 16,
    layer: str | None = None,
    faithfulness_images: int = 64,
    sanity_images: int = 16,
    steps: int = 16,
    rise_masks: int = 1000,
) -> MethodComparison:
    """Explain, score, and write overlays, grids and the metrics record into the run folder."""
    comparison = compare_methods(
        model,
        inputs.images,
        methods,
        masks=inputs.masks,
        layer=layer,
        faithfulness_images=faithfulness_images,
        sanity_images=sanity_images,
        steps=steps,
        rise_masks=rise_masks,
    )
    show = spread_positions(len(inputs.images), shown)
    pixels = model_input_to_uint8(inputs.images[show], spec.preprocessing)
    folder = run.artifacts / EXPLAIN_DIR
    grids = {}
    for method, result in comparison.explanations.items():
        captions, colors = _captions(result, inputs, spec, show)
        overlays = overlay(pixels, result.maps[show])
        (folder / _slug(method)).mkdir(parents=True, exist_ok=True)
        for i, (image, caption) in enumerate(zip(overlays, captions, strict=True)):
            captioned_png(image, caption, folder / _slug(method) / f"{i:02d}-{inputs.names[show[i]]}.png")
        grid = folder / f"{_slug(method)}.png"
        atomic_write_bytes(grid, figure_to_png(image_grid_figure(overlays, captions, colors)))
        grids[method] = run.relative(grid)
    run.append_metrics(
        {
            "kind": "explain",
            "data": inputs.source,
            "split": inputs.split,
            "target": "prediction",
            "shown": len(show),
            "skipped_files": inputs.skipped,
            "grids": grids,
            **comparison.to_dict(),
        }
    )
    return comparison


def drift_into_run(
    run: Run,
    parent: torch.nn.Module,
    child: torch.nn.Module,
    spec: ModelSpec,
    inputs: ExplainInputs,
    *,
    method: str = "gradcam",
    shown: int = 8,
    parent_name: str = "parent",
) -> dict:
    """How `child` (pruned, distilled, quantized from `parent`) explains the same images for the same
    classes: the drift record appended to `run`'s metrics (and returned), with a grid of the two models'
    maps side by side (the parent's above, the child's below, each child map captioned with its rank
    correlation)."""
    drift = explanation_drift(parent, child, inputs.images, method, masks=inputs.masks)
    show = spread_positions(len(inputs.images), shown)
    pixels = model_input_to_uint8(inputs.images[show], spec.preprocessing)
    before, after = drift.maps
    overlays = np.concatenate([overlay(pixels, before[show]), overlay(pixels, after[show])])
    captions = [parent_name] * len(show) + [f"child rho {float(drift.per_image[i]):.2f}" for i in show]
    folder = run.artifacts / EXPLAIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / f"drift-{_slug(drift.method)}.png"
    figure = image_grid_figure(overlays, captions, [_UNKNOWN] * len(captions), columns=len(show))
    atomic_write_bytes(grid, figure_to_png(figure))
    record = {"kind": "drift", "data": inputs.source, "split": inputs.split, "parent": parent_name,
              "grid": run.relative(grid), **drift.to_dict()}  # fmt: skip
    run.append_metrics(record)
    return record


def _slug(method: str) -> str:
    return method.replace("++", "pp")


def _captions(result, inputs: ExplainInputs, spec: ModelSpec, show: np.ndarray) -> tuple[list[str], list[str]]:
    probabilities = result.logits.softmax(1)
    captions, colors = [], []
    for i in show:
        predicted = int(result.logits[i].argmax())
        text = f"{spec.classes[predicted]} {100 * float(probabilities[i, predicted]):.0f}%"
        if inputs.labels is None:
            captions.append(text)
            colors.append(_UNKNOWN)
            continue
        truth = int(inputs.labels[i])
        captions.append(text + ("" if truth == predicted else f"\n(true: {spec.classes[truth]})"))
        colors.append(_RIGHT if truth == predicted else _WRONG)
    return captions, colors
