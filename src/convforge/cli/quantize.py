"""`convforge quantize RUN DATA`: INT8 from the run's exported model, evaluated against fp32 and
searched until the accuracy budget holds (library imports in the body)."""

from pathlib import Path
from typing import Annotated

import typer

from convforge.cli.common import (
    JsonOption,
    Output,
    QuietOption,
    SplitOption,
    StrictOption,
    percent,
    user_errors,
)
from convforge.cli.tables import speedup_text


@user_errors
def quantize_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder with an exported model.onnx.")],
    data: Annotated[str, typer.Argument(help="Dataset: calibration from its train split, evaluation on --split.")],
    calibration: Annotated[int, typer.Option(help="Calibration images (seeded, spread over the classes).")] = 512,
    method: Annotated[str, typer.Option(help="Calibration method: minmax, entropy or percentile.")] = "minmax",
    max_drop: Annotated[
        float, typer.Option(help="Most top-1 points INT8 may lose; beyond it the search tries more.")
    ] = 1.0,
    min_agreement: Annotated[
        float, typer.Option(help="Least share of test images on which INT8 must predict what fp32 does.")
    ] = 0.95,
    split: SplitOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the calibration draw.")] = 0,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime threads (default: all cores).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing model.int8.onnx.")] = False,
    strict: StrictOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Quantize a run's exported model to INT8 and check what it costs in accuracy.

    Static post-training quantization with ONNX Runtime (QDQ, per-channel weights). fp32 and INT8 are
    evaluated on the test split and timed at batch 1 and 64. When INT8 loses more than --max-drop
    points of top-1, or agrees with fp32 on fewer than --min-agreement of the images, the other
    calibration methods are tried, then the layers whose quantization hurts most stay in fp32 until
    the budget holds; the result names them.

    Example: convforge quantize runs/resnet18 cifar10:data/cifar10-jpg.tar.gz --calibration 512
    """
    output = Output(quiet, as_json)
    from rich.table import Table

    from convforge.compress.quantize_run import quantize_run

    result = quantize_run(run_path, data, calibration=calibration, method=method, max_drop=max_drop,
                          min_agreement=min_agreement, split=split, seed=seed, threads=threads, strict=strict,
                          force=force)  # fmt: skip
    table = Table(title=f"{run_path / result.path} ({result.method}, {result.calibration_images} calibration images)")
    for column in ("", "top-1", "size MB", "batch 1 ms", "batch 64 img/s", "speed-up at 1", "at 64"):
        table.add_column(column, justify="left" if not column else "right")
    for name, top1, size in (("fp32 (ort)", result.fp32_top1, result.fp32_size_bytes),
                             ("int8 (ort-int8)", result.int8_top1, result.size_bytes)):  # fmt: skip
        key = "ort" if name.startswith("fp32") else "ort-int8"
        speedups = [speedup_text(result.speedup[b]) if key == "ort-int8" else "" for b in (1, 64)]
        table.add_row(name, percent(top1), f"{size / 1e6:.1f}", f"{result.latency_ms[key][1]:.2f}",
                      f"{result.images_per_second[key][64]:.0f}", *speedups)  # fmt: skip
    output.table(table)
    verdict = "within" if result.within_budget else "[bold red]beyond[/bold red]"
    kept = f"; kept in fp32: {', '.join(result.kept_fp32)}" if result.kept_fp32 else ""
    output.message(f"top-1 drop {result.drop_points:.2f} points and agreement with fp32 {percent(result.agreement)}: "
                   f"{verdict} the budget of {max_drop:g} points and {percent(min_agreement)}{kept}")  # fmt: skip
    output.result(result.to_dict(), text=f"quantized: {run_path / result.path}")
    if not result.within_budget:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
