"""The training engine: one loop, readable top to bottom.

`train(config)` loads the data, builds the model (or takes the one given: a pruned model to
fine-tune), and for each epoch: shuffles with a seed derived from (seed, epoch), augments each uint8
batch on the device (data/transforms.py), runs the step hooks (train/step.py: adversarial training
today, distillation next), steps timm's optimizer and per-step scheduler under bf16 autocast where
the hardware has it, updates the EMA, evaluates on the validation split, and has the recorder
(train/recorder.py, the only writer of the run folder) write the epoch's metrics line, the best
weights (model.safetensors) and the full training state (checkpoints/last.safetensors). Finally the
best weights are reloaded from disk and evaluated on the test split.

Every source of randomness in an epoch is seeded from (seed, epoch), and the checkpoint holds all
other state, so a run stopped after epoch k and resumed ends with the same weights, bit for bit, as
one that never stopped (in deterministic mode; tests/train/test_resume.py kills a run to show it).
Long epochs are also checkpointed every `checkpoint_every` seconds, with the step reached and the
generators' states (train/position.py), so a kill loses minutes, not an epoch.

run.json says how a run ended: finished, diverged, interrupted (Ctrl-C), or failed with the error;
a run killed outright still says running, and `--resume` continues it.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from convforge.checkpoint import ModelSpec, load_model, load_train_state
from convforge.data import Dataset
from convforge.data.loader import BatchLoader
from convforge.data.transforms import TrainAugment
from convforge.device import autocast_context, precision_name, resolve_amp, resolve_device
from convforge.errors import RunFolderError, TrainingDiverged, UserError
from convforge.models.padding_taps import skip_padding_taps
from convforge.runs import Run, remove_run_folder
from convforge.tensorfile import stored_shapes
from convforge.threads import set_threads, threads_kept, threads_report
from convforge.train import distributed
from convforge.train.config import TrainConfig
from convforge.train.distributed import SINGLE, World, rank_zero_first
from convforge.train.evaluate import EvalResult, evaluate
from convforge.train.hooks import build_step_hooks
from convforge.train.meter import EpochMeter
from convforge.train.position import CheckpointClock, EpochPosition, capture_rng, restore_rng
from convforge.train.progress import TrainProgress
from convforge.train.recorder import RunRecorder
from convforge.train.result import TrainResult, invoked_command
from convforge.train.setup import (
    build_loss,
    build_model,
    build_optimizer,
    epoch_seed,
    load_training_data,
    prepare_run,
    resolve_preprocessing,
    set_deterministic,
)
from convforge.train.step import backward_and_step


# ------------------------------------------------------------------------------- the loop
def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    model: nn.Module | None = None,
    progress: TrainProgress | None = None,
    runs_root: str | Path = "runs",
    command: str | None = None,
    dataset: Dataset | None = None,
    force: bool = False,
) -> TrainResult:
    """Train `config.model` on `config.data` into a new run folder (`out`, default runs/<model>).

    `model`, when given, is trained instead of a new `config.model` (in place): a fine-tune of a
    pruned or otherwise changed model of that architecture. Its layer widths are recorded, so the run
    saves, loads and resumes it like any other. `force` replaces an existing run folder at `out` (only
    a run folder: one with run.json), once the data and model have loaded, so a mistake in either
    leaves the old run as it was."""
    world = distributed.join(resolve_device(config.device), config.dist_timeout)
    with rank_zero_first(world):  # rank 0 checks the folder and fills the data cache; the others then read it
        config, out, dataset = prepare_run(config, out, runs_root, dataset, force=force, check=world.main)
    trainer = _Trainer(config, progress, dataset, model=model, world=world)
    with threads_kept():  # the run sets its own count (--threads, or one per free core)
        return trainer.run_new(out, command or invoked_command(), force=force)


def resume(
    run_path: str | Path, *, progress: TrainProgress | None = None, dataset: Dataset | None = None
) -> TrainResult:
    """Continue an interrupted run from its last checkpoint, in the same folder (mid-epoch when the
    checkpoint was taken mid-epoch). A run stopped before its first checkpoint starts afresh."""
    run = Run.open(run_path)
    info = run.info
    if info.get("stage") != "train":
        raise RunFolderError(f"{run.path} is a {info.get('stage')} run; only training runs can be resumed")
    if info.get("status") == "finished":
        raise UserError(f"{run.path} finished all its epochs already; nothing to resume")
    if not isinstance(info.get("config"), dict):
        raise RunFolderError(f"{run.path}/run.json records no training config to resume with; the file was edited")
    config = TrainConfig.from_dict(info["config"])
    # every process joins before either path: a distributed run that died before its first checkpoint
    # starts afresh on all its ranks together (it once started each rank alone, as a single process)
    world = distributed.join(resolve_device(config.device), config.dist_timeout)
    if not run.last_checkpoint.is_file():
        if info.get("model_given"):
            raise UserError(
                f"{run.path} trained a model given to train() and stopped before saving it; its starting "
                "weights are not in the run. Start it again with train(model=...)"
            )
        trainer = _Trainer(config, progress, dataset, world=world)
        trainer.progress.message(
            f"{run.path} stopped before its first checkpoint was written: starting it afresh with its "
            "recorded settings"
        )
        with threads_kept():
            return trainer.run_new(run.path, info.get("command") or invoked_command(), force=True)
    # the layer widths the checkpoint holds, not the architecture's defaults: a fine-tuned pruned
    # model resumes as itself
    shapes = {k.removeprefix("model."): v for k, v in stored_shapes(run.last_checkpoint).items()
              if k.startswith("model.")}  # fmt: skip
    with threads_kept():
        return _Trainer(config, progress, dataset, shapes=shapes, world=world).run_resumed(run)


class _Trainer:
    """Holds the objects of one run so the loop below reads as a list of steps."""

    def __init__(
        self,
        config: TrainConfig,
        progress: TrainProgress | None,
        dataset: Dataset | None,
        *,
        model: nn.Module | None = None,
        shapes: dict[str, list[int]] | None = None,
        world: World = SINGLE,
    ):
        self.config, self.world = config, world
        self.progress = progress if progress is not None and world.main else TrainProgress(enabled=False)
        self.dataset = dataset
        self.given_model, self.shapes = model, shapes
        self.device = distributed.rank_device(world, resolve_device(config.device))
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.resumed_info: dict[str, Any] = {}  # run.json of the run being resumed

    # ---------------------------------------------------------------------------- set-up
    def _setup(self) -> None:
        config = self.config
        # train() restores the caller's count afterwards. A deterministic run keeps one count from start to
        # resume (reductions split by thread): the one its run.json recorded, else the process's
        recorded = (self.resumed_info.get("threads") or {}).get("threads") if config.deterministic else None
        set_threads(config.threads or recorded, automatic=not config.deterministic)
        set_deterministic(config.deterministic)
        if self.dataset is None:  # a resumed run; a new one got its data from prepare_run
            with rank_zero_first(self.world):
                self.dataset = load_training_data(config)
        data = self.dataset
        if data.train is None or len(data.train) == 0:
            raise UserError(f"{config.data} has no training images")
        if data.skipped:
            self.progress.message(
                f"[yellow]skipped {len(data.skipped)} unreadable image(s)[/yellow] (first: {data.skipped[0].path}: "
                f"{data.skipped[0].reason}); see run.json, or use --strict to stop on them"
            )
        torch.manual_seed(config.seed)
        self.model = build_model(config, data, given=self.given_model, shapes=self.shapes)
        self.model = distributed.prepare_model(self.model, config, self.world, self.device)
        self.preprocessing, augment_config = resolve_preprocessing(self.model, data.image_shape, config)
        self.spec = ModelSpec(config.model, data.num_classes, data.channels, list(data.classes),
                              self.preprocessing, dict(config.model_kwargs))  # fmt: skip
        if config.skip_padding_taps:
            skip_padding_taps(self.model)  # exact; resnet18 at 32 px: 1.6x faster with AVX2 kernels
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=memory_format)
        self.step_model = distributed.wrap(self.model, self.world, self.device)  # DDP when distributed
        self.step_model = torch.compile(self.step_model) if config.compile else self.step_model
        self.augment = TrainAugment(augment_config, self.preprocessing, data.num_classes, config.label_smoothing)
        self.train_loader = BatchLoader(data.train, config.batch_size, shuffle=True, drop_last=True,
                                        device=self.device, workers=config.workers, rank=self.world.rank,
                                        world_size=self.world.size)  # fmt: skip
        if len(self.train_loader) == 0:
            raise UserError(f"{len(data.train)} training images give none of the {self.world.size} processes a "
                            f"batch of {config.batch_size}; lower --batch-size or --nproc")  # fmt: skip
        lr_scale = self.world.size if config.scale_lr else 1
        self.optimizer, self.scheduler = build_optimizer(self.model, config, len(self.train_loader), lr_scale)
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=True) if config.ema else None
        # fp16 needs loss scaling; a disabled scaler passes everything through (bf16, fp32)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = build_loss(config, self.augment.soft_targets)
        self.hooks = build_step_hooks(config, self.preprocessing, list(data.classes), self.device)
        self.hard_label_weight = math.prod(hook.hard_label_weight() for hook in self.hooks)
        self.start_epoch, self.best_epoch, self.best_val = 0, 0, None
        self.position: EpochPosition | None = None  # where a mid-epoch checkpoint left off
        self.train_seconds = 0.0  # training time embodied in the weights, summed over resumes

    def run_new(self, out: Path, command: str, force: bool = False) -> TrainResult:
        self._setup()
        if force and self.world.main:
            remove_run_folder(out)
        self.run = Run.create(out, command=command, stage="train", config=self.config.to_dict(),
                              seeds=[self.config.seed]) if self.world.main else Run(out)  # fmt: skip
        self.recorder = RunRecorder(self.run, self.spec, writes=self.world.main)
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "off"
        self.recorder.update(data=self.dataset.summary(), amp=amp, eval_precision=precision_name(None),
                             device=str(self.device), threads=threads_report(),
                             model_given=self.given_model is not None,
                             **distributed.describe(self.world, self.config, self.device))  # fmt: skip
        if self.world.distributed:
            self.progress.message(distributed.summary_line(self.world, self.config, self.device))
        with distributed.peers_lost(self.world):
            return self._loop()

    def run_resumed(self, run: Run) -> TrainResult:
        self.resumed_info = run.info
        self._setup()
        self.run = run
        self.recorder = RunRecorder(run, self.spec, writes=self.world.main)
        recorded = run.info.get("data", {}).get("fingerprint")
        if recorded and recorded != self.dataset.fingerprint:
            raise UserError(
                f"the data in {self.config.data} changed since {run.path} started (fingerprint "
                f"{recorded[:12]} -> {self.dataset.fingerprint[:12]}); start a new run instead"
            )
        state = load_train_state(run.last_checkpoint, model=self.model, optimizer=self.optimizer, ema=self.ema)
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.start_epoch, self.best_epoch, self.best_val = state["epoch"], state["best_epoch"], state["best_val"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.position = EpochPosition.from_state(state, state["extra_tensors"])
        self.recorder.forget_after(self.start_epoch, self.position.step if self.position else 0)
        step = self.position.step if self.position else 0
        resumes = [*run.info.get("resumes", []), {"epoch": self.start_epoch, "step": step}]
        self.recorder.update(status="running", resumes=resumes, error=None,
                             **distributed.describe(self.world, self.config, self.device))  # fmt: skip
        where = (
            f"epoch {self.start_epoch + 1}, step {step}" if step else f"the end of epoch {self.start_epoch}"
        )
        self.progress.message(f"resuming {run.path} from {where} (of {self.config.epochs} epochs)")
        with distributed.peers_lost(self.world):
            return self._loop()

    # ------------------------------------------------------------------------------ loop
    def _loop(self) -> TrainResult:
        config, run, recorder = self.config, self.run, self.recorder
        self._clock = time.perf_counter()
        self._wall_before = run.info.get("wall_seconds", 0.0) if self.world.main else 0.0
        self._process_started = self._clock
        # distributed: epoch ends only (a mid-epoch state would need every rank's generators)
        self.checkpoint_clock = CheckpointClock(None if self.world.distributed else config.checkpoint_every)
        if self.given_model is not None and not run.last_checkpoint.is_file():
            # a checkpoint from the start: a given model cannot be rebuilt from the config, so a run
            # killed in its first epoch resumes from these weights instead of starting afresh
            self._save_checkpoint(0)
        try:
            for epoch in range(self.start_epoch, config.epochs):
                stats = self._train_one_epoch(epoch, self.position)
                self.position = None
                record = {"kind": "epoch", "epoch": epoch + 1, "epochs": config.epochs, **stats}
                for hook in self.hooks:
                    record.update(hook.epoch_metrics())
                eval_model = self.ema.module if self.ema is not None else self.model
                record.update(self._validate(eval_model, epoch))
                # Without a validation split the latest weights are the best we can know of.
                improved = (
                    "val_acc" not in record or self.best_val is None or record["val_acc"] > self.best_val
                )
                if improved:
                    self.best_val, self.best_epoch = record.get("val_acc"), epoch + 1
                record["best"] = improved
                recorder.record(record)
                if improved:
                    recorder.best_weights(eval_model, epoch + 1)
                self._save_checkpoint(epoch + 1)
                self.progress.end_epoch(record)
            self.progress.close()
            times = self._times()
            # inside the try: a failure or Ctrl-C here is recorded too (run.json once stayed "running"); a
            # resume then finds every epoch done and runs this evaluation again
            test = self._final_evaluation()
        except TrainingDiverged as exc:
            recorder.update(status="diverged", error=str(exc), **self._times())
            raise
        except KeyboardInterrupt:
            recorder.update(status="interrupted", **self._times())
            raise
        except Exception as exc:
            recorder.update(status="failed", error=f"{type(exc).__name__}: {exc}", **self._times())
            raise
        finally:
            self.progress.close()
        skipped = len(self.dataset.skipped) + self.train_loader.skipped
        recorder.update(
            status="finished",
            **times,
            best_epoch=self.best_epoch,
            best_val_acc=self.best_val,
            skipped_files=skipped,
            test=test.to_dict() if test else None,
        )
        return TrainResult(
            run, test, self.best_epoch, self.best_val, config.epochs, times["train_seconds"], skipped
        )

    def _times(self) -> dict[str, float]:
        """Training time the weights embody (summed over resumes; work lost to a kill is not in it) and
        the wall time every process of this run spent (work lost to a kill included)."""
        now = time.perf_counter()
        self.train_seconds += now - self._clock
        self._clock = now
        wall = self._wall_before + now - self._process_started
        return {"train_seconds": round(self.train_seconds, 2), "wall_seconds": round(wall, 2)}

    def _validate(self, eval_model: nn.Module, epoch: int) -> dict[str, Any]:
        config, val_split = self.config, self.dataset.val
        if val_split is None or not len(val_split):
            return {}
        # float32 whatever the training precision (device.resolve_inference_amp): the best epoch is chosen,
        # and its figure reported, as `convforge eval --split val` and the deployed model compute them
        val = evaluate(eval_model, val_split, self.preprocessing, device=self.device, world=self.world,
                       batch_size=config.eval_batch_size, workers=config.workers)  # fmt: skip
        record = {"val_loss": val.loss, "val_acc": val.top1, "val_top5": val.top5, "val_precision": val.precision}
        for hook in self.hooks:
            record.update(hook.validation_metrics(eval_model, val_split, self.device, epoch_seed(config.seed, epoch)))
        return record

    def _save_checkpoint(
        self,
        epochs_done: int,
        position: EpochPosition | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """The full training state, at an epoch's end or (with `position`) mid-epoch."""
        state = {**self._state(epochs_done), **(position.to_state() if position else {"step": 0})}
        extra = None
        if position is not None:
            extra, state["numpy_rng"] = capture_rng(generator, self.device)
        times = self._times()
        state["train_seconds"] = times["train_seconds"]
        self.recorder.checkpoint(model=self.model, optimizer=self.optimizer, ema=self.ema, state=state,
                                 extra_tensors=extra)  # fmt: skip
        self.recorder.update(**times)
        self.checkpoint_clock.reset()

    def _train_one_epoch(self, epoch: int, position: EpochPosition | None) -> dict[str, Any]:
        config = self.config
        seed = epoch_seed(config.seed, epoch)  # the epoch's order: the same on every rank
        draws = distributed.rank_seed(seed, self.world)  # augmentation, dropout, mixup: each rank its own
        generator = torch.Generator().manual_seed(draws)
        if position is None:
            position = EpochPosition()
            torch.manual_seed(draws)  # dropout, drop-path
            np.random.seed(draws % 2**32)  # timm's Mixup draws from NumPy's global generator
        else:  # a mid-epoch checkpoint: the same batches and random draws from where it stopped
            restore_rng(position, generator, self.device)
        self.model.train()
        steps = len(self.train_loader)
        updates_before = epoch * steps
        sync_every = 1 if self.device.type == "cpu" else 25
        meter = EpochMeter(position, steps, self.device)
        self.progress.start_epoch(epoch + 1, config.epochs, steps)
        batches = self.train_loader.batches(seed, start=position.step)
        for step, (images, labels, _) in enumerate(batches, start=position.step + 1):
            inputs, targets = self.augment(images, labels, generator)
            if epoch == 0 and step == 1:
                self.recorder.augmented_batch(inputs, targets, self.preprocessing)
            for hook in self.hooks:
                with autocast_context(self.device, self.amp_dtype):
                    inputs = hook.transform_inputs(self.step_model, inputs, labels, generator)
            with autocast_context(self.device, self.amp_dtype):
                logits = self.step_model(inputs)
            loss = self.loss_fn(logits.float(), targets) * self.hard_label_weight
            for hook in self.hooks:
                with autocast_context(self.device, self.amp_dtype):  # a teacher runs in the run's precision
                    extra = hook.extra_loss(inputs, logits, targets)
                loss = loss if extra is None else loss + extra
            self._optimizer_step(loss, updates_before + step)
            meter.add(loss, logits, labels if targets.ndim == 1 else targets.argmax(dim=1))
            point = meter.curve_point(epoch, step)
            if point is not None:
                self.recorder.record({**point, "lr": self.optimizer.param_groups[0]["lr"]})
            checkpoint_due = step < steps and self.checkpoint_clock.due()
            if step % sync_every == 0 or step == steps or checkpoint_due:
                self._check_finite(loss, epoch, step)
                loss_mean, accuracy, speed = meter.rates()
                self.progress.update(step, loss_mean, accuracy, speed * self.world.size)  # global images/s
            if checkpoint_due:
                self._save_checkpoint(epoch, meter.position(step), generator)
        return {**meter.summary(self.world), "lr": self.optimizer.param_groups[0]["lr"]}

    def _optimizer_step(self, loss: torch.Tensor, updates: int) -> None:
        """Backward, clip, step, schedule, EMA: the pure part of a training step."""
        backward_and_step(loss, self.optimizer, self.scaler, self.model.parameters(), self.config.clip_grad)
        self.scheduler.step_update(num_updates=updates)
        if self.ema is not None:
            self.ema.update(self.model, step=updates)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        if not math.isfinite(loss.item()):
            kept = (
                f"the last good weights (epoch {self.best_epoch}) are kept in {self.run.path}"
                if self.best_epoch
                else "no epoch finished, so no checkpoint was written"
            )
            raise TrainingDiverged(
                f"the loss became {loss.item()} at epoch {epoch + 1}, step {step}; training stopped and {kept}. "
                "Try a lower --lr, --clip-grad 1.0, or --amp off."
            )

    def _state(self, epochs_done: int) -> dict[str, Any]:
        return {
            "epoch": epochs_done,
            "best_epoch": self.best_epoch,
            "best_val": self.best_val,
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def _final_evaluation(self) -> EvalResult | None:
        split = self.dataset.test or self.dataset.val
        if split is None or not len(split) or not self.best_epoch:
            return None
        self.progress.message(f"evaluating the best weights (epoch {self.best_epoch}) on the {split.name} split, "
                              f"{len(split):,} images")  # fmt: skip
        if self.world.main:  # the weights as saved; the other ranks get them from rank 0
            model, _ = load_model(self.run.path, device=self.device)
        else:
            model = copy.deepcopy(self.ema.module if self.ema is not None else self.model)
        distributed.broadcast_state(self.world, model)
        if self.config.channels_last:
            model.to(memory_format=torch.channels_last)
        result = evaluate(model, split, self.preprocessing, device=self.device, world=self.world,
                          batch_size=self.config.eval_batch_size, workers=self.config.workers)  # float32: the rule

        self.recorder.evaluation(split, result)
        return result
