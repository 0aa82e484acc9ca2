"""`convforge export RUN`: the run's best weights as RUN/artifacts/model.onnx, handed over only when
ONNX Runtime agrees with PyTorch on the run's own images (library imports in the body)."""

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
    user_errors,
)
from convforge.cli.tables import export_table

_ATOL, _MIN_AGREEMENT = 1e-3, 0.99  # convforge.deploy.export's defaults, without importing torch


@user_errors
def export_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder with a trained model.")],
    data: Annotated[
        str | None, typer.Option(help="Dataset for the parity check (default: the data the run trained on).")
    ] = None,
    split: SplitOption = None,
    images: Annotated[int, typer.Option(help="Images the parity check compares (all when fewer).")] = 256,
    atol: Annotated[float, typer.Option(
        help="Largest accepted |logit difference| PyTorch vs ONNX, per unit of the largest |logit| (at least 1)."
    )] = _ATOL,
    min_agreement: Annotated[
        float, typer.Option(help="Smallest accepted share of images with the same top-1 class.")
    ] = _MIN_AGREEMENT,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's recommended one).")] = None,
    fold: Annotated[bool, typer.Option(help="Fold BatchNorm into the convolution before it.")] = True,
    force: Annotated[bool, typer.Option(help="Replace an existing model.onnx.")] = False,
    diagnose: Annotated[
        bool, typer.Option(help="Compare every module's output, PyTorch against ONNX (done anyway on a failed gate).")
    ] = False,
    strict: StrictOption = False,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export a run's model to ONNX with a parity check against PyTorch.

    The model is re-parameterized, BatchNorm is folded, the batch axis is dynamic, and the file's
    metadata carries class names, mean, std and input size. If ONNX Runtime and PyTorch disagree
    beyond --atol or --min-agreement, the file is kept as model.onnx.rejected, the first module whose
    output differs is named, and the command exits 1.

    Example: convforge export runs/resnet18 --images 512
    """
    output = Output(quiet, as_json)
    from convforge.threads import set_threads

    set_threads(threads)
    from convforge.deploy.export import ParityError, export_run

    try:
        result = export_run(run_path, data=data, split=split, images=images, strict=strict, opset=opset, fold=fold,
                            atol=atol, min_agreement=min_agreement, force=force, diagnose=diagnose)  # fmt: skip
    except ParityError as exc:
        output.table(export_table(exc.parity.to_dict(), title=f"{run_path}: export REJECTED"))
        output.err.print(f"[bold red]parity check failed:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    output.table(export_table(result.parity.to_dict(), title=f"{run_path / result.path}"))
    if result.divergence is not None:
        output.message(f"module by module: {result.divergence.describe()}")
    output.result(result.to_dict(), text=f"exported: {run_path / result.path} ({result.size_bytes / 1e6:.1f} MB, "
                                         f"opset {result.opset})")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
