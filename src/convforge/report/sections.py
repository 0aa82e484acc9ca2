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
from convforge.report.compare import comparison, latest_by_model
from convforge.runs import MODEL_FILE, TORCH_MODEL, Run


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

    path = run.path / MODEL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@section("summary", "Summary", order=10)
def summary(run: Run) -> dict[str, Any]:
    info = run.info
    model = _model_description(run)
    lineage = [{"name": r.name, "path": str(r.path), "stage": r.info.get("stage")} for r in run.lineage()]
    data = info.get("data") or {}
    counts = data.get("class_counts") or {}
    classes = data.get("classes", []) if counts else []
    class_table = [{"class": name, "counts": [counts[split][i] for split in counts]} for i, name in enumerate(classes)]
    return {
        "info": info,
        "model": model,
        "lineage": lineage,
        "test": info.get("test"),
        "data": data,
        "class_splits": list(counts),
        "class_table": class_table,
        "resumes": info.get("resumes", []),
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
    config = run.info.get("config") or {}
    return {
        "hyperparameters": sorted((k, v) for k, v in config.items() if k != "data"),
        "step_chart": _step_chart(run.metrics("step")),
        "augmented_grid": _augmented_grid(run),
        "loss_chart": plots.line_chart(loss, "loss", "cross-entropy"),
        "accuracy_chart": plots.line_chart(accuracy, "accuracy", "top-1"),
        "lr_chart": plots.line_chart(
            {"lr": (x, [r["lr"] for r in epochs])}, "learning rate (end of epoch)", "lr"
        ),
        "epochs": epochs,
        "images_per_second": float(np.median([r["images_per_second"] for r in epochs])),
        "seeds": seeds[-1] if seeds else None,
    }


def _step_chart(steps: list[dict[str, Any]]) -> str | None:
    """Loss and accuracy every few steps, against fractional epochs. Each point is the mean of a window
    of steps, placed at the window's middle (at its end the curve would lag the training by half a window)."""
    if len(steps) < 2:
        return None
    last_step: dict[int, int] = {}
    for record in steps:
        last_step[record["epoch"]] = max(last_step.get(record["epoch"], 0), record["step"])
    x = [r["epoch"] - 1 + (r["step"] - r["steps"] / 2) / last_step[r["epoch"]] for r in steps]
    return plots.line_chart(
        {"train loss": (x, [r["loss"] for r in steps]), "train accuracy": (x, [r["acc"] for r in steps])},
        f"training curve ({len(steps)} points, each the mean of the steps since the last)",
        "loss / accuracy",
        markers=False,
    )


def _augmented_grid(run: Run) -> str | None:
    from convforge.run_samples import load_augmented_samples

    samples = load_augmented_samples(run)
    classes = (run.info.get("data") or {}).get("classes")
    if samples is None or not classes:
        return None
    captions = [classes[int(label)] for label in samples["labels"]]
    return plots.image_grid(samples["images"], captions, ["#444"] * len(captions))


def class_metrics(confusion: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Precision, recall and F1 per class from a confusion matrix (rows true, columns predicted);
    None where a class has no true image (recall) or was never predicted (precision)."""
    true_positive = np.diag(confusion).astype(np.float64)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    rows = []
    for i, name in enumerate(classes):
        precision = true_positive[i] / predicted[i] if predicted[i] else None
        recall = true_positive[i] / support[i] if support[i] else None
        if precision is None or recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(support[i])})
    return rows


def confused_pairs(confusion: np.ndarray, classes: list[str], count: int = 5) -> list[dict[str, Any]]:
    """The most frequent mistakes: (true class, predicted class, images, share of the true class)."""
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:count]
    support = confusion.sum(axis=1)
    pairs = []
    for flat in order:
        true, predicted = np.unravel_index(flat, confusion.shape)
        if off_diagonal[true, predicted] == 0:
            break
        images = int(off_diagonal[true, predicted])
        pairs.append({"true": classes[true], "predicted": classes[predicted], "images": images,
                      "share": images / support[true]})  # fmt: skip
    return pairs


@section("evaluation", "Evaluation", order=30)
def evaluation(run: Run) -> dict[str, Any] | None:
    """The latest evaluation on the split of the Summary's test figure (an `eval --split val` does not
    replace it); every evaluation stays in the history."""
    evals = run.metrics("eval")
    if not evals:
        return None
    headline = (run.info.get("test") or {}).get("split")
    latest = [r for r in evals if headline is None or r.get("split") == headline][-1:] or evals[-1:]
    latest = latest[0]
    confusion = np.asarray(latest["confusion"], dtype=np.int64)
    per_class = {k: v for k, v in latest["per_class"].items() if v is not None}
    calibration = latest.get("calibration")
    return {
        "class_metrics": class_metrics(confusion, latest["classes"]),
        "confused_pairs": confused_pairs(confusion, latest["classes"]),
        "calibration": calibration,
        "reliability_chart": plots.reliability_diagram(calibration["bins"]) if calibration else None,
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
    from convforge.run_samples import load_prediction_samples

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
    for method, relative in (latest.get("grids") or {}).items():
        path = run.recorded_artifact(relative)
        if path is not None:
            grids.append({"method": method, "uri": plots.png_data_uri(path.read_bytes())})
    return {"latest": latest, "methods": latest["methods"], "grids": grids, "random_map": latest.get("random_map")}


@section("robustness", "Robustness", order=60)
def robustness(run: Run) -> dict[str, Any] | None:
    """The PyTorch model's latest card (exported models' cards are compared under Deployment)."""
    latest = latest_by_model(run.metrics("robust")).get(TORCH_MODEL)
    if latest is None:
        return None
    charts = {}
    for name, relative in (latest.get("files") or {}).items():
        path = run.recorded_artifact(relative)
        if path is not None and path.suffix == ".png":
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


@section("deployment", "Deployment", order=70)
def deployment(run: Run) -> dict[str, Any] | None:
    """The latest export (parity), quantization (fp32 against INT8) and bench (backend x batch), and
    accuracy against throughput for each backend that has both."""
    export, quantize, bench = (next(iter(run.metrics(kind)[-1:]), None) for kind in ("export", "quantize", "bench"))
    cards = latest_by_model(run.metrics("robust"))
    robust = comparison(cards) if len(cards) > 1 else []
    if not (export or quantize or bench or robust):
        return None
    accuracy = {"torch": (run.info.get("test") or {}).get("top1")}
    if quantize:
        accuracy.update({"ort": quantize["fp32_top1"], "ort-int8": quantize["int8_top1"]})
    rows = [row for row in (bench or {}).get("rows", []) if not row.get("unavailable")]
    largest = max((row["batch"] for row in rows), default=None)
    points = [(row["backend"], row["images_per_second"], accuracy[row["backend"]]) for row in rows
              if row["batch"] == largest and accuracy.get(row["backend"]) is not None]  # fmt: skip
    chart = plots.scatter_chart(points, f"images per second at batch {largest}", "top-1") if len(points) > 1 else None
    return {"export": export, "quantize": quantize, "bench": bench, "rows": (bench or {}).get("rows", []),
            "chart": chart, "robust": robust, "robust_cards": cards if robust else {}}  # fmt: skip
