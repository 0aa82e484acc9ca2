"""`convforge train DATA --model NAME`: train a model into a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convforge.cli.common import (
    DeviceOption,
    JsonOption,
    MaxPixelsOption,
    Output,
    QuietOption,
    eval_table,
    parse_key_values,
    percent,
    user_errors,
)
from convforge.errors import ConfigError
from convforge.models import check_model_name
from convforge.robust.attacks import parse_epsilon
from convforge.train import TrainConfig, TrainProgress, TrainResult, resume, train_seeds
from convforge.train.evaluate import EvalResult
from convforge.train.position import parse_duration

_D = TrainConfig(data="")  # the library's defaults, shown in --help


@user_errors
def train_command(
    data: Annotated[
        str | None,
        typer.Argument(
            help="Dataset spec: a folder, mnist:PATH, cifar10:PATH, csv:FILE or shapes.", show_default=False
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Architecture name (convforge models).")
    ] = _D.model,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = _D.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = _D.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = _D.lr,
    opt: Annotated[str, typer.Option(help="Optimizer from timm: adamw, sgd, lamb, lion, ...")] = _D.opt,
    weight_decay: Annotated[float, typer.Option()] = _D.weight_decay,
    momentum: Annotated[float, typer.Option(help="Momentum for SGD-like optimizers.")] = _D.momentum,
    sched: Annotated[
        str, typer.Option(help="LR schedule from timm: cosine, step, multistep, poly, ...")
    ] = _D.sched,
    warmup_epochs: Annotated[int, typer.Option()] = _D.warmup_epochs,
    label_smoothing: Annotated[float, typer.Option()] = _D.label_smoothing,
    mixup: Annotated[float, typer.Option(help="MixUp alpha (0: off).")] = _D.mixup,
    cutmix: Annotated[float, typer.Option(help="CutMix alpha (0: off).")] = _D.cutmix,
    crop: Annotated[
        str, typer.Option(help="auto, pad (pad-and-crop), rrc (random-resized-crop), none.")
    ] = _D.crop,
    hflip: Annotated[
        bool | None,
        typer.Option(
            "--hflip/--no-hflip",
            help="Random horizontal flips (default: on, but off for mnist digits).",
            show_default=False,
        ),
    ] = None,
    img_size: Annotated[
        int | None,
        typer.Option(
            help="Training resolution (default: the images' own size when small, else the model's)."
        ),
    ] = None,
    ema: Annotated[bool, typer.Option(help="Keep an EMA of the weights and evaluate it.")] = _D.ema,
    clip_grad: Annotated[float | None, typer.Option(help="Clip the gradient norm to this value.")] = None,
    amp: Annotated[
        str, typer.Option(help="auto (bf16 where the hardware has it), bf16, fp16, off.")
    ] = _D.amp,
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = _D.compile,
    device: DeviceOption = _D.device,
    seed: Annotated[int, typer.Option()] = _D.seed,
    seeds: Annotated[
        int, typer.Option(help="Train this many times (seed, seed+1, ...) and report mean and std.")
    ] = 1,
    deterministic: Annotated[
        bool, typer.Option(help="Deterministic kernels: resumed runs match bit for bit.")
    ] = False,
    val_fraction: Annotated[
        float, typer.Option(help="Share of train held out for validation when the data has no val split.")
    ] = _D.val_fraction,
    strict: Annotated[bool, typer.Option(help="Stop on unreadable images instead of skipping them.")] = False,
    max_pixels: MaxPixelsOption = _D.max_pixels,
    pretrained: Annotated[
        bool, typer.Option(help="Start from the official weights (downloads them).")
    ] = False,
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="Extra model keyword, name=value (repeatable).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding worker processes.")] = None,
    adv: Annotated[
        str | None,
        typer.Option(help="Adversarial training: pgd (Madry et al.) or fgsm (FGSM with random start, Wong et al.)."),
    ] = None,
    eps: Annotated[
        str, typer.Option("--eps", help="Adversarial training budget (L-inf, on [0, 1] pixels): 8/255 or 0.031.")
    ] = "8/255",
    adv_steps: Annotated[int, typer.Option(help="PGD steps per batch in adversarial training.")] = _D.adv_steps,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default runs/<model>).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Replace the run folder --out if it exists (only a run folder is ever replaced).")
    ] = False,
    checkpoint_every: Annotated[
        str,
        typer.Option(
            help="Also checkpoint mid-epoch this often (30s, 10m, 1h; off), so a kill loses at most that much."
        ),
    ] = "10m",
    resume_run: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue this interrupted run (mid-epoch, from its last checkpoint)."),
    ] = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train a model on a dataset into a run folder.

    Example: convforge train cifar10:data/cifar10-jpg.tar.gz --model resnet18 --epochs 20

    Adversarially robust: convforge train shapes --model resnet18 --adv pgd --eps 8/255 --adv-steps 7
    """
    output = Output(quiet, as_json)
    progress = TrainProgress(console=output.err, enabled=not output.quiet)
    if resume_run is not None:
        result = resume(resume_run, progress=progress)
        _print_result(output, result.run.path, result, result.test)
        return
    if data is None:
        raise ConfigError("give a dataset (DATA), or --resume RUN to continue an interrupted run")
    check_model_name(model)
    config = TrainConfig(
        data=data,
        model=model,
        model_kwargs=parse_key_values(model_arg, "--model-arg"),
        pretrained=pretrained,
        epochs=epochs,
        batch_size=batch_size,
        opt=opt,
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        sched=sched,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        mixup=mixup,
        cutmix=cutmix,
        crop=crop,
        hflip=None if hflip is None else (0.5 if hflip else 0.0),
        img_size=img_size,
        ema=ema,
        clip_grad=clip_grad,
        amp=amp,
        compile=compile,
        device=device,
        seed=seed,
        deterministic=deterministic,
        val_fraction=val_fraction,
        strict=strict,
        max_pixels=max_pixels,
        workers=workers,
        adv=adv,
        adv_eps=parse_epsilon(eps) if adv else _D.adv_eps,
        adv_steps=adv_steps,
        checkpoint_every=_duration(checkpoint_every),
    )
    results, summary = train_seeds(config, seeds, out, progress=progress, force=force)
    first = results[0]
    if seeds > 1:
        output.message(
            f"test top-1 over {seeds} seeds: {percent(summary['top1_mean'])} ± {percent(summary['top1_std'])}"
        )
    _print_result(output, first.run.path, first, first.test, summary if seeds > 1 else None)


def _duration(text: str) -> float | None:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--checkpoint-every: {exc}") from None


def _print_result(
    output: Output, run_path: Path, result: TrainResult, test: EvalResult | None, seeds: dict | None = None
) -> None:
    if test is not None:
        output.table(eval_table(test, title=f"{run_path} — best epoch {result.best_epoch}"))
    if result.skipped_files:
        output.message(
            f"[yellow]{result.skipped_files} unreadable image(s) were skipped[/yellow] (listed in run.json)"
        )
    data = result.to_dict()
    if seeds:
        data["seeds"] = seeds
    output.result(data, text=f"run folder: {run_path}\nnext: convforge report {run_path}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
