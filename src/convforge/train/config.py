"""`TrainConfig`: every knob of a training run, stored in run.json so a run can be repeated or resumed.

The fields stay flat (`config.lr`, as in run.json since the first runs) and belong to sections
(`SECTIONS`): a config file names them by section, `--help` could group by them, and distillation
(issue 15) gets its own section rather than more loose fields. `load_config_file` reads such a file
(YAML, or JSON, which YAML includes):

    data: cifar10:data/cifar10-jpg.tar.gz
    model: resnet18
    optimisation: {epochs: 30, lr: 0.003, ema: true}
    augmentation: {mixup: 0.2, crop: pad}
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from convforge.data.limits import DEFAULT_MAX_PIXELS
from convforge.errors import CheckpointError, ConfigError, did_you_mean

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# timm's schedules that step per update (plateau needs a metric each epoch, which this loop does not feed)
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt")
CROP_CHOICES = ("auto", "pad", "rrc", "none")
ADVERSARIAL_CHOICES = ("pgd", "fgsm")

# Every field in exactly one section (tests/train/test_config.py). "run" keys may also be written
# at the top level of a config file; the others go under their section's name.
SECTIONS: dict[str, tuple[str, ...]] = {
    "run": ("data", "model", "model_kwargs", "pretrained", "seed", "deterministic", "checkpoint_every"),
    "loading": ("val_fraction", "strict", "max_pixels", "workers"),  # how the images are read
    "optimisation": ("epochs", "batch_size", "opt", "lr", "weight_decay", "momentum", "sched", "warmup_epochs",
                     "min_lr", "label_smoothing", "clip_grad", "ema", "ema_decay"),  # fmt: skip
    "augmentation": ("mixup", "cutmix", "crop", "pad", "hflip", "img_size"),
    "adversarial": ("adv", "adv_eps", "adv_steps", "adv_step_size", "adv_val_images"),
    "machine": ("amp", "channels_last", "skip_padding_taps", "compile", "device", "eval_batch_size", "threads"),
    "distillation": ("teacher", "kd_alpha", "kd_temperature"),
    "distributed": ("sync_bn", "scale_lr", "dist_timeout"),
}


@dataclass
class TrainConfig:
    """A training run. Defaults suit training a small CNN from scratch on a few thousand images."""

    data: str
    model: str = "resnet18"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    epochs: int = 10
    batch_size: int = 128
    opt: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    sched: str = "cosine"
    warmup_epochs: int = 1  # capped at epochs - 1, so a short run still anneals
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    crop: str = "auto"  # pad: pad-and-random-crop (small images); rrc: random-resized-crop (photos)
    pad: int | None = None  # translation in pixels for crop=pad; default 1/8 of the image side
    hflip: float | None = None  # flip probability; default 0.5, but 0 for digits (mnist), which mirroring changes
    img_size: int | None = None  # default: the images' own size when small, else the model's
    ema: bool = False
    ema_decay: float = 0.999
    clip_grad: float | None = None
    amp: str = "auto"
    channels_last: bool = True
    skip_padding_taps: bool = True  # convolutions skip taps that only read padding (models/padding_taps.py)
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    val_fraction: float = 0.1
    strict: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS  # images declaring more pixels are refused (decompression bombs)
    workers: int | None = None
    eval_batch_size: int = 256
    threads: int | None = None  # intra-op threads of the model (default: torch's, one per core)
    checkpoint_every: float | None = 600.0  # seconds between mid-epoch checkpoints (None: epoch ends only)
    # Adversarial training: pgd (Madry et al. 2018) or fgsm with a random start (Wong et al. 2020)
    adv: str | None = None
    adv_eps: float = 8 / 255  # L-inf budget on [0, 1] pixels
    adv_steps: int = 7  # PGD steps (fgsm: 1)
    adv_step_size: float | None = None  # default: 2.5 eps / steps for pgd, 1.25 eps for fgsm
    adv_val_images: int = 512  # validation images attacked each epoch for the robust accuracy
    # Distillation: a teacher run whose softened predictions the student learns (train/distill.py)
    teacher: str | None = None
    kd_alpha: float = 0.0  # weight of the loss on the labels; 1 - kd_alpha goes to the teacher's soft targets
    kd_temperature: float = 1.0
    # Several processes (torchrun or --nproc; train/distributed.py): batch_size is per process
    sync_bn: bool = False  # BatchNorm statistics over the global batch (SyncBatchNorm)
    scale_lr: bool = False  # lr x the number of processes (the linear scaling rule); off: lr as given
    dist_timeout: float = 300.0  # seconds to wait for the other processes (joining, any collective)

    def __post_init__(self) -> None:
        # imported here: the CLI reads this class's defaults without importing timm or torch
        from timm.optim import list_optimizers

        from convforge.checkpoint import check_self_contained_kwargs

        problems = _coerce_field_types(self)
        if problems:  # the checks below compare values: they need numbers where numbers belong
            raise ConfigError("; ".join(problems))
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        for name in ("mixup", "cutmix", "weight_decay", "momentum"):
            if getattr(self, name) < 0:
                problems.append(f"{name} cannot be negative, got {getattr(self, name)}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            problems.append(f"clip_grad is a gradient norm, more than 0; got {self.clip_grad}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        optimizers = list_optimizers()
        if self.opt.lower() not in optimizers:
            problems.append(f"unknown optimizer {self.opt!r}.{did_you_mean(self.opt.lower(), optimizers)}")
        if self.sched not in SCHEDULES:
            problems.append(f"sched must be one of {SCHEDULES}, got {self.sched!r}")
        if self.amp not in AMP_CHOICES:
            problems.append(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.crop not in CROP_CHOICES:
            problems.append(f"crop must be one of {CROP_CHOICES}, got {self.crop!r}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            problems.append(f"checkpoint_every is a number of seconds, got {self.checkpoint_every}")
        if self.hflip is not None and not 0 <= self.hflip <= 1:
            problems.append(f"hflip is a probability in [0, 1], got {self.hflip}")
        if self.img_size is not None and self.img_size < 8:
            problems.append(f"img_size must be at least 8, got {self.img_size}")
        if not 0 <= self.kd_alpha <= 1:
            problems.append(f"kd_alpha is the labels' share of the loss, in [0, 1]; got {self.kd_alpha}")
        if self.kd_temperature <= 0:
            problems.append(f"kd_temperature must be positive, got {self.kd_temperature}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be at least 1, got {self.threads}")
        if self.dist_timeout <= 0:
            problems.append(f"dist_timeout is a number of seconds, more than 0; got {self.dist_timeout}")
        if self.adv is not None:
            if self.adv not in ADVERSARIAL_CHOICES:
                problems.append(f"adv must be one of {ADVERSARIAL_CHOICES}, got {self.adv!r}")
            if not 0 < self.adv_eps < 1:
                problems.append(f"adv_eps is a fraction of the pixel range in (0, 1), like 8/255; got {self.adv_eps}")
            if self.adv_steps < 1:
                problems.append(f"adv_steps must be at least 1, got {self.adv_steps}")
            if self.mixup > 0 or self.cutmix > 0:
                problems.append("adversarial training attacks hard labels; turn off --mixup and --cutmix")
        try:
            check_self_contained_kwargs(self.model_kwargs, "--model-arg")
        except CheckpointError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}.{did_you_mean(unknown[0], known)}")
        return cls(**data)

    def to_sections(self) -> dict[str, Any]:
        """The fields grouped by section, as a config file holds them ("run" keys at the top)."""
        values = self.to_dict()
        grouped: dict[str, Any] = {name: values[name] for name in SECTIONS["run"]}
        for section, names in SECTIONS.items():
            if section != "run" and names:
                grouped[section] = {name: values[name] for name in names}
        return grouped


def _coerce_field_types(config: TrainConfig) -> list[str]:
    """Each field as its declared type, or a problem naming it. A config file's `lr: 1e-3` is a string to
    YAML (its floats need a dot: 1.0e-3) and becomes 0.001; `epochs: "x"`, `lr: .nan` or `mixup: true`
    are refused by name instead of failing later with a TypeError or training on NaN."""
    problems = []
    for name, declared in typing.get_type_hints(TrainConfig).items():
        value = getattr(config, name)
        origin = typing.get_origin(declared)
        if origin not in (None, typing.Union, types.UnionType):
            continue  # dict[str, Any] and the like: checked where they are used
        kinds = set(typing.get_args(declared)) if origin else {declared}
        if value is None and type(None) in kinds:
            continue
        try:
            value = _as_declared(value, kinds)
        except (ValueError, OverflowError):
            wanted = " or ".join(_KIND_NAMES[k] for k in (float, int, bool, str) if k in kinds)
            problems.append(f"{name} must be {wanted}, got {getattr(config, name)!r}")
            continue
        setattr(config, name, value)
    return problems


_KIND_NAMES = {float: "a finite number", int: "a whole number", bool: "true or false", str: "text"}


def _as_declared(value: Any, kinds: set) -> Any:
    """`value` as one of the declared `kinds` (numbers from numbers or numeric text, finite), else ValueError."""
    numeric = not isinstance(value, bool) and isinstance(value, (int, float, str))
    if float in kinds and numeric:
        number = float(value)
        if math.isfinite(number):
            return number
    elif int in kinds and numeric and float(value).is_integer():
        return int(float(value))
    elif any(isinstance(value, kind) for kind in kinds if kind in (bool, str)):
        return value
    raise ValueError(value)


def section_of(name: str) -> str:
    return next(section for section, names in SECTIONS.items() if name in names)


def flatten_sections(values: dict[str, Any], source: str) -> dict[str, Any]:
    """A config file's mapping (sections, or "run" keys at the top) -> flat `TrainConfig` keywords."""
    flat: dict[str, Any] = {}
    every_field = [name for names in SECTIONS.values() for name in names]
    for key, value in values.items():
        if key in SECTIONS and key != "run":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {key!r} must map option names to values, got {value!r}")
            for name, option in value.items():
                if name not in SECTIONS[key]:
                    where = f"it belongs to {section_of(name)!r}" if name in every_field else "no such option"
                    raise ConfigError(
                        f"{source}: {key}.{name}: {where}.{did_you_mean(name, SECTIONS[key] or every_field)}"
                    )
                flat[name] = option
        elif key == "run" and isinstance(value, dict):
            flat.update(flatten_sections(value, source))
        elif key in SECTIONS["run"]:
            flat[key] = value
        elif key in every_field:
            raise ConfigError(f"{source}: {key!r} belongs under the section {section_of(key)!r}")
        else:
            raise ConfigError(
                f"{source}: unknown key {key!r}; sections are {', '.join(SECTIONS)}."
                f"{did_you_mean(key, [*SECTIONS, *every_field])}"
            )
    return flat


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Flat `TrainConfig` keywords from a YAML (or JSON) config file; every mistake is a ConfigError."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must be a mapping of options (or sections), got {type(values).__name__}")
    return flatten_sections(values, str(path))
