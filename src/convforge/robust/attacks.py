"""Adversarial attacks in [0, 1] pixel space: FGSM, PGD (L-inf and L2) and APGD-CE.

Papers: FGSM, Goodfellow et al. 2015 (arXiv:1412.6572); PGD, Madry et al. 2018 (arXiv:1706.06083);
APGD-CE, Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (arXiv:2003.01690, official code: fra31/auto-attack).

Why not torchattacks: it has not been maintained since 2023, applies normalisation only when the
user remembers to set it, and runs every sample for every step. Here every attack takes a model on
raw pixels (`PixelSpaceModel` applies the model's own mean/std inside, so normalisation cannot be
got wrong), works on whole batches on the model's device, and with `early_stop` drops a sample from
the batch as soon as it is fooled (its successful image is kept), so later steps cost less.
tests/robust/test_attacks.py shows FGSM and PGD without random start equal torchattacks' images.

This module needs torch only: the training engine imports it for adversarial training.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convforge.errors import ConfigError, UserError, did_you_mean

ATTACKS = ("fgsm", "pgd", "pgd-l2", "apgd", "apgd-l2")
NORMS = ("linf", "l2")
PixelModel = Callable[[torch.Tensor], torch.Tensor]


class PixelSpaceModel(nn.Module):
    """`model` on raw [0, 1] images: subtracts the model's mean and divides by its std inside, and
    checks that the output is (batch, classes) logits."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return check_logits(self.model((images - mean) / std), len(images))


def check_logits(output: Any, batch: int) -> torch.Tensor:
    """The model's output as (batch, classes) logits, or a UserError that says what came back."""
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[0] != batch:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise UserError(
            f"attacks need a classifier that returns (batch, classes) logits; this model returned {shape} "
            f"for a batch of {batch}. Wrap it so that forward() returns the logits"
        )
    return output


# ---------------------------------------------------------------------------------- options
def parse_epsilon(text: str | float, norm: str = "linf") -> float:
    """An attack budget given as a fraction of the pixel range: '8/255' or '0.031' (or a float).

    L-inf budgets live in [0, 1): a budget of 1 or more lets the attack paint any image. A value
    above 1 is most likely pixel units, and the message says so."""
    if isinstance(text, int | float):
        value, shown = float(text), str(text)
    else:
        shown = text.strip()
        try:
            value = float(Fraction(shown)) if "/" in shown else float(shown)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"cannot read epsilon {text!r}; give it like 8/255 or 0.031") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"epsilon must be a non-negative number, got {shown}")
    if norm == "linf" and value >= 1:
        hint = f" (in pixel units? then write {shown}/255)" if value > 1 else ""
        raise ConfigError(
            f"L-inf epsilon {shown} is the whole pixel range{hint}; budgets are fractions of [0, 1], like 8/255"
        )
    return value


def parse_epsilons(text: str, norm: str = "linf") -> list[float]:
    values = [parse_epsilon(part, norm) for part in text.split(",") if part.strip()]
    if not values:
        raise ConfigError("give at least one epsilon, like --eps 2/255,8/255")
    return sorted(set(values))


def check_attack_name(name: str) -> str:
    name = name.strip().lower()
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}.{did_you_mean(name, ATTACKS)}")
    return name


@dataclass(frozen=True)
class AttackSettings:
    """Everything that defines an attack run, written next to every robust-accuracy figure."""

    name: str
    norm: str
    eps: float
    steps: int
    step_size: float
    random_start: bool
    restarts: int
    targeted: bool
    early_stop: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attack_settings(
    name: str,
    eps: float,
    *,
    steps: int | None = None,
    step_size: float | None = None,
    random_start: bool | None = None,
    restarts: int = 1,
    targeted: bool = False,
    early_stop: bool = True,
) -> AttackSettings:
    """The settings of a named attack with the usual defaults filled in: PGD takes 10 steps of
    2.5 eps / steps (Madry et al.) from a random start; APGD 100 steps (Croce & Hein)."""
    name = check_attack_name(name)
    norm = "l2" if name.endswith("-l2") else "linf"
    if name == "fgsm":
        steps, step_size, random_start = 1, eps if step_size is None else step_size, bool(random_start)
    elif name.startswith("pgd"):
        steps = 10 if steps is None else steps
        step_size = 2.5 * eps / steps if step_size is None else step_size
        random_start = True if random_start is None else random_start
    else:
        steps = 100 if steps is None else steps
        step_size, random_start = 2 * eps, True  # APGD's initial step; it adapts per sample
    if steps < 1 or restarts < 1:
        raise ConfigError(f"steps and restarts must be at least 1, got {steps} and {restarts}")
    return AttackSettings(name, norm, eps, steps, step_size, random_start, restarts, targeted, early_stop)


def run_attack(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: AttackSettings,
    *,
    targets: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial images for `settings` (see `attack_settings`)."""
    if settings.targeted and targets is None:
        raise ConfigError("a targeted attack needs target classes (see target_classes)")
    common = {"targets": targets if settings.targeted else None, "generator": generator}
    if settings.name.startswith("apgd"):
        return apgd(
            model, images, labels, settings.eps, norm=settings.norm, steps=settings.steps,
            restarts=settings.restarts, early_stop=settings.early_stop, **common,
        )  # fmt: skip
    return pgd(
        model, images, labels, settings.eps, norm=settings.norm, steps=settings.steps,
        step_size=settings.step_size, random_start=settings.random_start, restarts=settings.restarts,
        early_stop=settings.early_stop, **common,
    )  # fmt: skip


def target_classes(
    logits: torch.Tensor, labels: torch.Tensor, mode: str = "random", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Targets for a targeted attack: a random other class, or the least likely one."""
    if mode == "least-likely":
        masked = logits.detach().clone()
        masked[torch.arange(len(labels)), labels] = math.inf
        return masked.argmin(dim=1)
    if mode != "random":
        raise ConfigError(f"target mode must be random or least-likely, got {mode!r}")
    classes = logits.shape[1]
    offset = torch.randint(1, classes, labels.shape, generator=generator, device="cpu").to(labels.device)
    return (labels + offset) % classes


# ------------------------------------------------------------------------------------ attacks
def fgsm(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """One signed-gradient step of size eps (Goodfellow et al. 2015)."""
    return pgd(model, images, labels, eps, steps=1, step_size=eps, random_start=False, targets=targets,
               early_stop=False)  # fmt: skip


def pgd(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targets: torch.Tensor | None = None,
    early_stop: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy (Madry et al. 2018) under L-inf or L2.

    Each restart attacks only the samples that earlier restarts did not fool. With `early_stop`, a
    sample leaves the batch at the first step its image is misclassified (or, targeted, classified
    as its target), and that image is what it returns."""
    _check_inputs(images, labels, eps, norm, targets)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    if restarts == 1:
        return _pgd_once(model, images, labels, targets, eps, norm, steps, step_size, random_start, early_stop,
                         generator)[0]  # fmt: skip
    return _restarted(
        lambda x, y, t: _pgd_once(model, x, y, t, eps, norm, steps, step_size, random_start, True, generator),
        images, labels, targets, restarts,
    )  # fmt: skip


def _restarted(attack_once, images, labels, targets, restarts: int) -> torch.Tensor:
    """Run `attack_once(images, labels, targets) -> (adversarial, fooled)` up to `restarts` times, each
    time on the samples no earlier run fooled."""
    result = images.detach().clone()
    remaining = torch.arange(len(images), device=images.device)
    for _ in range(restarts):
        adversarial, fooled = attack_once(
            images[remaining], labels[remaining], None if targets is None else targets[remaining]
        )
        result[remaining] = adversarial
        remaining = remaining[~fooled]
        if not len(remaining):
            break
    return result


def _pgd_once(model, images, labels, targets, eps, norm, steps, step_size, random_start, early_stop, generator):
    """One PGD run; returns the images and which samples were seen fooled."""
    natural, x = images.detach(), images.detach().clone()
    if random_start and eps > 0:
        x = project(x + random_delta(x, eps, norm, generator), natural, eps, norm)
    out, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    active = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        _, grad, logits = _loss_and_grad(model, x, labels, targets)
        with torch.no_grad():
            if early_stop:
                success = _succeeded(logits, labels, targets)
                if success.any():
                    out[active[success]], fooled[active[success]] = x[success], True
                    keep = ~success
                    active, x, grad, natural, labels = active[keep], x[keep], grad[keep], natural[keep], labels[keep]
                    targets = None if targets is None else targets[keep]
                    if not len(active):
                        return out, fooled
            x = project(x + step_size * _ascent_direction(grad, norm), natural, eps, norm)
    out[active] = x
    return out, fooled


def apgd(
    model: PixelModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    momentum: float = 0.75,
    targets: torch.Tensor | None = None,
    early_stop: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """APGD-CE (Croce & Hein 2020, Algorithm 1): PGD with momentum 0.75 and a per-sample step size
    that starts at 2 eps and halves at checkpoints p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
    max(p_j - p_{j-1} - 0.03, 0.06) when the loss rose in fewer than rho of the steps since the last
    checkpoint, or when the step size was not halved last time and the best loss did not improve;
    a halving restarts from the best point. Returns the misclassified iterate where there was one,
    else the point of highest loss."""
    _check_inputs(images, labels, eps, norm, targets)
    return _restarted(
        lambda x, y, t: _apgd_once(model, x, y, t, eps, norm, steps, rho, momentum, early_stop, generator),
        images, labels, targets, restarts,
    )  # fmt: skip


def _apgd_once(model, images, labels, targets, eps, norm, steps, rho, momentum, early_stop, generator):
    checkpoints = apgd_checkpoints(steps)
    natural = images.detach()
    x = project(natural + _apgd_start(natural, eps, norm, generator), natural, eps, norm)
    loss, grad, logits = _loss_and_grad(model, x, labels, targets)
    n = len(x)
    state = {
        "natural": natural, "labels": labels, "x": x, "x_previous": x.clone(), "grad": grad,
        "x_best": x.clone(), "grad_best": grad.clone(), "loss_best": loss.clone(),
        "loss_best_at_check": loss.clone(), "halved_at_check": torch.ones(n, dtype=torch.bool, device=x.device),
        "increases": torch.zeros(n, device=x.device), "loss_previous": loss.clone(),
        "step_size": torch.full((n,), 2.0 * eps, device=x.device),
    }  # fmt: skip
    if targets is not None:
        state["targets"] = targets
    out, fooled = x.clone(), _succeeded(logits, labels, targets)
    out[fooled] = x[fooled]
    active = torch.arange(n, device=x.device)
    if early_stop:
        active, state = _drop(active, state, ~fooled)
    last_check = 0
    for i in range(steps):
        if not len(active):
            break
        with torch.no_grad():
            x, x_previous = state["x"], state["x_previous"]
            size = state["step_size"].view(-1, *[1] * (x.ndim - 1))
            z = project(x + size * _ascent_direction(state["grad"], norm), state["natural"], eps, norm)
            weight = momentum if i > 0 else 1.0
            x_next = project(x + weight * (z - x) + (1 - weight) * (x - x_previous), state["natural"], eps, norm)
            state["x_previous"] = x
        loss, grad, logits = _loss_and_grad(model, x_next, state["labels"], state.get("targets"))
        with torch.no_grad():
            state["x"], state["grad"] = x_next, grad
            success = _succeeded(logits, state["labels"], state.get("targets"))
            out[active[success]], fooled[active[success]] = x_next[success], True
            improved = loss > state["loss_best"]
            state["x_best"][improved], state["grad_best"][improved] = x_next[improved], grad[improved]
            state["loss_best"] = torch.where(improved, loss, state["loss_best"])
            state["increases"] += (loss > state["loss_previous"]).float()
            state["loss_previous"] = loss
            if i + 1 in checkpoints[1:]:
                since = i + 1 - last_check
                oscillating = state["increases"] <= since * rho
                stalled = ~state["halved_at_check"] & (state["loss_best_at_check"] >= state["loss_best"])
                halve = oscillating | stalled
                state["halved_at_check"], state["loss_best_at_check"] = halve, state["loss_best"].clone()
                state["step_size"] = torch.where(halve, state["step_size"] / 2, state["step_size"])
                state["x"][halve], state["grad"][halve] = state["x_best"][halve], state["grad_best"][halve]
                state["increases"].zero_()
                last_check = i + 1
            if early_stop and success.any():
                active, state = _drop(active, state, ~success)
    best = ~fooled
    out[active[best[active]]] = state["x_best"][best[active]]
    return out, fooled


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD checks its step size: ceil(p_j * steps) for the paper's p_j."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(v * steps - 1e-9) for v in p if v <= 1})  # 1e-9: 0.41 + 0.16 is 0.5700...01


def _drop(active: torch.Tensor, state: dict[str, torch.Tensor], keep: torch.Tensor):
    return active[keep], {name: value[keep] for name, value in state.items()}


def _apgd_start(natural: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    """The official start: a random direction scaled to the boundary of the ball."""
    shape = (len(natural), *[1] * (natural.ndim - 1))
    if norm == "linf":
        t = 2 * torch.rand(natural.shape, generator=generator, device="cpu").to(natural) - 1
        return eps * t / t.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(shape)
    t = torch.randn(natural.shape, generator=generator, device="cpu").to(natural)
    return eps * t / t.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)


# ------------------------------------------------------------------------------------ pieces
def _check_inputs(images, labels, eps, norm, targets) -> None:
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")
    if not images.is_floating_point():
        raise UserError(f"attacks take float images in [0, 1], got {images.dtype}; divide uint8 pixels by 255")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise UserError(
            f"attacks take raw images in [0, 1] (the model's normalisation is applied inside "
            f"PixelSpaceModel); these range over [{low:.3g}, {high:.3g}]. Pass the images before normalising"
        )
    if eps < 0 or (norm == "linf" and eps >= 1):
        raise ConfigError(f"epsilon {eps} is outside [0, 1) for L-inf" if norm == "linf" else "epsilon must be >= 0")
    if norm == "l2" and eps > math.sqrt(images[0].numel()):
        diameter = math.sqrt(images[0].numel())
        raise ConfigError(f"L2 epsilon {eps} is larger than the whole image cube (diameter {diameter:.1f})")
    if len(labels) != len(images) or (targets is not None and len(targets) != len(images)):
        raise UserError(f"{len(images)} images but {len(labels)} labels")


def _objective(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss the attack ascends: CE to the label, or minus CE to the target."""
    if targets is None:
        return F.cross_entropy(logits.float(), labels, reduction="none")
    return -F.cross_entropy(logits.float(), targets, reduction="none")


def _succeeded(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    predicted = logits.argmax(dim=1)
    return predicted != labels if targets is None else predicted == targets


def _loss_and_grad(model, x, labels, targets):
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = _objective(logits, labels, targets)
    # The mean (not the sum) only scales the gradient, and every step uses its sign or its direction;
    # it rounds exactly as torchattacks does, so the two agree where a gradient is nearly zero.
    (grad,) = torch.autograd.grad(loss.mean(), x)
    return loss.detach(), grad.detach(), logits.detach()


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    shape = (len(grad), *[1] * (grad.ndim - 1))
    return grad / (grad.flatten(1).norm(dim=1).view(shape) + 1e-12)


def project(x: torch.Tensor, natural: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Into the eps-ball around `natural`, then into [0, 1]."""
    delta = x - natural
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        shape = (len(delta), *[1] * (delta.ndim - 1))
        norms = delta.flatten(1).norm(dim=1).view(shape)
        delta = delta * torch.clamp(eps / (norms + 1e-12), max=1.0)
    return (natural + delta).clamp(0, 1)


def random_delta(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random start: uniform in the L-inf box, or a uniform radius along a random L2 direction
    (the same start as torchattacks' PGDL2)."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device="cpu").to(x)
    shape = (len(x), *[1] * (x.ndim - 1))
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
    radius = torch.rand(shape, generator=generator, device="cpu").to(x) * eps
    return direction * radius
