"""Knowledge distillation as a step hook: a teacher run's model scores each training batch, and the
student learns its softened class probabilities (Hinton et al. 2015).

The loss is `kd_alpha * CE(labels) + (1 - kd_alpha) * T^2 * KL(teacher_T || student_T)`; the default
`kd_alpha = 0` trains on the teacher's soft targets alone, as MEAL V2 does. The teacher runs in eval
mode without gradients, under the run's autocast, on the same normalised (and augmented) batch as the
student, so both must share the preprocessing's normalisation and the class list. What the teacher
costs is reported in each epoch's record and line (`teacher_seconds`): on a GPU through CUDA events,
read once per epoch so that timing adds no synchronisation to the steps.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from convforge.checkpoint import load_model
from convforge.data.transforms import Preprocessing
from convforge.errors import ConfigError
from convforge.train.config import TrainConfig
from convforge.train.step import StepHook


class Distiller(StepHook):
    def __init__(self, config: TrainConfig, preprocessing: Preprocessing, classes: list[str], device: torch.device):
        self.teacher, spec = load_model(config.teacher, device=device)
        if list(spec.classes) != list(classes):
            raise ConfigError(
                f"the teacher {config.teacher} predicts other classes ({', '.join(spec.classes[:5])}, ...) than "
                f"the data ({', '.join(classes[:5])}, ...); distil from a run trained on the same classes"
            )
        teacher_norm = (tuple(spec.preprocessing.mean), tuple(spec.preprocessing.std))
        if teacher_norm != (tuple(preprocessing.mean), tuple(preprocessing.std)):
            raise ConfigError(f"the teacher {config.teacher} normalises its inputs differently (mean, std "
                              f"{teacher_norm}); distil from a teacher with the student's normalisation")  # fmt: skip
        self.teacher.eval().requires_grad_(False)
        self.alpha, self.temperature = config.kd_alpha, config.kd_temperature
        self._seconds = 0.0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def hard_label_weight(self) -> float:
        return self.alpha

    def extra_loss(self, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if inputs.is_cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                teacher_logits = self.teacher(inputs.detach())
                end.record()
                self._events.append((start, end))
            else:
                started = time.perf_counter()
                teacher_logits = self.teacher(inputs.detach())
                self._seconds += time.perf_counter() - started
        return (1 - self.alpha) * distillation_loss(logits, teacher_logits, self.temperature)


    def epoch_metrics(self) -> dict[str, float]:
        if self._events:
            torch.cuda.synchronize()
            self._seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1000
        seconds, self._seconds, self._events = self._seconds, 0.0, []
        return {"teacher_seconds": seconds}


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch, in float32."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t  # fmt: skip
