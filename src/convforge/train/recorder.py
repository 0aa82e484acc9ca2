"""The one place the training engine writes its run folder.

The loop says what happened (an epoch ended, new best weights, a checkpoint is due, the final
evaluation); the recorder turns it into files: metrics.jsonl records, model.safetensors + model.json,
checkpoints/last.safetensors, the report's samples, run.json's status. Keeping every write here means
that under distributed training one flag (`writes`, true on rank 0 only) keeps the other processes
from touching the folder, and a new kind of record has one home.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from convforge.checkpoint import ModelSpec, save_model, save_train_state
from convforge.data.imageset import ImageSet
from convforge.data.transforms import Preprocessing
from convforge.run_samples import save_augmented_samples, save_prediction_samples
from convforge.runs import Run
from convforge.train.evaluate import EvalResult


class RunRecorder:
    def __init__(self, run: Run, spec: ModelSpec, *, writes: bool = True):
        self.run = run
        self.spec = spec
        self.writes = writes

    def update(self, **fields: Any) -> None:
        """Fields of run.json: status, times, the data summary, the final figures."""
        if self.writes:
            self.run.update(**fields)

    def record(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl (an epoch, a point of the loss curve, an evaluation)."""
        if self.writes:
            self.run.append_metrics(record)

    def forget_after(self, epoch: int, step: int) -> None:
        """Drop the records a resumed run is about to make again."""
        if self.writes:
            self.run.drop_records_after(epoch, step)

    def best_weights(self, model: nn.Module, epoch: int) -> None:
        if self.writes:
            save_model(self.run.path, model, self.spec, extra={"epoch": epoch})

    def checkpoint(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None,
                   state: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None) -> None:  # fmt: skip
        if self.writes:
            save_train_state(self.run.last_checkpoint, model=model, optimizer=optimizer, ema=ema, state=state,
                             extra_tensors=extra_tensors)  # fmt: skip

    def augmented_batch(self, inputs: torch.Tensor, targets: torch.Tensor, preprocessing: Preprocessing) -> None:
        if self.writes:
            save_augmented_samples(self.run, inputs, targets, preprocessing)

    def evaluation(self, split: ImageSet, result: EvalResult) -> None:
        """The final test evaluation: its record and the images the report shows."""
        if self.writes:
            self.run.append_metrics({"kind": "eval", **result.to_dict()})
            save_prediction_samples(self.run, split, result)
