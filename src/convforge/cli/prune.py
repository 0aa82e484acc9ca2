"""`convforge prune RUN DATA --out CHILD`: structured pruning to a share of parameters or MACs kept
(library imports in the body)."""

from pathlib import Path
from typing import Annotated

import typer

from convforge.cli.common import (
    JsonOption,
    Output,
    QuietOption,
    SplitOption,
    StrictOption,
    ThreadsOption,
    parse_batches,
    percent,
    user_errors,
)


@user_errors
def prune_command(
    run_path: Annotated[
        Path, typer.Argument(metavar="RUN", help="Run folder with a trained model (with --at-init: an architecture).")
    ],
    data: Annotated[
        str, typer.Argument(help="Dataset spec to evaluate on (taylor and lrp score channels on its train split).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The child run folder to write.")],
    params: Annotated[float | None, typer.Option(help="Share of parameters to keep, like 0.5.")] = None,
    macs: Annotated[float | None, typer.Option(help="Share of MACs to keep, like 0.5.")] = None,
    speedup: Annotated[
        float | None, typer.Option(help="Measured speed-up to reach at every --batch size, like 2.0.")
    ] = None,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes the latency is measured at.")] = "1,64",
    criterion: Annotated[
        str, typer.Option(help="l1, l2 (weight magnitude), bn (BatchNorm scale), taylor, lrp (relevance), synflow.")
    ] = "l2",
    round_to: Annotated[int, typer.Option(help="Keep channel counts multiples of this.")] = 8,
    finetune: Annotated[
        int, typer.Option(help="Epochs of recovery training on DATA, distilled from the parent (0: none).")
    ] = 0,
    finetune_lr: Annotated[
        float | None, typer.Option(help="Learning rate of the recovery (default: a tenth of the parent's).")
    ] = None,
    fold: Annotated[
        bool,
        typer.Option("--fold", help="Save the child with BatchNorm folded into convolutions, blocks re-parameterized."),
    ] = False,
    at_init: Annotated[
        bool, typer.Option("--at-init", help="PreCropping: narrow the architecture RUN names, then train it.")
    ] = False,
    uniform: Annotated[bool, typer.Option(help="With --at-init: the same share in each layer, not SynFlow's.")] = False,
    epochs: Annotated[int, typer.Option(help="With --at-init: epochs of training from scratch on DATA.")] = 0,
    seed: Annotated[int, typer.Option(help="With --at-init: seed of the initialisation and the training.")] = 0,
    split: SplitOption = None,
    strict: StrictOption = False,
    force: Annotated[bool, typer.Option(help="Replace the run folder --out if it exists.")] = False,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Remove whole channels from a run's model (Torch-Pruning's dependency graph) until at most the
    given share of its parameters or MACs remains, or until it runs --speedup times faster at every
    --batch size (latency measured on this machine after each step), and save it as a child run. A
    speed-up that cannot be reached is said, and the fastest model measured is kept.

    The child is an ordinary run folder (safetensors weights, the widths of every layer in model.json,
    its parent in run.json) that eval, predict, explain, robust, export, bench and serve load like any
    other. Top-1 on DATA and latency at batch 1 and 64 are measured for parent and child. --criterion lrp
    scores channels by their LRP relevance ("Pruning by Explaining"; zennit, the optional lrp extra of
    convforge) on 128 training images, ranked across layers. --finetune N
    retrains the child for N epochs on DATA with the parent's recipe (a tenth of its learning rate) and
    the parent as teacher: the student learns the parent's predictions (`convforge train --teacher`).
--fold saves the child for inference: every BatchNorm right after a convolution folded into it and
re-parameterizable blocks folded, checked to give the same logits; it loads like any other run, and
parent and child are then timed folded.

    --at-init is PreCropping (Cai et al. 2022): RUN names an architecture instead; it is built for DATA,
    narrowed before any training to --params or --macs (each layer's width chosen by SynFlow's data-free
    saliency, or the same share everywhere with --uniform), and trained from scratch for --epochs.

    Example: convforge prune runs/resnet18 cifar10:data/cifar10 --speedup 2 --out runs/r18-fast
    """
    output = Output(quiet, as_json)
    from convforge.threads import set_threads

    set_threads(threads)
    from convforge.cli.tables import prune_table
    from convforge.compress.prune_run import prune_run

    if at_init:
        from convforge.compress.precrop import precrop_run
        from convforge.train.config import TrainConfig

        config = TrainConfig(data=data, model=str(run_path), seed=seed, strict=strict)
        cropped = precrop_run(str(run_path), data, out, params=params, macs=macs, speedup=speedup, uniform=uniform,
                              epochs=epochs, round_to=round_to, config=config, force=force)  # fmt: skip
        after, before = cropped.pruning.after, cropped.pruning.before
        output.message(f"{run_path} narrowed at initialisation ({cropped.widths} widths) to "
                       f"{percent(after.params / before.params)} of its parameters and "
                       f"{percent(after.macs / before.macs)} of its MACs, trained {epochs} epoch(s): "
                       f"top-1 {percent(cropped.top1)}; run {out}")  # fmt: skip
        output.result(cropped.to_dict())
        return

    result = prune_run(run_path, data, out, criterion=criterion, params=params, macs=macs, speedup=speedup,
                       batches=tuple(parse_batches(batch)), round_to=round_to, finetune=finetune,
                       finetune_lr=finetune_lr, fold=fold, split=split, strict=strict, force=force)  # fmt: skip
    pruning = result.pruning
    from rich.markup import escape

    for note in pruning.notes:
        output.message(f"[yellow]{escape(note)}[/yellow]")
    if not pruning.reached and pruning.target == "speedup":
        measured = ", ".join(f"{ratio.median:.2f}x ({ratio.low:.2f}-{ratio.high:.2f}) at batch {batch}"
                             for batch, ratio in pruning.speedup.items())  # fmt: skip
        output.message(f"[yellow]the target was not reached: the final paired measurement of parent and child "
                       f"gave {measured}, whose 95% interval does not clear {pruning.goal:g} at every batch "
                       "size; the fastest model measured was kept[/yellow]")  # fmt: skip
    elif not pruning.reached:
        output.message(f"[yellow]the target was not reached: {pruning.target} {pruning.achieved:.3g} against "
                       f"{pruning.goal:g} at the largest pruning ratio; the most pruned model was kept[/yellow]")
    if result.fold:
        kept = len(result.fold["kept"])
        output.message(f"folded {result.fold['folded']} BatchNorm(s) into their convolutions"
                       + (f"; {kept} kept: {escape(', '.join(result.fold['kept'][:3]))}" if kept else "")
                       + (f"; {escape(result.fold['untraceable'])}" if result.fold["untraceable"] else ""))  # fmt: skip
    output.table(prune_table(result.to_dict(), title=f"{run_path} -> {out}"))
    stage = f"after {finetune} epoch(s) of distillation" if finetune else "before any fine-tuning"
    output.message(f"top-1 {percent(result.parent_top1)} -> {percent(result.top1)} {stage}; child run {out}")
    output.result(result.to_dict())


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_command)
