"""`convforge explain RUN (IMAGE...|DATA)`: what a run's model looks at, drawn and measured."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.table import Table

from convforge.checkpoint import ModelSpec, load_model
from convforge.cli.common import DeviceOption, JsonOption, Output, QuietOption, user_errors
from convforge.data import absolute_spec, load_dataset
from convforge.data.decode import decode_image
from convforge.data.folder import is_archive
from convforge.data.imageset import ImageSet
from convforge.data.spec import SCHEMES, split_limit
from convforge.data.transforms import eval_transform
from convforge.deploy import expand_image_paths
from convforge.errors import ConfigError, DatasetError, ImageDecodeError
from convforge.explain.overlay import captioned_png, model_input_to_uint8, overlay
from convforge.explain.study import MethodComparison, compare_methods
from convforge.report import build_report
from convforge.report.plots import figure_to_png, image_grid_figure
from convforge.runs import Run, atomic_write_bytes
from convforge.train.evaluate import align_classes
from convforge.train.setup import resolve_device

DEFAULT_METHODS = "gradcam,gradcam++,layercam,eigencam,scorecam"
EXPLAIN_DIR = "explain"
_RIGHT, _WRONG, _UNKNOWN = "#1a7f37", "#cf222e", "#24292f"


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


def is_dataset_spec(items: list[str]) -> bool:
    """One argument that names a dataset: a scheme (shapes, mnist:...), an archive, or a folder of class
    folders. Anything else is image files or folders of images."""
    if len(items) != 1:
        return False
    item = split_limit(items[0])[0]
    match = re.match(r"^([a-z][a-z0-9-]*)(:|$)", item, re.IGNORECASE)
    if match and match.group(1).lower() in SCHEMES and not Path(items[0]).exists():
        return True
    path = Path(item)
    return (path.is_file() and is_archive(path)) or (path.is_dir() and any(p.is_dir() for p in path.iterdir()))


@dataclass
class DatasetSample:
    """`count` images spread evenly over one split (so that every class shows up), as uint8 NHWC."""

    imageset: ImageSet
    positions: np.ndarray
    pixels: np.ndarray
    skipped: int

    @property
    def labels(self) -> np.ndarray:
        return self.imageset.labels[self.positions]


def sample_split(spec_text: str, spec: ModelSpec, split: str | None, count: int, strict: bool) -> DatasetSample:
    dataset = load_dataset(spec_text, strict=strict, channels=spec.in_chans)
    if split is not None and split not in dataset.splits:
        raise DatasetError(f"{spec_text} has no {split!r} split; it has {sorted(dataset.splits)}")
    chosen = dataset.splits[split] if split else dataset.eval_split()
    imageset: ImageSet = align_classes(chosen, spec.classes, spec_text)
    positions = np.unique(np.linspace(0, len(imageset) - 1, min(count, len(imageset))).round().astype(np.int64))
    skipped = len(dataset.skipped)
    if imageset.streaming:
        pixels = [imageset.images.read(int(imageset.indices[p])) for p in positions]
        kept = [i for i, image in enumerate(pixels) if isinstance(image, np.ndarray)]
        skipped += len(pixels) - len(kept)
        raw, positions = np.stack([pixels[i] for i in kept]), positions[kept]
    else:
        raw = imageset.gather(positions)
    return DatasetSample(imageset, positions, raw, skipped)


def dataset_inputs(
    spec_text: str, spec: ModelSpec, split: str | None, count: int, device: torch.device, strict: bool
) -> ExplainInputs:
    """`count` images spread evenly over a split, as model input, with labels and masks."""
    sample = sample_split(spec_text, spec, split, count, strict)
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
    show = np.unique(np.linspace(0, len(inputs.images) - 1, min(shown, len(inputs.images))).round().astype(int))
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
        grids[method] = str(grid.relative_to(run.path))
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


def comparison_table(comparison: MethodComparison, title: str) -> Table:
    table = Table(title=title)
    for column in ("method", "layer", "pointing game", "energy in mask", "deletion AUC ↓", "insertion AUC ↑"):
        table.add_column(column, justify="left" if column in ("method", "layer") else "right")
    table.add_column("sanity ρ", justify="right")
    table.add_column("seconds", justify="right")

    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in comparison.scores:
        sanity = number(row.sanity_correlation, 2)
        if row.sanity_passed is False:
            sanity = f"[red]{sanity} (fails)[/red]"
        if row.sanity_constant_maps:
            verdict = "too few to say" if row.sanity_passed is None else "left out"
            sanity += f" [yellow]({row.sanity_constant_maps} constant: {verdict})[/yellow]"
        table.add_row(
            row.method,
            row.layer or "-",
            number(row.pointing_game),
            number(row.energy_inside),
            number(row.deletion_auc),
            number(row.insertion_auc),
            sanity,
            f"{row.seconds:.1f}",
        )
    if comparison.random_map:
        random_map = comparison.random_map
        table.add_row(
            "[dim]random map[/dim]", "-", number(random_map["pointing_game"]), number(random_map["energy_inside"]),
            "-", "-", "-", "-",
        )  # fmt: skip
    return table


@user_errors
def explain_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder with a trained model.")],
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...|DATA",
            help="Image files or folders of images, or one dataset spec (shapes, a class-folder tree, ...).",
        ),
    ],
    method: Annotated[
        str, typer.Option("--method", help="Comma-separated: gradcam, gradcam++, xgradcam, hirescam, layercam, "
                          "eigencam, scorecam, rise.")
    ] = DEFAULT_METHODS,  # fmt: skip
    n: Annotated[int, typer.Option("--n", help="Images to draw per method.")] = 16,
    layer: Annotated[
        str | None, typer.Option(help="Layer to explain (default: the last spatial map the logits depend on).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Dataset split (default: test, else val, else all).")] = None,
    metric_images: Annotated[
        int, typer.Option(help="Dataset images explained and scored against ground-truth masks.")
    ] = 256,
    faithfulness_images: Annotated[
        int, typer.Option(help="Images for deletion/insertion AUC (0: skip).")
    ] = 64,
    sanity_images: Annotated[
        int, typer.Option(help="Images for the weight-randomisation sanity check (0: skip).")
    ] = 16,
    steps: Annotated[int, typer.Option(help="Deletion/insertion steps.")] = 16,
    rise_masks: Annotated[int, typer.Option(help="Random masks per image for RISE.")] = 1000,
    device: DeviceOption = "auto",
    strict: Annotated[bool, typer.Option(help="Stop on unreadable images instead of skipping them.")] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Draw and measure what a run's model looks at, with several CAM methods side by side.

    Writes overlays and one grid per method into RUN/artifacts/explain/, appends the scores to
    metrics.jsonl and adds an "Explanations" section to the report. With a dataset that has
    ground-truth masks (the built-in shapes), each method's pointing game and energy inside the
    object are measured against a random map.

    Example: convforge explain runs/demo shapes --method gradcam,eigencam --n 16
    """
    output = Output(quiet, as_json)
    if n < 1 or metric_images < 1:
        raise ConfigError("--n and --metric-images must be at least 1")
    methods = [m for m in (part.strip() for part in method.split(",")) if m]
    run = Run.open(run_path)
    target_device = resolve_device(device)
    model, spec = load_model(run.path, device=target_device)
    if is_dataset_spec(inputs):
        data = dataset_inputs(inputs[0], spec, split, max(n, metric_images), target_device, strict)
    else:
        data, problems = file_inputs(inputs, spec, target_device)
        for problem in problems:
            output.message(f"[yellow]skipped unreadable image {problem}[/yellow]")
    comparison = explain_into_run(
        run,
        model,
        spec,
        data,
        methods,
        shown=n,
        layer=layer,
        faithfulness_images=faithfulness_images,
        sanity_images=sanity_images,
        steps=steps,
        rise_masks=rise_masks,
    )
    report = build_report(run.path)
    output.table(comparison_table(comparison, f"{run.path}: {comparison.images} image(s) from {data.source}"))
    if data.skipped:
        output.message(f"[yellow]{data.skipped} unreadable image(s) skipped[/yellow]")
    output.message(f"overlays and grids in {run.artifacts / EXPLAIN_DIR}; report {report}")
    output.result({"run": str(run.path), **comparison.to_dict()})


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_command)
