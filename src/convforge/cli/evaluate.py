"""`convforge eval RUN DATA`: evaluate a run's model on a dataset (library imports in the body)."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from convforge.cli.common import (
    BatchSizeOption,
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
    StrictOption,
    ThreadsOption,
    onnx_overrides,
    user_errors,
)
from convforge.cli.tables import eval_table
from convforge.data.limits import DEFAULT_MAX_PIXELS
from convforge.errors import DatasetError

if TYPE_CHECKING:
    from convforge.runs import Run


@user_errors
def eval_command(
    run_path: Annotated[
        Path, typer.Argument(metavar="RUN", help="Run folder with a trained model, or an .onnx file (ONNX Runtime).")
    ],
    data: Annotated[str, typer.Argument(help="Dataset spec (same forms as convforge train).")],
    split: Annotated[
        str | None,
        typer.Option(
            help="train, val or test (default: test, else val, else all). On the run's own training data, "
            "val is the validation split training held out of train."
        ),
    ] = None,
    batch_size: BatchSizeOption = 256,
    amp: InferenceAmpOption = "off",
    device: DeviceOption = "auto",
    strict: StrictOption = False,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    classes: ClassesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    size: SizeOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a run's model: top-1, top-5, per-class accuracy and confusion matrix.

    The result is appended to the run's metrics.jsonl and shows up in its report. Data with only some
    of the model's classes is evaluated on those (matched by name); the others are named. One split is
    evaluated, and of data not yet in the cache only that split is decoded: --split, or else test, val
    or train, the first the data has.

    An exported file (RUN/artifacts/model.onnx, model.int8.onnx, or any .onnx) runs in ONNX Runtime;
    its result joins the run it belongs to.

    Example: convforge eval runs/resnet18 cifar10:data/cifar10-jpg.tar.gz --split test
    """
    output = Output(quiet, as_json)
    from convforge.threads import set_threads

    set_threads(threads)
    from convforge.data.imageset import EVAL_SPLIT_ORDER
    from convforge.data.sample import align_classes, missing_classes
    from convforge.data.spec import absolute_spec, load_dataset
    from convforge.deploy.backends import open_model
    from convforge.device import resolve_device, resolve_inference_amp
    from convforge.run_samples import save_prediction_samples
    from convforge.train.evaluate import evaluate

    target_device = resolve_device(device)
    overrides = onnx_overrides(classes, mean, std, size)
    model, spec, run = open_model(run_path, device=target_device, threads=threads, **overrides)
    is_onnx = run_path.suffix == ".onnx"
    dataset = load_dataset(data, strict=strict, channels=spec.in_chans, max_pixels=max_pixels,
                           splits=(split,) if split else EVAL_SPLIT_ORDER,
                           **(_training_val_split(run, data, split) if run else {}))  # fmt: skip
    if split is not None and split not in dataset.splits:
        raise DatasetError(f"{data} has no {split!r} split; it has {sorted(dataset.splits)}")
    imageset = dataset.splits[split] if split else dataset.eval_split()
    imageset = align_classes(imageset, spec.classes, data)
    missing = missing_classes(dataset.classes, spec.classes)
    if missing:
        output.message(
            f"[yellow]{data} has no images of {len(missing)} of the model's {len(spec.classes)} classes[/yellow] "
            f"({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}); evaluating on the other "
            f"{len(spec.classes) - len(missing)}"
        )
    if dataset.skipped:
        output.message(f"[yellow]skipped {len(dataset.skipped)} unreadable image(s)[/yellow]")
    result = evaluate(
        model,
        imageset,
        spec.preprocessing,
        batch_size=batch_size,
        device=target_device,
        amp_dtype=None if is_onnx else resolve_inference_amp(amp, target_device),  # ONNX Runtime runs the file as it is
    )
    model_file = {"model_file": str(run_path)} if is_onnx else {}
    if run is not None:
        run.append_metrics(
            {
                "kind": "eval",
                "data": absolute_spec(data),
                "skipped_files": len(dataset.skipped),
                "missing_classes": missing,
                **model_file,
                **result.to_dict(),
            }
        )
        headline = (run.info.get("test") or {}).get("split", imageset.name)
        if not is_onnx and imageset.name == headline:  # the report's samples stay those of its test figure
            save_prediction_samples(run, imageset, result)
    output.table(eval_table(result, title=f"{run_path} on {data}"))
    output.result(
        {
            "run": str(run.path) if run else None,
            **model_file,
            "data": data,
            "skipped_files": len(dataset.skipped),
            "missing_classes": missing,
            **result.to_dict(),
        }
    )


def _training_val_split(run: "Run", data: str, split: str | None) -> dict:
    """On the run's own training data, --split val means the validation split training carved out of
    train (same fraction, same seed), as recorded in run.json."""
    from convforge.data.spec import absolute_spec

    info = run.info
    config = info.get("config", {})
    if split != "val" or info.get("stage") != "train" or absolute_spec(data) != config.get("data"):
        return {}
    carved = (info.get("data") or {}).get("val_from_train")
    if carved is None:  # runs from before the split was recorded: their config says how it was drawn
        carved = {"fraction": config.get("val_fraction", 0.0), "seed": config.get("seed", 0)}
    return {"val_fraction": carved["fraction"], "seed": carved["seed"]}


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
