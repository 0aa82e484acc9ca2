"""`convforge robust RUN DATA`: a run's robustness report card (attacks, corruptions, shape bias)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import matplotlib.pyplot as plt
import torch
import typer
from rich.table import Table

from convforge.checkpoint import ModelSpec, load_model
from convforge.cli.common import DeviceOption, JsonOption, Output, QuietOption, percent, user_errors
from convforge.cli.explain import sample_split
from convforge.data import absolute_spec
from convforge.data.shapes import SHAPE_CLASSES, ShapesConfig
from convforge.data.transforms import pixel_transform
from convforge.errors import ConfigError, RunFolderError
from convforge.models.prepared import model_prepared
from convforge.report import build_report
from convforge.report.plots import figure_to_png
from convforge.robust.attacks import PixelSpaceModel, check_attack_name, parse_epsilons
from convforge.robust.bias import ShapeBias, cue_conflict_set, shape_bias
from convforge.robust.corruptions import parse_severities, resolve_families
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
from convforge.runs import Run, atomic_write_bytes
from convforge.train.setup import resolve_device

ROBUST_DIR = "robust"


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

    def to_dict(self) -> dict[str, Any]:
        return {
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


def robustness_card(
    model: torch.nn.Module,
    spec: ModelSpec,
    data: str,
    *,
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
) -> RobustnessCard:
    """Measure `model` on `images` images of `data` under attacks, corruptions and cue conflict."""
    device = device or next(model.parameters()).device
    sample = sample_split(data, spec, split, images, strict)
    pixels = pixel_transform(torch.from_numpy(sample.pixels).to(device), spec.preprocessing)
    labels = torch.from_numpy(sample.labels).to(device)
    pixel_model = PixelSpaceModel(model, spec.preprocessing.mean, spec.preprocessing.std)
    with model_prepared(model):
        clean = accuracy(pixel_model, pixels, labels, batch_size)
        card = RobustnessCard(
            absolute_spec(data), sample.imageset.name, len(labels), clean, skipped_files=sample.skipped
        )
        if attacks:
            card.attacks = evaluate_attacks(pixel_model, pixels, labels, list(attacks), [0.0, *epsilons],
                                            steps=steps, batch_size=batch_size, seed=seed)  # fmt: skip
        if families:
            card.corruptions = evaluate_corruptions(pixel_model, pixels, labels, list(families), list(severities),
                                                    preset=preset, batch_size=batch_size, seed=seed)  # fmt: skip
            if baseline is not None:
                card.corruption_errors = corruption_errors(card.corruptions, baseline, baseline_name)
        if bias_images:
            card.bias = _shape_bias(pixel_model, spec, bias_images, device)
    return card


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
        if record.get("corruptions"):
            return CorruptionTable.from_dict(record["corruptions"])
    raise RunFolderError(
        f"{run.path} has no corruption results to compare with; run `convforge robust {run.path} DATA` first"
    )


# ------------------------------------------------------------------------------- run artifacts
def write_card(run: Run, card: RobustnessCard) -> dict[str, str]:
    """Curves, a markdown table and the metrics record; returns the artifact paths (run-relative)."""
    folder = run.artifacts / ROBUST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if card.attacks:
        atomic_write_bytes(folder / "attacks.png", figure_to_png(attack_figure(card.attacks)))
        files["attacks"] = f"artifacts/{ROBUST_DIR}/attacks.png"
    if card.corruptions:
        atomic_write_bytes(folder / "corruptions.png", figure_to_png(corruption_figure(card.corruptions)))
        files["corruptions"] = f"artifacts/{ROBUST_DIR}/corruptions.png"
    atomic_write_bytes(folder / "robustness.md", markdown_table(card).encode())
    files["table"] = f"artifacts/{ROBUST_DIR}/robustness.md"
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
    lines = [f"# Robustness: {card.images} images of {card.data} ({card.split})", "",
             f"Clean accuracy: {card.clean_accuracy:.4f}", ""]  # fmt: skip
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


# ------------------------------------------------------------------------------------ printing
def attack_table(card: RobustnessCard) -> Table:
    table = Table(title=f"accuracy under attack ({card.images} images, clean {percent(card.clean_accuracy)})")
    for column in ("attack", "eps", "steps", "robust accuracy", "seconds"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for row in card.attacks:
        if row.settings.eps > 0:
            table.add_row(row.settings.name, f"{row.settings.eps * 255:.3g}/255", str(row.settings.steps),
                          percent(row.robust_accuracy), f"{row.seconds:.1f}")  # fmt: skip
    return table


def corruption_table(card: RobustnessCard) -> Table:
    corruptions = card.corruptions
    severities = sorted({s for v in corruptions.accuracy.values() for s in v})
    clean = percent(card.clean_accuracy)
    table = Table(title=f"accuracy under corruption (preset {corruptions.preset}, clean {clean})")
    table.add_column("family", no_wrap=True)
    for s in severities:
        table.add_column(f"s{s}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("rel. robustness", justify="right")
    if card.corruption_errors:
        table.add_column("CE", justify="right")
    for family, by_severity in corruptions.accuracy.items():
        cells = [percent(by_severity[s]) for s in severities]
        cells += [percent(corruptions.mean_accuracy(family)), f"{corruptions.relative_robustness(family) or 0:.3f}"]
        if card.corruption_errors:
            ce = card.corruption_errors.corruption_error.get(family)
            cells.append("-" if ce is None else f"{100 * ce:.1f}%")
        table.add_row(family, *cells)
    return table


def print_card(output: Output, card: RobustnessCard) -> None:
    if card.attacks:
        output.table(attack_table(card))
    if card.corruptions:
        output.table(corruption_table(card))
    if card.corruption_errors:
        errors = card.corruption_errors
        relative = "" if errors.relative_mce is None else f", relative mCE {100 * errors.relative_mce:.1f}%"
        output.message(f"mCE against {errors.baseline}: {100 * errors.mce:.1f}%{relative}")
    if card.bias:
        bias = card.bias
        value = "-" if bias.shape_bias is None else f"{bias.shape_bias:.3f}"
        output.message(
            f"shape bias {value} on {bias.images} cue-conflict images ({bias.shape_decisions} by shape, "
            f"{bias.texture_decisions} by texture, {bias.other_decisions} neither)"
        )


@user_errors
def robust_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder with a trained model.")],
    data: Annotated[str, typer.Argument(help="Dataset spec to measure on (shapes, a folder, cifar10:PATH, ...).")],
    attacks: Annotated[
        str, typer.Option(help="Comma-separated: fgsm, pgd, pgd-l2, apgd, apgd-l2, or none.")
    ] = "fgsm,pgd",
    eps: Annotated[str, typer.Option(help="Budgets on [0, 1] pixels, comma-separated: 8/255 or 0.031.")] = (
        "1/255,2/255,4/255,8/255"
    ),
    steps: Annotated[int | None, typer.Option(help="Iterations (default: PGD 10, APGD 100).")] = None,
    corruptions: Annotated[str, typer.Option(help="Comma-separated families, all, or none.")] = "all",
    severities: Annotated[str, typer.Option(help="Severities 1-5: '1-5', '3' or '1,3,5'.")] = "1-5",
    preset: Annotated[str, typer.Option(help="Corruption parameters: auto, imagenet (224 px) or cifar (32 px).")] = (
        "auto"
    ),
    bias: Annotated[bool, typer.Option("--bias", help="Measure shape bias on cue-conflict shapes.")] = False,
    baseline: Annotated[
        Path | None, typer.Option(help="Run whose corruption errors are the mCE baseline (ran robust before).")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Images, spread evenly over the split.")] = 512,
    split: Annotated[str | None, typer.Option(help="Dataset split (default: test, else val, else all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of random starts and corruption noise.")] = 0,
    device: DeviceOption = "auto",
    strict: Annotated[bool, typer.Option(help="Stop on unreadable images instead of skipping them.")] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Measure how a run's model fails: adversarial attacks, common corruptions and shape bias.

    Attacks and corruptions work on [0, 1] pixels and the model's own normalisation is applied
    after them. Writes curves and a table into RUN/artifacts/robust/, appends the numbers to
    metrics.jsonl and adds a "Robustness" section to the report.

    Example: convforge robust runs/demo shapes --attacks fgsm,pgd,apgd --eps 1/255,2/255,4/255,8/255
    --corruptions all --severities 1-5 --bias
    """
    output = Output(quiet, as_json)
    if n < 1 or batch_size < 1:
        raise ConfigError("--n and --batch-size must be at least 1")
    attack_names = [] if attacks.strip() == "none" else [check_attack_name(a) for a in attacks.split(",") if a.strip()]
    families = [] if corruptions.strip() == "none" else resolve_families(corruptions)
    epsilons = parse_epsilons(eps, "l2" if attack_names and all(a.endswith("-l2") for a in attack_names) else "linf")
    severity_list = parse_severities(severities)
    baseline_table = latest_corruptions(baseline) if baseline is not None else None
    run = Run.open(run_path)
    target_device = resolve_device(device)
    model, spec = load_model(run.path, device=target_device)
    output.message(f"measuring {run.path} on up to {n} images of {data} ...")
    card = robustness_card(
        model, spec, data, split=split, images=n, attacks=attack_names, epsilons=epsilons, steps=steps,
        families=families, severities=severity_list, preset=preset, bias_images=n if bias else 0,
        baseline=baseline_table, baseline_name=str(baseline) if baseline else "", batch_size=batch_size,
        seed=seed, strict=strict, device=target_device,
    )  # fmt: skip
    files = write_card(run, card)
    report = build_report(run.path)
    print_card(output, card)
    if card.skipped_files:
        output.message(f"[yellow]{card.skipped_files} unreadable image(s) skipped[/yellow]")
    output.message(f"curves and table in {run.artifacts / ROBUST_DIR}; report {report}")
    output.result({"run": str(run.path), **card.to_dict(), "files": files})


def register(app: typer.Typer) -> None:
    app.command("robust")(robust_command)
