"""`convforge explain RUN (IMAGE...|DATA)`: what a run's model looks at, drawn and measured.

Parse, call `convforge.explain`, print. Library modules are imported inside the command, so that
`--help` does not import torch.
"""

from pathlib import Path
from typing import Annotated

import typer

from convforge.cli.common import (
    DeviceOption,
    JsonOption,
    Output,
    QuietOption,
    SplitOption,
    StrictOption,
    ThreadsOption,
    user_errors,
)
from convforge.cli.tables import comparison_table
from convforge.errors import ConfigError

DEFAULT_METHODS = "gradcam,gradcam++,layercam,eigencam,scorecam"


@user_errors
def explain_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder with a trained model.")],
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="IMAGE...|DATA",
            help="Image files or folders of images, or one dataset spec (shapes, a class-folder tree, ...).",
        ),
    ],
    method: Annotated[
        str, typer.Option("--method", help="Comma-separated: gradcam, gradcam++, xgradcam, hirescam, layercam, "
                          "eigencam, scorecam, rise.")
    ] = DEFAULT_METHODS,  # fmt: skip
    n: Annotated[int, typer.Option("--n", help="Images to draw per method.")] = 16,
    layer: Annotated[
        str | None, typer.Option(help="Layer to explain (default: the last spatial map the logits depend on).")
    ] = None,
    split: SplitOption = None,
    metric_images: Annotated[
        int, typer.Option(help="Dataset images explained and scored against ground-truth masks.")
    ] = 256,
    faithfulness_images: Annotated[
        int, typer.Option(help="Images for deletion/insertion AUC (0: skip).")
    ] = 64,
    sanity_images: Annotated[
        int, typer.Option(help="Images for the weight-randomisation sanity check (0: skip).")
    ] = 16,
    steps: Annotated[int, typer.Option(help="Deletion/insertion steps.")] = 16,
    rise_masks: Annotated[int, typer.Option(help="Random masks per image for RISE.")] = 1000,
    device: DeviceOption = "auto",
    strict: StrictOption = False,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Draw and measure what a run's model looks at, with several CAM methods side by side.

    Writes overlays and one grid per method into RUN/artifacts/explain/, appends the scores to
    metrics.jsonl and adds an "Explanations" section to the report. With a dataset that has
    ground-truth masks (the built-in shapes), each method's pointing game and energy inside the
    object are measured against a random map.

    Example: convforge explain runs/demo shapes --method gradcam,eigencam --n 16
    """
    output = Output(quiet, as_json)
    from convforge.threads import set_threads

    set_threads(threads)
    if n < 1 or metric_images < 1:
        raise ConfigError("--n and --metric-images must be at least 1")
    from convforge.checkpoint import load_model
    from convforge.data.spec import is_dataset_spec
    from convforge.device import resolve_device
    from convforge.explain.artifacts import explain_into_run
    from convforge.explain.inputs import dataset_inputs, file_inputs
    from convforge.report import build_report
    from convforge.runs import EXPLAIN_DIR, Run

    methods = [m for m in (part.strip() for part in method.split(",")) if m]
    run = Run.open(run_path)
    target_device = resolve_device(device)
    model, spec = load_model(run.path, device=target_device)
    if is_dataset_spec(inputs):
        data = dataset_inputs(inputs[0], spec, split, max(n, metric_images), target_device, strict)
    else:
        data, problems = file_inputs(inputs, spec, target_device)
        for problem in problems:
            output.message(f"[yellow]skipped unreadable image {problem}[/yellow]")
    comparison = explain_into_run(
        run,
        model,
        spec,
        data,
        methods,
        shown=n,
        layer=layer,
        faithfulness_images=faithfulness_images,
        sanity_images=sanity_images,
        steps=steps,
        rise_masks=rise_masks,
    )
    report = build_report(run.path)
    output.table(comparison_table(comparison, f"{run.path}: {comparison.images} image(s) from {data.source}"))
    if data.skipped:
        output.message(f"[yellow]{data.skipped} unreadable image(s) skipped[/yellow]")
    output.message(f"overlays and grids in {run.artifacts / EXPLAIN_DIR}; report {report}")
    output.result({"run": str(run.path), **comparison.to_dict()})


def register(app: typer.Typer) -> None:
    app.command("explain")(explain_command)
