"""Report sections. A section is one function and one template block:

    @section("training", "Training", order=20)
    def training(run: Run) -> dict | None: ...      # context for sections/training.html.j2

The function reads the run folder only (never a live model) and returns the template's context, or
None when the run has nothing for that section. Capabilities added later register their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from convforge.report import plots
from convforge.runs import Run


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    order: int
    build: Callable[[Run], dict[str, Any] | None]

    @property
    def template(self) -> str:
        return f"sections/{self.name}.html.j2"


SECTIONS: dict[str, Section] = {}


def section(name: str, title: str, order: int) -> Callable:
    def register(build: Callable[[Run], dict[str, Any] | None]) -> Callable:
        SECTIONS[name] = Section(name, title, order, build)
        return build

    return register


def _model_description(run: Run) -> dict[str, Any] | None:
    import json

    path = run.path / "model.json"
    return json.loads(path.read_text()) if path.is_file() else None


@section("summary", "Summary", order=10)
def summary(run: Run) -> dict[str, Any]:
    info = run.info
    model = _model_description(run)
    lineage = [{"name": r.name, "path": str(r.path), "stage": r.info.get("stage")} for r in run.lineage()]
    return {
        "info": info,
        "model": model,
        "lineage": lineage,
        "test": info.get("test"),
        "data": info.get("data") or {},
    }


@section("training", "Training", order=20)
def training(run: Run) -> dict[str, Any] | None:
    epochs = run.metrics("epoch")
    if not epochs:
        return None
    x = [r["epoch"] for r in epochs]
    loss = {"train": (x, [r["train_loss"] for r in epochs])}
    accuracy = {"train": (x, [r["train_acc"] for r in epochs])}
    if any("val_acc" in r for r in epochs):
        with_val = [r for r in epochs if "val_acc" in r]
        loss["val"] = ([r["epoch"] for r in with_val], [r["val_loss"] for r in with_val])
        accuracy["val"] = ([r["epoch"] for r in with_val], [r["val_acc"] for r in with_val])
    seeds = run.metrics("seeds")
    return {
        "loss_chart": plots.line_chart(loss, "loss", "cross-entropy"),
        "accuracy_chart": plots.line_chart(accuracy, "accuracy", "top-1"),
        "lr_chart": plots.line_chart(
            {"lr": (x, [r["lr"] for r in epochs])}, "learning rate (end of epoch)", "lr"
        ),
        "epochs": epochs,
        "images_per_second": float(np.median([r["images_per_second"] for r in epochs])),
        "seeds": seeds[-1] if seeds else None,
    }


@section("evaluation", "Evaluation", order=30)
def evaluation(run: Run) -> dict[str, Any] | None:
    evals = run.metrics("eval")
    if not evals:
        return None
    latest = evals[-1]
    confusion = np.asarray(latest["confusion"], dtype=np.int64)
    per_class = {k: v for k, v in latest["per_class"].items() if v is not None}
    return {
        "latest": latest,
        "history": evals,
        "confusion_chart": plots.confusion_matrix_chart(confusion, latest["classes"]),
        "per_class_chart": plots.bar_chart(
            list(per_class), list(per_class.values()), "per-class accuracy", "top-1"
        ),
        "per_class": sorted(per_class.items(), key=lambda item: item[1]),
    }


@section("predictions", "Predictions", order=40)
def predictions(run: Run) -> dict[str, Any] | None:
    from convforge.train.samples import load_prediction_samples

    samples = load_prediction_samples(run)
    if samples is None:
        return None
    classes = samples["classes"]
    captions, colors = [], []
    for label, predicted, confidence in zip(
        samples["labels"], samples["predictions"], samples["confidences"], strict=True
    ):
        right = label == predicted
        captions.append(
            f"{classes[predicted]} {100 * confidence:.0f}%" + ("" if right else f"\n(true: {classes[label]})")
        )
        colors.append("#1a7f37" if right else "#cf222e")
    mistakes = int(sum(c != "#1a7f37" for c in colors))
    return {
        "grid": plots.image_grid(samples["images"], captions, colors),
        "split": samples["split"],
        "shown": len(captions),
        "mistakes": mistakes,
    }


@section("explanations", "Explanations", order=50)
def explanations(run: Run) -> dict[str, Any] | None:
    records = run.metrics("explain")
    if not records:
        return None
    latest = records[-1]
    grids = []
    for method, relative in latest.get("grids", {}).items():
        path = run.path / relative
        if path.is_file():
            grids.append({"method": method, "uri": plots.png_data_uri(path.read_bytes())})
    return {"latest": latest, "methods": latest["methods"], "grids": grids, "random_map": latest.get("random_map")}


@section("robustness", "Robustness", order=60)
def robustness(run: Run) -> dict[str, Any] | None:
    records = run.metrics("robust")
    if not records:
        return None
    latest = records[-1]
    charts = {}
    for name, relative in (latest.get("files") or {}).items():
        path = run.path / relative
        if path.suffix == ".png" and path.is_file():
            charts[name] = plots.png_data_uri(path.read_bytes())
    corruptions = latest.get("corruptions")
    severities = sorted({int(s) for v in corruptions["accuracy"].values() for s in v}) if corruptions else []
    attacks = [row for row in latest.get("attacks", []) if row["eps"] > 0]
    return {
        "latest": latest,
        "charts": charts,
        "attacks": attacks,
        "corruptions": corruptions,
        "severities": severities,
        "errors": latest.get("corruption_errors"),
        "bias": latest.get("bias"),
    }
