"""Robust accuracy under attacks and corruptions, and the corruption errors of Hendrycks & Dietterich.

Everything here takes a model on [0, 1] pixels (attacks.PixelSpaceModel) and a batch of pixel images
with labels, and returns small dataclasses; the CLI (cli/robust.py) loads the data and writes the run.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from convforge.robust.attacks import AttackSettings, PixelModel, attack_settings, run_attack
from convforge.robust.corruptions import corrupt, resolve_preset


@dataclass
class AttackRow:
    settings: AttackSettings
    images: int
    robust_accuracy: float
    seconds: float
    transfer: bool = False  # crafted on another model (the run's PyTorch model) than the one scored

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings.to_dict(), "images": self.images, "robust_accuracy": self.robust_accuracy,
                "seconds": self.seconds, "transfer": self.transfer}  # fmt: skip


@dataclass
class CorruptionTable:
    """Accuracy per corruption family and severity, with the clean accuracy on the same images."""

    preset: str
    images: int
    clean_accuracy: float
    accuracy: dict[str, dict[int, float]]
    seconds: float = 0.0

    def errors(self, family: str) -> list[float]:
        return [1.0 - a for _, a in sorted(self.accuracy[family].items())]

    def mean_accuracy(self, family: str) -> float:
        return float(np.mean(list(self.accuracy[family].values())))

    def relative_robustness(self, family: str) -> float | None:
        """Corrupted accuracy over clean accuracy (1: unaffected)."""
        return self.mean_accuracy(family) / self.clean_accuracy if self.clean_accuracy else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "images": self.images,
            "clean_accuracy": self.clean_accuracy,
            "accuracy": {f: {str(s): a for s, a in v.items()} for f, v in self.accuracy.items()},
            "mean_accuracy": {f: self.mean_accuracy(f) for f in self.accuracy},
            "relative_robustness": {f: self.relative_robustness(f) for f in self.accuracy},
            "mean_corrupted_accuracy": float(np.mean([self.mean_accuracy(f) for f in self.accuracy])),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CorruptionTable:
        accuracy = {f: {int(s): a for s, a in v.items()} for f, v in data["accuracy"].items()}
        return cls(data["preset"], data["images"], data["clean_accuracy"], accuracy, data.get("seconds", 0.0))


@dataclass
class CorruptionErrors:
    """Corruption error CE_f = sum_s E_f,s / sum_s E^base_f,s, its mean (mCE), and the relative CE
    that subtracts each model's clean error first (Hendrycks & Dietterich 2019, section 3)."""

    baseline: str
    corruption_error: dict[str, float]
    relative_corruption_error: dict[str, float | None]
    mce: float
    relative_mce: float | None
    families: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corruption_errors(table: CorruptionTable, baseline: CorruptionTable, baseline_name: str) -> CorruptionErrors:
    """CE and relative CE of `table` against `baseline` over the families and severities both have."""
    families = [f for f in table.accuracy if f in baseline.accuracy]
    ce, relative = {}, {}
    for family in families:
        severities = sorted(set(table.accuracy[family]) & set(baseline.accuracy[family]))
        error = sum(1 - table.accuracy[family][s] for s in severities)
        base = sum(1 - baseline.accuracy[family][s] for s in severities)
        ce[family] = error / base if base else float("inf")
        drop = error - len(severities) * (1 - table.clean_accuracy)
        base_drop = base - len(severities) * (1 - baseline.clean_accuracy)
        relative[family] = drop / base_drop if base_drop > 0 else None
    relatives = [v for v in relative.values() if v is not None]
    return CorruptionErrors(
        baseline=baseline_name,
        corruption_error=ce,
        relative_corruption_error=relative,
        mce=float(np.mean(list(ce.values()))) if ce else float("nan"),
        relative_mce=float(np.mean(relatives)) if len(relatives) == len(relative) and relatives else None,
        families=families,
    )


# --------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def accuracy(model: PixelModel, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += _correct(logits, labels[start : start + batch_size])
    return correct / max(len(images), 1)


def evaluate_attacks(
    source: PixelModel,
    targets: Mapping[str, PixelModel],
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: list[str],
    epsilons: list[float],
    *,
    steps: int | None = None,
    restarts: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    transfer: Collection[str] = (),
    progress=None,
) -> dict[str, list[AttackRow]]:
    """Robust accuracy of every target for every attack and epsilon (epsilon 0 is the clean accuracy).

    The adversarial images are crafted once, on `source` (it needs gradients), and every target is
    scored on the same images: the targets named in `transfer` are other models than the source (an
    exported or quantized copy, which has no gradients of its own), so their figures are transfer
    attacks and their rows say so."""
    rows: dict[str, list[AttackRow]] = {name: [] for name in targets}
    for name in attacks:
        for eps in epsilons:
            settings = attack_settings(name, eps, steps=None if name == "fgsm" else steps, restarts=restarts)
            generator = torch.Generator().manual_seed(seed)
            started, correct = time.perf_counter(), dict.fromkeys(targets, 0)
            for start in range(0, len(images), batch_size):
                batch, batch_labels = images[start : start + batch_size], labels[start : start + batch_size]
                adversarial = batch if eps == 0 else run_attack(source, batch, batch_labels, settings,
                                                                generator=generator)  # fmt: skip
                with torch.no_grad():
                    for target, model in targets.items():
                        correct[target] += _correct(model(adversarial), batch_labels)
                if progress is not None:
                    progress(len(batch))
            seconds = time.perf_counter() - started
            for target in targets:
                score = correct[target] / max(len(images), 1)
                rows[target].append(AttackRow(settings, len(images), score, seconds, target in transfer))
    return rows


@torch.no_grad()
def evaluate_corruptions(
    models: Mapping[str, PixelModel],
    images: torch.Tensor,
    labels: torch.Tensor,
    families: list[str],
    severities: list[int],
    *,
    preset: str = "auto",
    batch_size: int = 256,
    seed: int = 0,
    progress=None,
) -> dict[str, CorruptionTable]:
    """Accuracy of every model on every family at every severity. Each corrupted batch is made once and
    scored by all models; its noise is seeded per (seed, family, severity, batch), so models evaluated
    in separate calls with the same seed also see the same corrupted images."""
    started = time.perf_counter()
    preset = resolve_preset(preset, *images.shape[-2:])
    tables: dict[str, dict[str, dict[int, float]]] = {name: {} for name in models}
    for family in families:
        for severity in severities:
            correct = dict.fromkeys(models, 0)
            for b, start in enumerate(range(0, len(images), batch_size)):
                key = np.random.SeedSequence([seed, zlib.crc32(family.encode()), severity, b])
                generator = torch.Generator().manual_seed(int(key.generate_state(1)[0]))
                corrupted = corrupt(images[start : start + batch_size], family, severity, preset=preset,
                                    generator=generator)  # fmt: skip
                for name, model in models.items():
                    correct[name] += _correct(model(corrupted), labels[start : start + batch_size])
                if progress is not None:
                    progress(len(corrupted))
            for name in models:
                tables[name].setdefault(family, {})[severity] = correct[name] / max(len(images), 1)
    seconds = time.perf_counter() - started
    return {name: CorruptionTable(preset, len(images), accuracy(model, images, labels, batch_size), tables[name],
                                  seconds) for name, model in models.items()}  # fmt: skip


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(dim=1).to(labels.device) == labels).sum())


def predictions(model: PixelModel, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    with torch.no_grad():
        return torch.cat(
            [model(images[s : s + batch_size]).argmax(dim=1).cpu() for s in range(0, len(images), batch_size)]
        ).numpy()
