"""`convforge train DATA --model NAME`: train a model into a run folder (library imports in the
body; the option defaults are `TrainConfig`'s, read without importing torch)."""

import copy
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from convforge.cli.common import (
    AmpOption,
    BatchSizeOption,
    DeviceOption,
    JsonOption,
    MaxPixelsOption,
    Output,
    QuietOption,
    StrictOption,
    ThreadsOption,
    parse_key_values,
    percent,
    user_errors,
)
from convforge.cli.tables import eval_table
from convforge.errors import ConfigError, UserError
from convforge.train.config import TrainConfig

if TYPE_CHECKING:
    from convforge.train.evaluate import EvalResult
    from convforge.train.result import TrainResult

# the library's defaults, shown in --help
_D = SimpleNamespace(**{f.name: f.default for f in dataclasses.fields(TrainConfig)})


@user_errors
def train_command(
    ctx: typer.Context,
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
    batch_size: BatchSizeOption = _D.batch_size,
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
    amp: AmpOption = _D.amp,
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
    strict: StrictOption = False,
    max_pixels: MaxPixelsOption = _D.max_pixels,
    pretrained: Annotated[
        bool, typer.Option(help="Start from the official weights (downloads them).")
    ] = False,
    model_arg: Annotated[
        list[str] | None, typer.Option("--model-arg", help="Extra model keyword, name=value (repeatable).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding worker processes.")] = None,
    threads: ThreadsOption = None,
    adv: Annotated[
        str | None,
        typer.Option(help="Adversarial training: pgd (Madry et al.) or fgsm (FGSM with random start, Wong et al.)."),
    ] = None,
    eps: Annotated[
        str, typer.Option("--eps", help="Adversarial training budget (L-inf, on [0, 1] pixels): 8/255 or 0.031.")
    ] = "8/255",
    adv_steps: Annotated[int, typer.Option(help="PGD steps per batch in adversarial training.")] = _D.adv_steps,
    teacher: Annotated[
        Path | None, typer.Option(help="Distil from this run's model: learn its softened predictions.")
    ] = None,
    kd_alpha: Annotated[
        float, typer.Option(help="With --teacher: the labels' share of the loss (0: the teacher's targets alone).")
    ] = _D.kd_alpha,
    kd_temperature: Annotated[float, typer.Option(help="With --teacher: the softening temperature.")] = (
        _D.kd_temperature
    ),
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
    nproc: Annotated[
        int | None,
        typer.Option(help="Train on N processes of this machine (torchrun's launcher; gloo on CPUs, NCCL on GPUs); "
                     "--batch-size is per process."),
    ] = None,
    sync_bn: Annotated[bool, typer.Option(help="With several processes: BatchNorm over the global batch (GPUs).")] = (
        _D.sync_bn
    ),
    scale_lr: Annotated[
        bool, typer.Option(help="With several processes: multiply --lr by their number (linear scaling rule).")
    ] = _D.scale_lr,
    dist_timeout: Annotated[
        float, typer.Option(help="With several processes: seconds to wait for the others before stopping.")
    ] = _D.dist_timeout,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML file of training options by section (run keys, loading, optimisation, augmentation, "
            "adversarial, machine); options given on the command line win over it.",
        ),
    ] = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Train a model on a dataset into a run folder.

    Example: convforge train cifar10:data/cifar10-jpg.tar.gz --model resnet18 --epochs 20

    From a config file: convforge train --config train.yaml --epochs 5

    Adversarially robust: convforge train shapes --model resnet18 --adv pgd --eps 8/255 --adv-steps 7

    On 2 processes: convforge train shapes --nproc 2 (or torchrun --nproc-per-node 2 -m convforge train shapes;
    several machines: torchrun --nnodes 2 --node-rank K --rdzv-backend c10d --rdzv-endpoint HOST:PORT ...)
    """
    import sys

    from convforge.train.distributed import LaunchFailure, launch, launched_world

    if nproc is not None and nproc != 1 and not launched_world().distributed:
        try:
            launch(nproc, _without_nproc(sys.argv[1:]))
        except LaunchFailure as failure:
            if failure.user_error:
                raise UserError(str(failure)) from None
            Console(stderr=True, highlight=False).print(f"[bold red]error:[/bold red] {escape(str(failure))}")
            raise typer.Exit(code=1) from None
        return
    # the other processes of a distributed run print nothing; rank 0 reports
    output = Output(quiet, as_json, silent=not launched_world().main)
    from convforge.models import check_model_name
    from convforge.robust.attacks import parse_epsilon
    from convforge.train.config import load_config_file
    from convforge.train.engine import resume
    from convforge.train.progress import TrainProgress
    from convforge.train.seeds import train_seeds

    progress = TrainProgress(console=output.err, enabled=not output.quiet)
    if resume_run is not None:
        result = resume(resume_run, progress=progress)
        _print_result(output, result.run.path, result, result.test)
        return
    # each TrainConfig field -> (the parameter that sets it, its value from the command line)
    flags = {
        "data": ("data", data),
        "model": ("model", model),
        "model_kwargs": ("model_arg", parse_key_values(model_arg, "--model-arg")),
        "pretrained": ("pretrained", pretrained),
        **{name: (name, value) for name, value in dict(
            epochs=epochs, batch_size=batch_size, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
            sched=sched, warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, mixup=mixup, cutmix=cutmix,
            crop=crop, img_size=img_size, ema=ema, clip_grad=clip_grad, amp=amp, compile=compile, device=device,
            seed=seed, deterministic=deterministic, val_fraction=val_fraction, strict=strict, max_pixels=max_pixels,
            workers=workers, threads=threads, adv=adv, adv_steps=adv_steps, kd_alpha=kd_alpha,
            kd_temperature=kd_temperature, sync_bn=sync_bn, scale_lr=scale_lr, dist_timeout=dist_timeout,
        ).items()},  # fmt: skip
        "teacher": ("teacher", str(teacher.resolve()) if teacher is not None else None),
        "hflip": ("hflip", None if hflip is None else (0.5 if hflip else 0.0)),
        "adv_eps": ("eps", parse_epsilon(eps)),
        "checkpoint_every": ("checkpoint_every", _duration(checkpoint_every)),
    }
    if config_file is None:
        values = {name: value for name, (_, value) in flags.items()}
    else:  # the file's values, and on top of them the options given on the command line
        values = load_config_file(config_file)
        values.update({name: value for name, (param, value) in flags.items() if _given(ctx, param)})
    if values.get("data") is None:
        raise ConfigError("give a dataset (DATA or `data:` in --config), or --resume RUN to continue a run")
    check_model_name(values.get("model", _D.model))
    config = TrainConfig(**values)
    results, summary = train_seeds(config, seeds, out, progress=progress, force=force)
    first = results[0]
    if seeds > 1:
        output.message(
            f"test top-1 over {seeds} seeds: {percent(summary['top1_mean'])} ± {percent(summary['top1_std'])}"
        )
    _print_result(output, first.run.path, first, first.test, summary if seeds > 1 else None)


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line each launched process runs: this one without --nproc (they are the processes)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether the user set this parameter (command line or environment), not its default."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _duration(text: str) -> float | None:
    from convforge.train.position import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--checkpoint-every: {exc}") from None


def _print_result(
    output: Output, run_path: Path, result: "TrainResult", test: "EvalResult | None", seeds: dict | None = None
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


# parameters named otherwise than the TrainConfig field they set
_FIELD_OF_PARAM = {"model_arg": "model_kwargs", "eps": "adv_eps", "hflip": "hflip"}


def _group_by_section(command) -> None:
    """Show the options in `--help` under TrainConfig's sections (train/config.py `SECTIONS`), and
    those that are not training settings (run folder, output) under their own heading. Each option
    gets its own copy of its declaration, so the shared aliases of cli/common.py stay ungrouped."""
    from typing import Annotated, get_args

    from convforge.train.config import SECTIONS

    section_of = {name: section for section, names in SECTIONS.items() for name in names}
    function = getattr(command, "__wrapped__", command)
    for param, annotation in list(function.__annotations__.items()):
        base, *metadata = get_args(annotation) or (None,)
        infos = [m for m in metadata if isinstance(m, typer.models.OptionInfo)]
        if not infos:
            continue
        section = section_of.get(_FIELD_OF_PARAM.get(param, param))
        info = copy.copy(infos[0])
        info.rich_help_panel = f"{section.capitalize()} options" if section else "Run folder and output"
        function.__annotations__[param] = Annotated[base, info]


def register(app: typer.Typer) -> None:
    _group_by_section(train_command)
    app.command("train")(train_command)
