"""The robustness card of a model: clean accuracy, accuracy under attacks and corruptions, mCE against
a baseline run, shape bias; and its files in a run folder (curves, a markdown table, a metrics record
that the report's "Robustness" section reads)."""

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import nn

from convforge.checkpoint import ModelSpec
from convforge.data.sample import sample_split
from convforge.data.shapes import SHAPE_CLASSES, ShapesConfig
from convforge.data.spec import absolute_spec
from convforge.data.transforms import pixel_transform
from convforge.errors import ConfigError, RunFolderError
from convforge.files import atomic_write_bytes
from convforge.models.prepared import model_prepared
from convforge.report.compare import record_model
from convforge.report.plots import figure_to_png
from convforge.robust.attacks import PixelSpaceModel
from convforge.robust.bias import ShapeBias, cue_conflict_set, shape_bias
from convforge.robust.evaluate import (
    AttackRow,
    CorruptionErrors,
    CorruptionTable,
    accuracy,
    corruption_errors,
    evaluate_attacks,
    evaluate_corruptions,
    predictions,
)
from convforge.runs import ROBUST_DIR, ROBUST_FILES, TORCH_MODEL, Run


@dataclass
class RobustnessCard:
    """Everything one `convforge robust` call measured, as written to metrics.jsonl."""

    data: str
    split: str
    images: int
    clean_accuracy: float
    attacks: list[AttackRow] = field(default_factory=list)
    corruptions: CorruptionTable | None = None
    corruption_errors: CorruptionErrors | None = None
    bias: ShapeBias | None = None
    skipped_files: int = 0
    model: str = TORCH_MODEL  # which of a run's models: torch, ort, ort-int8 (or an .onnx file's name)
    attacks_crafted_on: str | None = None  # the model the attacks' gradients came from, when not this one

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "attacks_crafted_on": self.attacks_crafted_on,
            "data": self.data,
            "split": self.split,
            "images": self.images,
            "clean_accuracy": self.clean_accuracy,
            "attacks": [row.to_dict() for row in self.attacks],
            "corruptions": self.corruptions.to_dict() if self.corruptions else None,
            "corruption_errors": self.corruption_errors.to_dict() if self.corruption_errors else None,
            "bias": self.bias.to_dict() if self.bias else None,
            "skipped_files": self.skipped_files,
        }


def robustness_card(model: nn.Module, spec: ModelSpec, data: str, **options: Any) -> RobustnessCard:
    """Measure one PyTorch model (the options are `robustness_cards`')."""
    return robustness_cards({TORCH_MODEL: model}, spec, data, **options)[TORCH_MODEL]


def robustness_cards(
    models: Mapping[str, nn.Module],
    spec: ModelSpec,
    data: str,
    *,
    attack_source: nn.Module | None = None,
    attack_source_name: str = TORCH_MODEL,
    split: str | None = "test",
    images: int = 512,
    attacks: list[str] = (),
    epsilons: list[float] = (),
    steps: int | None = None,
    families: list[str] = (),
    severities: list[int] = (1, 2, 3, 4, 5),
    preset: str = "auto",
    bias_images: int = 0,
    baseline: CorruptionTable | None = None,
    baseline_name: str = "",
    batch_size: int = 128,
    seed: int = 0,
    strict: bool = False,
    device: torch.device | None = None,
) -> dict[str, RobustnessCard]:
    """Measure every model of `models` (one model in its forms: PyTorch, exported, quantized) on the same
    `images` images of `data`, under the same attacks, corruptions and cue conflicts.

    Each corrupted batch and each adversarial batch is made once and scored by every model, so the
    cards differ only by the models. Attacks need gradients: they are crafted on `attack_source`
    (default: the one model of `models` that has parameters, the PyTorch one) and are transfer attacks
    for the other models; an ONNX Runtime model has no gradients of its own."""
    source = attack_source if attack_source is not None else _gradient_model(models, attacks)
    device = device or next(
        (p.device for m in [source, *models.values()] if m is not None for p in m.parameters()),
        torch.device("cpu"),
    )
    sample = sample_split(data, spec.classes, spec.in_chans, split, images, strict)
    pixels = pixel_transform(torch.from_numpy(sample.pixels).to(device), spec.preprocessing)
    labels = torch.from_numpy(sample.labels).to(device)
    mean, std = spec.preprocessing.mean, spec.preprocessing.std
    pixel_models = {name: PixelSpaceModel(model, mean, std) for name, model in models.items()}
    transfer = {name for name, model in models.items() if model is not source}
    with contextlib.ExitStack() as prepared:
        for model in {id(m): m for m in [*models.values(), source] if m is not None}.values():
            prepared.enter_context(model_prepared(model))
        cards = {
            name: RobustnessCard(absolute_spec(data), sample.imageset.name, len(labels),
                                 accuracy(model, pixels, labels, batch_size), skipped_files=sample.skipped, model=name,
                                 attacks_crafted_on=attack_source_name if attacks and name in transfer else None)
            for name, model in pixel_models.items()
        }  # fmt: skip
        if attacks:
            rows = evaluate_attacks(PixelSpaceModel(source, mean, std), pixel_models, pixels, labels, list(attacks),
                                    [0.0, *epsilons], steps=steps, batch_size=batch_size, seed=seed,
                                    transfer=transfer)  # fmt: skip
            for name, card in cards.items():
                card.attacks = rows[name]
        if families:
            tables = evaluate_corruptions(pixel_models, pixels, labels, list(families), list(severities),
                                          preset=preset, batch_size=batch_size, seed=seed)  # fmt: skip
            for name, card in cards.items():
                card.corruptions = tables[name]
                if baseline is not None:
                    card.corruption_errors = corruption_errors(tables[name], baseline, baseline_name)
        if bias_images:
            for name, card in cards.items():
                card.bias = _shape_bias(pixel_models[name], spec, bias_images, device)
    return cards


def _gradient_model(models: Mapping[str, nn.Module], attacks: list[str]) -> nn.Module | None:
    """The model attacks are crafted on when the caller names none: the one with parameters."""
    with_parameters = [model for model in models.values() if any(True for _ in model.parameters())]
    if attacks and len(with_parameters) != 1:
        raise ConfigError(
            "attacks need a model with gradients to craft the adversarial images on: "
            + (
                "none of these models has any (an ONNX model has none); give the run's PyTorch model as the "
                "attack source, or measure without attacks"
                if not with_parameters
                else "several models have them; say which one the attacks are crafted on"
            )  # fmt: skip
        )
    return with_parameters[0] if with_parameters else None


def _shape_bias(pixel_model, spec: ModelSpec, count: int, device) -> ShapeBias:
    if list(spec.classes) != list(SHAPE_CLASSES[: len(spec.classes)]):
        raise ConfigError(
            "--bias needs a model trained on the built-in shapes (its classes are "
            f"{', '.join(spec.classes[:4])}, ...); train one with: convforge train shapes:textured=1"
        )
    config = ShapesConfig(size=spec.preprocessing.input_size[0], classes=len(spec.classes))
    conflict = cue_conflict_set(config, count)
    images = pixel_transform(torch.from_numpy(conflict.images).to(device), spec.preprocessing)
    return shape_bias(predictions(pixel_model, images), conflict.shape_labels, conflict.texture_labels)


def latest_corruptions(run_path: Path) -> CorruptionTable:
    """The corruption table of a run's latest `convforge robust` record: the baseline for mCE."""
    run = Run.open(run_path)
    for record in reversed(run.metrics("robust")):
        if record.get("corruptions") and record_model(record) == TORCH_MODEL:
            return CorruptionTable.from_dict(record["corruptions"])
    raise RunFolderError(
        f"{run.path} has no corruption results to compare with; run `convforge robust {run.path} DATA` first"
    )


def write_card(run: Run, card: RobustnessCard) -> dict[str, str]:
    """Curves, a markdown table and the metrics record; returns the artifact paths (run-relative).
    The PyTorch model's files go to artifacts/robust/, another model's to artifacts/robust/MODEL/."""
    folder = run.artifacts / ROBUST_DIR
    if card.model != TORCH_MODEL:
        folder = folder / card.model
    folder.mkdir(parents=True, exist_ok=True)
    contents = {"table": markdown_table(card).encode()}
    if card.attacks:
        contents["attacks"] = figure_to_png(attack_figure(card.attacks))
    if card.corruptions:
        contents["corruptions"] = figure_to_png(corruption_figure(card.corruptions))
    files = {}
    for name in ROBUST_FILES:
        if name in contents:
            path = folder / ROBUST_FILES[name]
            atomic_write_bytes(path, contents[name])
            files[name] = run.relative(path)
    run.append_metrics({"kind": "robust", **card.to_dict(), "files": files})
    return files


def attack_figure(rows: list[AttackRow]) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for name in dict.fromkeys(row.settings.name for row in rows):
        points = sorted((r.settings.eps * 255, r.robust_accuracy) for r in rows if r.settings.name == name)
        axes.plot(*zip(*points, strict=True), marker="o", label=name)
    axes.set(xlabel="epsilon (x/255)", ylabel="accuracy", title="accuracy under attack", ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def corruption_figure(table: CorruptionTable) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    for family, by_severity in table.accuracy.items():
        points = [(0, table.clean_accuracy), *sorted(by_severity.items())]
        axes.plot(*zip(*points, strict=True), marker=".", label=family.replace("_", " "))
    axes.set(xlabel="severity (0: clean)", ylabel="accuracy", title="accuracy under corruption", ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2, loc="lower left")
    figure.tight_layout()
    return figure


def markdown_table(card: RobustnessCard) -> str:
    lines = [f"# Robustness of {card.model}: {card.images} images of {card.data} ({card.split})", "",
             f"Clean accuracy: {card.clean_accuracy:.4f}", ""]  # fmt: skip
    if card.attacks_crafted_on:
        lines += [f"Attacks crafted on {card.attacks_crafted_on} and scored on {card.model} (transfer).", ""]
    if card.attacks:
        lines += ["| attack | norm | eps | steps | step size | random start | robust accuracy | seconds |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in card.attacks:
            s = row.settings
            lines.append(f"| {s.name} | {s.norm} | {s.eps * 255:.3g}/255 | {s.steps} | {s.step_size:.5f} | "
                         f"{s.random_start} | {row.robust_accuracy:.4f} | {row.seconds:.1f} |")  # fmt: skip
        lines.append("")
    if card.corruptions:
        table = card.corruptions
        severities = sorted({s for v in table.accuracy.values() for s in v})
        lines += [f"Corruptions (preset {table.preset}): accuracy per severity", "",
                  "| family | " + " | ".join(str(s) for s in severities) + " | mean | relative robustness |",
                  "|---" * (len(severities) + 3) + "|"]  # fmt: skip
        for family, by_severity in table.accuracy.items():
            cells = " | ".join(f"{by_severity[s]:.4f}" for s in severities)
            lines.append(f"| {family} | {cells} | {table.mean_accuracy(family):.4f} | "
                         f"{table.relative_robustness(family) or 0:.3f} |")  # fmt: skip
        lines.append("")
    if card.corruption_errors:
        errors = card.corruption_errors
        lines.append(f"mCE against {errors.baseline}: {100 * errors.mce:.1f}%")
        if errors.relative_mce is not None:
            lines.append(f"relative mCE: {100 * errors.relative_mce:.1f}%")
        lines.append("")
    if card.bias:
        lines.append(f"Shape bias on {card.bias.images} cue-conflict images: {card.bias.shape_bias}")
    return "\n".join(lines) + "\n"
