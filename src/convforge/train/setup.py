"""How a run is set up: its data, optimizer, schedule and loss; on this machine: device, precision,
preprocessing, determinism, epoch seeds."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import timm
import torch
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from convforge.checkpoint import tensor_shapes
from convforge.data import Dataset, absolute_spec, load_dataset
from convforge.data.spec import mirror_invariant
from convforge.data.transforms import AugmentConfig, Preprocessing
from convforge.errors import CheckpointError, ConfigError, UserError
from convforge.models import create_model
from convforge.models.factory import check_state_dict_fits
from convforge.models.resize import resize_to_shapes
from convforge.runs import check_free, check_replaceable, next_run_dir
from convforge.train.config import TrainConfig

_SMALL_IMAGE_SIDE = 128  # at or below this, train at the images' own size with pad-and-crop


def prepare_run(
    config: TrainConfig, out: str | Path | None, runs_root: str | Path, dataset: Dataset | None, *, force: bool,
    check: bool = True,
) -> tuple[TrainConfig, Path, Dataset]:  # fmt: skip
    """What a new run needs before it starts, in one place for `train` and `train_seeds`: its folder
    (`out`, default runs/<model>, -2, -3...), checked free (or, with `force`, replaceable) before
    anything loads so a mistake fails fast (`check`: on the process that writes it); its config with an
    absolute data spec; its data, loaded unless given."""
    out = Path(out) if out is not None else next_run_dir(runs_root, config.model.split(".")[0])
    if check:
        (check_replaceable if force else check_free)(out)
    config = replace(config, data=absolute_spec(config.data))
    return config, out, dataset if dataset is not None else load_training_data(config)


def load_training_data(config: TrainConfig) -> Dataset:
    """The run's data with its validation split (carved out of train, seeded, when it has none)."""
    return load_dataset(
        config.data,
        val_fraction=config.val_fraction,
        seed=config.seed,
        strict=config.strict,
        workers=config.workers,
        max_pixels=config.max_pixels,
    )


def build_model(
    config: TrainConfig, data: Dataset, *, given: nn.Module | None = None, shapes: dict[str, list[int]] | None = None
) -> nn.Module:
    """The model a run trains: a new `config.model` (official weights with `pretrained`), resized to
    `shapes` when a resumed run recorded other layer widths; or `given`, once it is shown to be a
    `config.model` for this data, so the saved run rebuilds it from its model.json."""
    if given is not None:
        return _check_given_model(given, config, data)
    model = create_model(config.model, num_classes=data.num_classes, in_chans=data.channels,
                         pretrained=config.pretrained, **config.model_kwargs)  # fmt: skip
    if shapes:
        resize_to_shapes(model, shapes, config.model)
    return model


def _check_given_model(model: nn.Module, config: TrainConfig, data: Dataset) -> nn.Module:
    if config.pretrained:
        raise ConfigError("pretrained loads official weights into a new model; a given model has its own weights. "
                          "Drop one of them")  # fmt: skip
    classes = getattr(model, "num_classes", data.num_classes)
    if classes != data.num_classes:
        raise UserError(
            f"the given model predicts {classes} classes but {config.data} has {data.num_classes}; give it a new "
            f"classifier first (timm: model.reset_classifier({data.num_classes}))"
        )
    state = model.state_dict()
    shapes = tensor_shapes(state)
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    channels = shapes.get(f"{first_conv}.weight", [0, data.channels])[1]
    if channels != data.channels:
        raise UserError(f"the given model takes {channels}-channel images but {config.data} has {data.channels}")
    reference = create_model(config.model, num_classes=data.num_classes, in_chans=data.channels, **config.model_kwargs)
    try:
        resize_to_shapes(reference, shapes, config.model)
        check_state_dict_fits(reference, state, "the given model")
    except CheckpointError as exc:
        raise UserError(f"{exc}: it is not a {config.model} (set the config's model to its architecture)") from None
    return model


def build_optimizer(model: nn.Module, config: TrainConfig, updates_per_epoch: int, lr_scale: float = 1.0):
    """timm's optimizer and its per-update schedule (warm-up capped below the epoch count); `lr_scale`
    multiplies the peak learning rate (the linear scaling rule over processes, `scale_lr`)."""
    lr = config.lr * lr_scale
    optimizer = create_optimizer_v2(
        model, opt=config.opt, lr=lr, weight_decay=config.weight_decay, momentum=config.momentum
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=config.sched,
        num_epochs=config.epochs,
        warmup_epochs=min(config.warmup_epochs, config.epochs - 1),
        min_lr=config.min_lr,
        warmup_lr=lr * 0.01,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return optimizer, scheduler


def build_loss(config: TrainConfig, soft_targets: bool) -> nn.Module:
    """Cross-entropy with label smoothing, or on the soft targets MixUp/CutMix make."""
    return SoftTargetCrossEntropy() if soft_targets else nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def resolve_preprocessing(
    model: nn.Module, image_shape: tuple[int, int, int], config: TrainConfig
) -> tuple[Preprocessing, AugmentConfig]:
    """Input size, normalisation and augmentation for this model on these images.

    Small images (CIFAR, MNIST, shapes) train at their own size with pad-and-random-crop and are
    evaluated as they are; larger ones use the model's input size with random-resized-crop for
    training and the model's resize + centre-crop for evaluation, the way timm does.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    height, width, channels = image_shape
    small = max(height, width) <= _SMALL_IMAGE_SIDE
    if cfg.get("fixed_input_size"):  # e.g. ViTs with learned position embeddings of one size
        input_size = tuple(cfg["input_size"][1:])
    elif config.img_size:
        input_size = (config.img_size, config.img_size)
    elif small:
        input_size = (height, width)
    else:
        input_size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    crop = config.crop if config.crop != "auto" else ("pad" if small else "rrc")
    crop_pct = 1.0 if small else float(cfg.get("crop_pct", 0.875))
    preprocessing = Preprocessing(
        input_size=input_size,
        mean=tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)),
        std=tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)),
        crop_pct=crop_pct,
        interpolation=cfg.get("interpolation", "bilinear"),
        channels=channels,
    )
    pad = config.pad if config.pad is not None else max(2, min(height, width) // 8)
    hflip = config.hflip if config.hflip is not None else (0.5 if mirror_invariant(config.data) else 0.0)
    augment = AugmentConfig(crop=crop, pad=pad, hflip=hflip, mixup=config.mixup, cutmix=config.cutmix)
    return preprocessing, augment


def epoch_seed(seed: int, epoch: int) -> int:
    """Independent, reproducible seed for everything random in one epoch."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
