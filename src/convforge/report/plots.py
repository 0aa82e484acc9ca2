"""Matplotlib figures rendered to embedded PNG data URIs (the report is one self-contained file)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def figure_to_png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def figure_to_data_uri(figure: plt.Figure) -> str:
    return png_data_uri(figure_to_png(figure))


def line_chart(
    series: dict[str, tuple[list[float], list[float]]], title: str, ylabel: str, markers: bool = True,
    xlabel: str = "epoch",
) -> str:
    """Several (x, y) series on one axis, x in epochs unless `xlabel` says otherwise."""
    figure, axis = plt.subplots(figsize=(5.2, 3.2))
    for label, (x, y) in series.items():
        axis.plot(x, y, marker="o" if markers else None, markersize=3, label=label)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    if xlabel == "epoch":
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if len(series) > 1:
        axis.legend()
    return figure_to_data_uri(figure)


def confusion_matrix_chart(confusion: np.ndarray, classes: list[str]) -> str:
    """Row-normalised confusion matrix with counts, readable up to a few dozen classes."""
    n = len(classes)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    size = min(12.0, 2.5 + 0.45 * n)
    figure, axis = plt.subplots(figsize=(size, size * 0.9))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if n <= 40:
        axis.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
        axis.set_yticks(range(n), classes, fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    axis.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7, color=color)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of true class")
    return figure_to_data_uri(figure)


def reliability_diagram(bins: list[dict]) -> str:
    """Accuracy against confidence per bin (Guo et al. 2017); the diagonal is perfect calibration,
    bars below it are overconfidence. Bar labels count the images in each bin."""
    figure, axis = plt.subplots(figsize=(4.2, 4.0))
    axis.plot([0, 1], [0, 1], linestyle="--", color="#888", linewidth=1, label="perfectly calibrated")
    for row in bins:
        width = row["upper"] - row["lower"]
        axis.bar(row["lower"], row["accuracy"], width=width, align="edge", color="#4c78a8", edgecolor="white")
        axis.plot(row["lower"] + width / 2, row["confidence"], "o", color="#e45756", markersize=3)
        axis.text(row["lower"] + width / 2, row["accuracy"] + 0.01, str(row["count"]), ha="center", fontsize=6)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.08)
    axis.set_xlabel("confidence (red: mean in bin)")
    axis.set_ylabel("accuracy")
    axis.set_title("reliability diagram")
    axis.legend(loc="upper left", fontsize=7)
    return figure_to_data_uri(figure)


def bar_chart(labels: list[str], values: list[float], title: str, xlabel: str) -> str:
    """Horizontal bars, lowest value on top (the weakest classes are what one looks for)."""
    order = np.argsort(values)
    height = min(14.0, 1.2 + 0.28 * len(labels))
    figure, axis = plt.subplots(figsize=(5.2, height))
    axis.barh([labels[i] for i in order][::-1], [values[i] for i in order][::-1], color="#4c78a8")
    axis.set_xlim(0, 1)
    axis.set_xlabel(xlabel)
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    return figure_to_data_uri(figure)


def image_grid(images: np.ndarray, captions: list[str], colors: list[str], columns: int = 8) -> str:
    """uint8 NHWC images in a grid, each with a coloured caption, as a data URI."""
    return figure_to_data_uri(image_grid_figure(images, captions, colors, columns))


def image_grid_figure(images: np.ndarray, captions: list[str], colors: list[str], columns: int = 8) -> plt.Figure:
    """uint8 NHWC images in a grid, each with a coloured caption (no wider than the images need)."""
    columns = max(1, min(columns, len(images)))
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.75), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption, color in zip(axes.flat, images, captions, colors, strict=False):
        axis.imshow(
            image.squeeze(-1) if image.shape[-1] == 1 else image,
            cmap="gray" if image.shape[-1] == 1 else None,
        )
        axis.set_title(caption, fontsize=7, color=color)
    figure.tight_layout()
    return figure


def scatter_chart(points: list[tuple[str, float, float]], xlabel: str, ylabel: str) -> str:
    """Labelled points (label, x, y): accuracy against speed for each way of running a model."""
    figure, axis = plt.subplots(figsize=(5.2, 3.4))
    for label, x, y in points:
        axis.scatter([x], [y], s=40)
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    return figure_to_data_uri(figure)
