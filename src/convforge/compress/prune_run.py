"""`convforge prune RUN DATA --out CHILD`: a run's model pruned to a target, evaluated before and after,
timed, and saved as a child run folder whose lineage names its parent."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convforge.checkpoint import load_model, save_model
from convforge.compress.prune import (
    CONFIRM_BUDGET,
    NEEDS_DATA,
    PruneResult,
    check_criterion,
    check_target,
    prune_model,
)
from convforge.data.sample import align_classes, read_pixels, stratified_positions
from convforge.data.spec import load_dataset
from convforge.data.transforms import eval_transform
from convforge.errors import UserError
from convforge.explain.artifacts import drift_into_run
from convforge.explain.inputs import dataset_inputs
from convforge.files import atomic_folder
from convforge.measure.paired import paired_speedup
from convforge.models.fold import fold_model
from convforge.runs import WEIGHTS_FILE, Run, check_free, check_replaceable, remove_run_folder
from convforge.train.config import TrainConfig
from convforge.train.engine import train
from convforge.train.evaluate import evaluate
from convforge.train.result import invoked_command

log = logging.getLogger(__name__)

LATENCY_BATCHES = (1, 64)
REFERENCE_IMAGES = 128  # training images the taylor and lrp criteria score channels on
DRIFT_IMAGES = 32  # test images both models explain, for the explanation drift


@dataclass
class PruneRunResult:
    child: Path
    pruning: PruneResult
    parent_top1: float
    pruned_top1: float  # before any fine-tuning
    top1: float  # after fine-tuning, if any
    latency_ms: dict[str, dict[int, float]]  # parent/child -> batch -> p50, timed interleaved
    drift: dict[str, Any] | None = None  # how the child explains the parent's test images (explain's drift)
    fold: dict[str, Any] | None = None  # with --fold: what was folded and how far the logits moved

    @property
    def speedup(self) -> dict[int, float]:
        """batch -> the median of per-round ratios of the final paired measurement (`pruning.confirmed`)."""
        return {batch: ratio.median for batch, ratio in (self.pruning.confirmed or {}).items()}

    def to_dict(self) -> dict[str, Any]:
        intervals = {batch: ratio.to_dict() for batch, ratio in (self.pruning.confirmed or {}).items()}
        return {"child": str(self.child), "pruning": self.pruning.to_dict(), "parent_top1": self.parent_top1,
                "pruned_top1": self.pruned_top1, "top1": self.top1, "latency_ms": self.latency_ms,
                "speedup": self.speedup, "speedup_interval": intervals, "drift": self.drift,
                "fold": self.fold}  # fmt: skip


def prune_run(
    run_path: str | Path,
    data: str,
    out: str | Path,
    *,
    criterion: str = "l2",
    params: float | None = None,
    macs: float | None = None,
    speedup: float | None = None,
    batches: tuple[int, ...] = LATENCY_BATCHES,
    round_to: int | None = 8,
    finetune: int = 0,
    finetune_lr: float | None = None,
    fold: bool = False,
    split: str | None = None,
    strict: bool = False,
    force: bool = False,
    latency_seconds: float = 0.5,
    command: str | None = None,
) -> PruneRunResult:
    """Prune RUN's model to a share of params or MACs, or to a measured speed-up at `batches`; with
    `finetune` epochs, retrain it on DATA with RUN as its teacher (distillation, train/distill.py); evaluate
    parent and child on DATA's test split, time both, write CHILD. With `fold`, the child is saved with its
    BatchNorms folded and its blocks re-parameterized (models/fold.py), checked to compute the same logits.
    `command` is what run.json records (default: the command line that started this process)."""
    command = command or invoked_command()
    started = time.perf_counter()
    check_criterion(criterion)
    target, goal = check_target(params, macs, speedup)
    if round_to is not None and round_to < 1:
        raise UserError(f"--round-to must be at least 1, got {round_to}")
    if finetune < 0:
        raise UserError(f"--finetune is a number of epochs, 0 or more; got {finetune}")
    parent = Run.open(run_path)
    if not parent.has_model:
        raise UserError(f"{parent.path} holds no trained model yet (no {WEIGHTS_FILE}); train it first")
    out = Path(out)
    if force:
        check_replaceable(out)  # said now; the old run is replaced only once the child is ready
    else:
        check_free(out)
    model, spec = load_model(parent.path)
    if spec.folded:
        raise UserError(f"{parent.path} holds a folded model (its BatchNorms are inside its convolutions); prune "
                        "the run it was folded from and add --fold")  # fmt: skip
    dataset = load_dataset(data, strict=strict, channels=spec.in_chans)
    test = align_classes(dataset.splits[split] if split else dataset.eval_split(), spec.classes, data)
    data_batch = _reference_batch(dataset, spec, data) if criterion in NEEDS_DATA else None
    input_size = (spec.in_chans, *spec.preprocessing.input_size)

    log.info("evaluating the parent on %s %s images", f"{len(test):,}", test.name)
    parent_top1 = evaluate(model, test, spec.preprocessing).top1
    log.info("pruning with the %s criterion to %s %g", criterion, target, goal)
    timed_as = (lambda m: fold_model(m).model) if fold else None  # with --fold, both are timed folded
    child = copy.deepcopy(model)
    pruning = prune_model(child, input_size, criterion=criterion, target=target, goal=goal, round_to=round_to,
                          architecture=spec.architecture, data_batch=data_batch, latency_batches=batches,
                          latency_seconds=latency_seconds, timed_as=timed_as, confirm=False)  # fmt: skip
    config = {"data": data, "criterion": criterion, "target": target, "goal": goal, "round_to": round_to,
              "batches": list(batches), "finetune": finetune, "fold": fold}  # fmt: skip
    # the child is made in a hidden folder beside `out` and renamed into place whole: a killed prune leaves
    # no half-made child under the name the user chose (only a temporary the next run removes)
    replace = (lambda: remove_run_folder(out)) if force or out.exists() else None  # --force, or an empty folder
    with atomic_folder(out, replace=replace) as staging:
        run = None
        evaluated = pruned = evaluate(child, test, spec.preprocessing)
        if finetune:  # train writes the child run folder; then it becomes a pruning stage of the parent
            log.info("distilling the child from its parent for %d epoch(s)", finetune)
            run = distill_child(parent, spec, child, data, staging, epochs=finetune, lr=finetune_lr, command=command)
            child = load_model(run.path)[0]  # the best epoch, at the pruned widths
            evaluated = evaluate(child, test, spec.preprocessing)
        folding = None
        if fold:
            child, saved_spec, folding = _folded(child, spec, input_size)
            evaluated = evaluate(child, test, spec.preprocessing)
        # the figure reported everywhere (table, run.json, report): the saved child against its parent, timed
        # interleaved; it decides whether a speed-up target was reached
        log.info("timing the child against its parent, interleaved, at batch %s",
                 " and ".join(map(str, batches)))  # fmt: skip
        parent_ms, child_ms, pruning.confirmed = paired_speedup(timed_as(model) if fold else model, child,
                                                                input_size, batches,
                                                                2 * CONFIRM_BUDGET * latency_seconds)  # fmt: skip
        latency = {"parent": parent_ms, "child": child_ms}
        result = PruneRunResult(out, pruning, parent_top1, pruned.top1, evaluated.top1, latency, fold=folding)
        if run is None:
            run = Run.create(staging, command=command, stage="prune", config=config, parent=parent.path)
            run.update(status="done")
        if fold or finetune == 0:  # a fine-tuned child's weights become the folded ones; its checkpoint stays
            _save_checked(run.path, child, saved_spec if fold else spec, input_size)
        inputs = dataset_inputs(data, spec, split, DRIFT_IMAGES, torch.device("cpu"), strict)
        result.drift = drift_into_run(run, model, child, spec, inputs, parent_name=parent.path.name)
        run.append_metrics({"kind": "prune", **result.to_dict()})
        # the whole prune's time (search, fine-tune, measurements), beside the fine-tune's own train_seconds
        run.update(name=out.name, stage="prune", parent=str(parent.path.resolve()), pruning=pruning.to_dict(),
                   prune_config=config, fold=folding, test=evaluated.to_dict(), command=command,
                   prune_seconds=round(time.perf_counter() - started, 2))  # fmt: skip
    return result


def distill_child(
    parent: Run, spec, child: torch.nn.Module, data: str, out: Path, *, epochs: int, lr: float | None = None,
    command: str = "convforge prune",
) -> Run:
    """Train `child` (the parent's architecture, pruned; `spec` the parent's) on DATA for `epochs` with the
    parent's recipe at a tenth of its learning rate (or `lr`) and the parent as teacher; the trained run
    folder at `out`."""
    config = _finetune_config(parent, spec, data, epochs, lr)
    return train(config, out, model=child, command=command).run


def _save_checked(folder: Path, model: torch.nn.Module, spec, input_size) -> None:
    save_model(folder, model, spec)
    _check_round_trip(folder, model, input_size)


def _folded(child: torch.nn.Module, spec, input_size) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The child folded, the spec it is saved under, and what folding did: norms folded and kept, and the
    largest change of a logit on random inputs (float rounding only; more is a bug and is refused)."""
    folding = fold_model(child)
    probe = torch.randn(8, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = child.eval()(probe), folding.model(probe)
    scale = float(before.abs().max())
    moved = float((after - before).abs().max())
    if moved > 1e-3 * scale + 1e-5:
        raise UserError(f"folding changed the child's logits by {moved:.3g} (largest logit {scale:.3g}); "
                        "it was not kept. Prune without --fold and report this model")  # fmt: skip
    record = {**folding.to_dict(), "max_abs_logit_change": moved, "max_abs_logit": scale}
    return folding.model, spec.folded_from(child), record


def _finetune_config(parent: Run, spec, data: str, epochs: int, lr: float | None) -> TrainConfig:
    """The parent's training recipe, shortened to `epochs` without warm-up, at a tenth of its learning rate
    unless `lr` is given, with the parent as teacher."""
    recipe = {k: v for k, v in (parent.info.get("config") or {}).items() if k in TrainConfig.__dataclass_fields__}
    recipe.update(data=data, model=spec.architecture, model_kwargs=dict(spec.model_kwargs), epochs=epochs,
                  warmup_epochs=0, teacher=str(parent.path.resolve()), pretrained=False)  # fmt: skip
    recipe["lr"] = lr if lr is not None else recipe.get("lr", TrainConfig.lr) / 10
    return TrainConfig(**recipe)


def _reference_batch(dataset, spec, data: str) -> tuple[torch.Tensor, torch.Tensor]:
    train = align_classes(dataset.splits.get("train") or dataset.eval_split(), spec.classes, data)
    pixels, positions, _ = read_pixels(train, stratified_positions(train.labels, min(REFERENCE_IMAGES, len(train)), 0))
    images = eval_transform(torch.from_numpy(pixels), spec.preprocessing)
    return images, torch.as_tensor(train.labels[positions], dtype=torch.long)


def _check_round_trip(folder: Path, model: torch.nn.Module, input_size) -> None:
    """The saved child, loaded the ordinary way (rebuilt at the recorded widths), is the pruned model."""
    loaded, _ = load_model(folder)
    probe = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if not torch.equal(loaded(probe), model.eval()(probe)):
            raise UserError(f"the pruned model in {folder} does not load back identically; it was not kept")
