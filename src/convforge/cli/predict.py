"""`convforge predict RUN IMAGE...`: top-k classes for image files or folders (library imports in the
body)."""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from convforge.cli.common import (
    ClassesOption,
    DeviceOption,
    InferenceAmpOption,
    JsonOption,
    MaxPixelsOption,
    MeanOption,
    Output,
    QuietOption,
    SizeOption,
    StdOption,
    ThreadsOption,
    onnx_overrides,
    user_errors,
)
from convforge.data.limits import DEFAULT_MAX_PIXELS
from convforge.errors import ConfigError


@user_errors
def predict_command(
    run_path: Annotated[
        Path, typer.Argument(metavar="RUN", help="Run folder with a trained model, or an .onnx file (ONNX Runtime).")
    ],
    images: Annotated[
        list[str], typer.Argument(metavar="IMAGE...", help="Image files or folders of images.")
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to show per image.")] = 3,
    amp: InferenceAmpOption = "off",
    device: DeviceOption = "auto",
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    classes: ClassesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    size: SizeOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Predict the classes of images with a run's model.

    An image that cannot be read gets its reason in the table instead of classes; the others are still
    predicted, and the command then exits with status 1 (2 for a usage mistake, 0 when all were read).

    RUN may also be an exported .onnx file, run by ONNX Runtime.

    Example: convforge predict runs/demo photo1.jpg photos/ --top-k 3
    """
    output = Output(quiet, as_json)
    if top_k < 1:
        raise ConfigError(f"--top-k is how many classes to show, at least 1; got {top_k}")
    from convforge.threads import set_threads

    set_threads(threads)
    from convforge.data.decode import expand_image_paths
    from convforge.deploy.backends import open_model
    from convforge.deploy.predict import predict_files
    from convforge.device import resolve_device, resolve_inference_amp

    target_device = resolve_device(device)
    overrides = onnx_overrides(classes, mean, std, size)
    model, spec, _ = open_model(run_path, device=target_device, threads=threads, **overrides)
    files = expand_image_paths(images)
    predictions = predict_files(
        model,
        spec,
        files,
        top_k=top_k,
        device=target_device,
        amp_dtype=None if run_path.suffix == ".onnx" else resolve_inference_amp(amp, target_device),
        max_pixels=max_pixels,
    )
    precision = next((p.precision for p in predictions), "float32")
    table = Table(title=f"{run_path}: {len(files)} image(s), {precision}")
    table.add_column("image", overflow="fold")
    table.add_column("prediction")
    for prediction in predictions:
        if prediction.error:
            table.add_row(prediction.path, f"[red]unreadable: {prediction.error}[/red]")
        else:
            table.add_row(prediction.path, "  ".join(f"{name} {100 * p:.1f}%" for name, p in prediction.top))
    output.table(table)
    failed = sum(p.error is not None for p in predictions)
    if failed:
        output.message(f"[yellow]{failed} of {len(files)} image(s) could not be read[/yellow]")
    output.result([p.to_dict() for p in predictions])
    if failed:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
