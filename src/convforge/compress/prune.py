"""Structured pruning: whole channels removed through Torch-Pruning's dependency graph, to a target share
of parameters or MACs kept, or to a measured latency speed-up on this machine.

Torch-Pruning finds which layers must lose the same channels (residual additions, depthwise and grouped
convolutions, concatenations) and narrows them together; convforge chooses the criterion, steps the
pruner until the target holds, measures each step (for a speed-up target, the candidate timed
interleaved with the unpruned model at each batch size, `measure.paired`: FLOPs do not say what a
layout or a kernel choice costs, and two models timed a second apart compare two moments of a shared
machine), and keeps the classifier's outputs. A speed-up counts as reached only when the lower end of
its 95% interval clears the goal at every batch size, in the search and again in a final, longer
paired measurement of the kept model (`PruneResult.confirmed`), which is the figure reported. The pruned
model is an ordinary module with narrower layers: `checkpoint.save_model` records every tensor's
shape, and `load_model` rebuilds the architecture resized to them (models/resize.py), so a pruned run
loads without pickle like any other.

Criteria (`--criterion`): `l1` and `l2` (group magnitude of the weights, Torch-Pruning's default is l2),
`bn` (the BatchNorm scale |gamma| of each channel), `taylor` (first-order Taylor: |weight x gradient|,
from the loss on a batch of training images), `lrp` (LRP relevance of each convolution's output
channels on a reference batch of training images, recomputed before every step, normalised per layer
and ranked globally as "Pruning by Explaining" does: compress/lrp.py), `synflow` (data-free SynFlow
saliency, recomputed before every step and ranked globally: compress/synflow.py; what PreCropping
uses at initialisation). The others rank within each layer group, so every layer keeps the same share.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convforge.errors import ConfigError, UserError, did_you_mean
from convforge.measure.cost import measure_latency
from convforge.measure.counting import count_macs, count_params
from convforge.measure.paired import Ratio, paired_speedup
from convforge.models.factory import model_file_hook
from convforge.models.resize import sync_block_widths

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "bn", "taylor", "lrp", "synflow")
NEEDS_DATA = ("taylor", "lrp")  # criteria computed from a batch of training images
RANKED_GLOBALLY = ("lrp", "synflow")  # as their papers do; the others keep every layer's share equal
MAX_STEPS = 40  # the pruner reaches its largest ratio in this many equal steps; the target stops it earlier
MAX_RATIO = 0.95  # never remove more than this share of a layer's channels
CONFIRM_BUDGET = 3  # the final paired measurement takes this many times a search step's time budget
# The search stops once a step clears the speed-up goal by this factor (at the interval's lower end): the
# final measurement of the saved child differs from the search's by a percent or two (the demo's search
# cleared 1.5x at batch 1 and its saved child measured 1.492x, interval 1.488-1.495)
SEARCH_MARGIN = 1.03


@dataclass
class PruneStep:
    step: int
    params: int
    macs: int
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch -> p50, for a speed-up target
    speedup: dict[int, Ratio] = field(default_factory=dict)  # batch -> against the unpruned model, interleaved


@dataclass
class PruneResult:
    criterion: str
    target: str  # params, macs or speedup
    goal: float  # the share of params/MACs to keep, or the speed-up to reach
    round_to: int | None
    before: PruneStep
    steps: list[PruneStep] = field(default_factory=list)  # every step taken, the kept one and any after it
    notes: list[str] = field(default_factory=list)  # what the criterion could not treat exactly, and why
    kept: int | None = None  # index into steps of the model kept: the last, or the fastest if the target failed
    confirmed: dict[int, Ratio] | None = None  # batch -> the final paired measurement of the kept model

    @property
    def after(self) -> PruneStep:
        if not self.steps:
            return self.before
        return self.steps[-1 if self.kept is None else self.kept]

    @property
    def speedup(self) -> dict[int, Ratio]:
        """batch -> the kept model's speed-up: the final paired measurement once taken, else its step's."""
        return self.confirmed if self.confirmed is not None else self.after.speedup

    @property
    def achieved(self) -> float:
        """The share of params/MACs that remains, or the median speed-up (the slowest batch size's)."""
        if self.target == "speedup":
            return slowest(self.speedup)
        return getattr(self.after, self.target) / max(getattr(self.before, self.target), 1)

    @property
    def reached(self) -> bool:
        if self.target == "speedup":
            return bool(self.speedup) and all(ratio.holds(self.goal) for ratio in self.speedup.values())
        return self.achieved <= self.goal

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "achieved": self.achieved, "reached": self.reached, "after": asdict(self.after)}


def slowest(speedup: dict[int, Ratio]) -> float:
    """The median speed-up of the batch size that gained least (1.0 when nothing was timed)."""
    return min((ratio.median for ratio in speedup.values()), default=1.0)


def check_criterion(name: str) -> str:
    if name not in CRITERIA:
        hint = did_you_mean(name, CRITERIA)
        raise ConfigError(f"unknown criterion {name!r}.{hint} Choose from {', '.join(CRITERIA)}")
    return name


def check_target(params: float | None, macs: float | None, speedup: float | None = None) -> tuple[str, float]:
    """(`params`, `macs` or `speedup`, its value) from the options, exactly one of which is given."""
    given = [(n, v) for n, v in (("params", params), ("macs", macs), ("speedup", speedup)) if v is not None]
    if len(given) != 1:
        raise ConfigError("give one target: --params 0.5 or --macs 0.5 (the share to keep), or --speedup 2.0")
    name, value = given[0]
    if name == "speedup" and not value > 1:
        raise ConfigError(f"--speedup is how many times faster the pruned model must be: more than 1, got {value:g}")
    if name != "speedup" and not 0 < value < 1:
        raise ConfigError(f"--{name} is the share to keep, between 0 and 1 (exclusive); got {value:g}")
    return name, value


def prune_model(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    criterion: str = "l2",
    target: str = "macs",
    goal: float = 0.5,
    round_to: int | None = 8,
    architecture: str | None = None,
    data_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
    latency_batches: tuple[int, ...] = (1, 64),
    latency_seconds: float = 0.5,
    timed_as: Callable[[nn.Module], nn.Module] | None = None,
    on_step: Callable[[PruneStep], None] | None = None,
    confirm: bool = True,
) -> PruneResult:
    """Prune `model` in place, in steps of 1/MAX_STEPS of the largest ratio, until at most `goal` of its
    params or MACs (at `input_size`) remains, or until it runs `goal` times faster than before at every
    batch size of `latency_batches` (measured after each step). Channel counts stay multiples of
    `round_to`. A target that cannot be reached stops at the largest ratio: `reached` says so, and the
    model is the most pruned one (params, MACs) or the fastest one measured (speed-up; steps after it
    stay in `steps` as what was tried). `data_batch` (normalised training images, labels) is
    needed by the taylor and lrp criteria. `timed_as` gives the form of the model that is timed (folded,
    for a child saved folded), the same before pruning and after each step. Each step is timed interleaved
    with the unpruned model; with `confirm`, the kept model is timed against it once more, for three times
    as long, and that measurement (`confirmed`) decides `reached` (prune_run confirms the saved child
    itself, after fine-tuning and folding)."""
    import torch_pruning as tp

    check_criterion(criterion)
    if criterion in NEEDS_DATA and data_batch is None:
        raise ConfigError(f"the {criterion} criterion needs a batch of training images and their labels")
    model.eval()
    example = torch.zeros(1, *input_size, device=next(model.parameters()).device)
    timed = latency_batches if target == "speedup" else ()

    def form() -> nn.Module:
        return (timed_as(model) if timed_as is not None else model).eval()

    def measured(step: int) -> PruneStep:
        counts = count_params(model), count_macs(model, input_size)
        if not timed:
            return PruneStep(step, *counts)
        if step == 0:  # the unpruned model alone, for the report's search chart
            latency = {b: measure_latency(reference, input_size, b, budget_seconds=latency_seconds).p50_ms
                       for b in timed}  # fmt: skip
            return PruneStep(step, *counts, latency)
        _, latency, ratios = paired_speedup(reference, form(), input_size, timed, 2 * latency_seconds)
        return PruneStep(step, *counts, latency, ratios)

    try:
        # the unpruned model in the form that is timed: every step is timed interleaved with it
        reference = copy.deepcopy(form()) if timed else None
        result = PruneResult(criterion, target, goal, round_to, measured(0))  # the model's first forward pass
    except Exception as exc:  # noqa: BLE001 - a model failing on its own input size fails in any way
        raise UserError(f"the model fails on a {tuple(input_size)} input{_at_fault(model, example)} "
                        f"({type(exc).__name__}: {str(exc)[:200]})") from None  # fmt: skip
    importance, prepare = _criterion(criterion, model, data_batch, input_size, result.notes)
    hook = model_file_hook(architecture, "unwrapped_parameters") if architecture else None
    protected = _protected(model, architecture, result.notes)
    try:
        with _out_of_place(model):
            pruner = tp.pruner.MetaPruner(
                model, example, importance=importance, pruning_ratio=MAX_RATIO, max_pruning_ratio=MAX_RATIO,
                iterative_steps=MAX_STEPS, ignored_layers=classifier_layers(model) + protected, round_to=round_to,
                global_pruning=criterion in RANKED_GLOBALLY, iterative_pruning_ratio_scheduler=_schedule(criterion),
                unwrapped_parameters=hook(model) if hook else None,
            )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - tracing failures come as many types
        raise UserError(f"Torch-Pruning cannot trace this model{_at_fault(model, example)} "
                        f"({type(exc).__name__}: {str(exc)[:200]})") from None  # fmt: skip
    fastest = (1.0, None)  # the best speed-up measured and a copy of that model, for a target never reached
    for step in range(1, MAX_STEPS + 1):
        if prepare is not None:
            prepare()
        try:
            pruner.step()
            sync_block_widths(model)
            result.steps.append(measured(step))  # runs the pruned model: a missed channel coupling fails here
        except Exception as exc:  # noqa: BLE001 - shape errors come as many types
            where = _pruned_at(model, exc) or _at_fault(model, example)
            raise UserError(
                f"pruning {architecture or type(model).__name__} failed or broke its forward pass{where} "
                f"({type(exc).__name__}: {str(exc)[:200]}): Torch-Pruning's dependency graph misses a channel "
                "coupling in it (a split or a per-channel buffer), so it cannot be pruned yet"
            ) from None
        if on_step is not None:
            on_step(result.steps[-1])
        done = result.steps[-1]  # said as it goes: a search takes minutes, and a log or a pipe shows no bar
        log.info("pruning step %d: %.1f%% of the parameters, %.1f%% of the MACs%s", step,
                 100 * done.params / result.before.params, 100 * done.macs / result.before.macs,
                 "".join(f"; batch {b}: {r.text()}" for b, r in done.speedup.items()))  # fmt: skip
        searched = result.steps[-1].speedup.values()
        if result.reached if target != "speedup" else all(r.holds(goal * SEARCH_MARGIN) for r in searched):
            break
        if target == "speedup" and slowest(result.steps[-1].speedup) > fastest[0]:
            fastest = (slowest(result.steps[-1].speedup), (len(result.steps) - 1, copy.deepcopy(model)))
    if not result.reached and fastest[1] is not None and fastest[1][0] != len(result.steps) - 1:
        result.kept, best = fastest[1]
        model.__dict__.update(best.__dict__)  # in place, as promised: the layers and widths of the fastest step
    model.zero_grad(set_to_none=True)
    if timed and confirm:
        # the figure reported: a longer paired measurement of the kept model; it can contradict a lucky step
        # of the search (then `reached` is False)
        *_, result.confirmed = paired_speedup(reference, form(), input_size, timed,
                                              2 * CONFIRM_BUDGET * latency_seconds)  # fmt: skip
    return result


@contextlib.contextmanager
def _out_of_place(model: nn.Module) -> Iterator[None]:
    """Activations computed out of place while Torch-Pruning traces the model. The trace maps each layer to
    its output's autograd node; an in-place activation on a view rewrites that node (CopySlices), and
    F.instance_norm returns a view, so without this IBN-Net-b's InstanceNorms drop out of the graph and keep
    their widths while the channels around them are pruned. The function is the same either way."""
    switched = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for module in switched:
        module.inplace = False
    try:
        yield
    finally:
        for module in switched:
            module.inplace = True


def _pruned_at(model: nn.Module, exc: BaseException) -> str:
    """' in NAME (Class)': the module of `model` that Torch-Pruning's innermost failing frame was pruning
    (its pruning functions name it `layer`), or ''."""
    names = {module: name for name, module in model.named_modules()}
    frames = []
    traceback = exc.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):
        layer = frame.f_locals.get("layer")
        if isinstance(layer, nn.Module) and names.get(layer):
            return f" in {names[layer]} ({type(layer).__name__})"
    return ""


def _at_fault(model: nn.Module, example: torch.Tensor) -> str:
    """' in NAME (Class)': the innermost module whose forward raises on `example`, or '' if none does."""
    stack: list[str] = []
    names = {module: name for name, module in model.named_modules()}

    def enter(module, args) -> None:
        stack.append(names[module])

    def leave(module, args, output) -> None:
        stack.pop()

    handles = [module.register_forward_pre_hook(enter) for module in names]
    handles += [module.register_forward_hook(leave) for module in names]
    try:
        with torch.enable_grad():  # as Torch-Pruning runs it: its graph is the autograd graph
            model.eval()(example)
    except Exception:  # noqa: BLE001 - any failure: the stack says where it happened
        if stack and stack[-1]:
            return f" in {stack[-1]} ({type(model.get_submodule(stack[-1])).__name__})"
    finally:
        for handle in handles:
            handle.remove()
    return ""


def _criterion(criterion: str, model: nn.Module, batch, input_size, notes: list[str]):
    """The Torch-Pruning importance for `criterion`, and what must run before each step (or None). The lrp
    criterion says what it treats approximately, and falls back on taylor where it cannot trace the model."""
    import torch_pruning as tp

    if criterion in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2), None
    if criterion == "bn":
        return tp.importance.BNScaleImportance(), None
    if criterion == "synflow":
        from convforge.compress.synflow import synflow_importance

        importance = synflow_importance(model, input_size)
        return importance, importance.refresh
    if criterion == "lrp":
        from convforge.compress.lrp import relevance_importance, require_zennit

        require_zennit()
        importance = relevance_importance()
        try:
            importance.refresh(model, *batch)
        except ConfigError as exc:
            notes.append(f"{exc}; pruned by the taylor criterion instead")
        else:
            if importance.approximate:
                inexact = ", ".join(importance.approximate)
                notes.append(f"LRP treats these as gradients, not by an exact rule: {inexact}")
            steps = iter(range(MAX_STEPS + 1))  # the relevance computed above serves the first step
            return importance, lambda: next(steps) and importance.refresh(model, *batch)
    return tp.importance.GroupTaylorImportance(), lambda: _gradients(model, batch)


def _schedule(criterion: str) -> Callable[[float, int], list[float]]:
    """The pruning ratio after each step. Ranked globally, a criterion spares the most salient groups
    (residual streams) until the ratio nears its end, so most of the MACs go in the last steps; there
    the ratio steps far more finely (quadratically), or a params/MACs target overshoots: SynFlow on
    CIFAR ResNet-18 went from over 30% of the MACs to 19% in one linear step."""
    if criterion not in RANKED_GLOBALLY:
        return lambda ratio, steps: [ratio * i / steps for i in range(steps + 1)]
    return lambda ratio, steps: [ratio * (1 - (1 - i / steps) ** 2) for i in range(steps + 1)]


def _protected(model: nn.Module, architecture: str | None, notes: list[str]) -> list[nn.Module]:
    """Layers the model file asks to keep whole (`pruning_protected`), each reason said once in `notes`."""
    hook = model_file_hook(architecture, "pruning_protected") if architecture else None
    protected = hook(model) if hook else {}
    for reason in dict.fromkeys(protected.values()):
        count = sum(1 for r in protected.values() if r == reason)
        notes.append(f"{count} layer(s) keep all their output channels: {reason}")
    return list(protected)


def classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are the classes: never pruned."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
        return [head]
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1:]


def _gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = batch
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        F.cross_entropy(model(images), labels).backward()
