"""`convforge eval RUN DATA`: evaluate a run's model on a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convforge.checkpoint import load_model
from convforge.cli.common import DeviceOption, JsonOption, Output, QuietOption, eval_table, user_errors
from convforge.data import load_dataset
from convforge.errors import DatasetError
from convforge.runs import Run
from convforge.train.evaluate import align_classes, evaluate
from convforge.train.samples import save_prediction_samples
from convforge.train.setup import resolve_amp, resolve_device


@user_errors
def eval_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder with a trained model.")],
    data: Annotated[str, typer.Argument(help="Dataset spec (same forms as convforge train).")],
    split: Annotated[
        str | None, typer.Option(help="train, val or test (default: test, else val, else all).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b")] = 256,
    amp: Annotated[str, typer.Option(help="auto, bf16, fp16 or off.")] = "auto",
    device: DeviceOption = "auto",
    strict: Annotated[bool, typer.Option(help="Stop on unreadable images instead of skipping them.")] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a run's model: top-1, top-5, per-class accuracy and confusion matrix.

    The result is appended to the run's metrics.jsonl and shows up in its report.

    Example: convforge eval runs/resnet18 cifar10:data/cifar10-jpg.tar.gz --split test
    """
    output = Output(quiet, as_json)
    run = Run.open(run_path)
    target_device = resolve_device(device)
    model, spec = load_model(run.path, device=target_device)
    dataset = load_dataset(data, strict=strict, channels=spec.in_chans)
    if split is not None and split not in dataset.splits:
        raise DatasetError(f"{data} has no {split!r} split; it has {sorted(dataset.splits)}")
    imageset = dataset.splits[split] if split else dataset.eval_split()
    imageset = align_classes(imageset, spec.classes, data)
    if dataset.skipped:
        output.message(f"[yellow]skipped {len(dataset.skipped)} unreadable image(s)[/yellow]")
    result = evaluate(
        model,
        imageset,
        spec.preprocessing,
        batch_size=batch_size,
        device=target_device,
        amp_dtype=resolve_amp(amp, target_device),
    )
    run.append_metrics(
        {"kind": "eval", "data": data, "skipped_files": len(dataset.skipped), **result.to_dict()}
    )
    save_prediction_samples(run, imageset, result)
    output.table(eval_table(result, title=f"{run.path} on {data}"))
    output.result(
        {"run": str(run.path), "data": data, "skipped_files": len(dataset.skipped), **result.to_dict()}
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
