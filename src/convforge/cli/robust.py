"""`convforge robust RUN DATA`: a run's robustness report card (attacks, corruptions, shape bias).

Parse, call `convforge.robust.card`, print. Library modules are imported inside the command, so that
`--help` does not import torch.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from convforge.cli.common import (
    BatchSizeOption,
    ClassesOption,
    DeviceOption,
    JsonOption,
    MeanOption,
    Output,
    QuietOption,
    SizeOption,
    SplitOption,
    StdOption,
    StrictOption,
    ThreadsOption,
    onnx_overrides,
    user_errors,
)
from convforge.cli.tables import print_card, robust_comparison_table
from convforge.errors import ConfigError


@user_errors
def robust_command(
    model_path: Annotated[
        Path, typer.Argument(metavar="MODEL", help="Run folder with a trained model, or an .onnx file.")
    ],
    data: Annotated[str, typer.Argument(help="Dataset spec to measure on (shapes, a folder, cifar10:PATH, ...).")],
    attacks: Annotated[
        str, typer.Option(help="Comma-separated: fgsm, pgd, pgd-l2, apgd, apgd-l2, or none.")
    ] = "fgsm,pgd",
    eps: Annotated[str, typer.Option(help="Budgets on [0, 1] pixels, comma-separated: 8/255 or 0.031.")] = (
        "1/255,2/255,4/255,8/255"
    ),
    steps: Annotated[int | None, typer.Option(help="Iterations (default: PGD 10, APGD 100).")] = None,
    corruptions: Annotated[str, typer.Option(help="Comma-separated families, all, or none.")] = "all",
    severities: Annotated[str, typer.Option(help="Severities 1-5: '1-5', '3' or '1,3,5'.")] = "1-5",
    preset: Annotated[str, typer.Option(help="Corruption parameters: auto, imagenet (224 px) or cifar (32 px).")] = (
        "auto"
    ),
    bias: Annotated[bool, typer.Option("--bias", help="Measure shape bias on cue-conflict shapes.")] = False,
    baseline: Annotated[
        Path | None, typer.Option(help="Run whose corruption errors are the mCE baseline (ran robust before).")
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="For a run folder, its models to measure side by side: torch, torch-bf16, ort (model.onnx), "
            "ort-int8 (model.int8.onnx).",
        ),
    ] = "torch",
    source: Annotated[
        Path | None,
        typer.Option(
            help="For an .onnx file outside a run folder: the run whose PyTorch model crafts the attacks."
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Images, spread evenly over the split.")] = 512,
    split: SplitOption = None,
    batch_size: BatchSizeOption = 128,
    seed: Annotated[int, typer.Option(help="Seed of random starts and corruption noise.")] = 0,
    device: DeviceOption = "auto",
    strict: StrictOption = False,
    classes: ClassesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    size: SizeOption = None,
    threads: ThreadsOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Measure how a model fails: adversarial attacks, common corruptions and shape bias.

    Attacks and corruptions work on [0, 1] pixels and the model's own normalisation is applied
    after them. Writes curves and a table into RUN/artifacts/robust/, appends the numbers to
    metrics.jsonl and adds a "Robustness" section to the report.

    Exported models: an ONNX model has no gradients, so its attacks are crafted on the run's PyTorch
    model and scored on the ONNX model (transfer attacks); corruptions are applied to it directly.
    `--backend torch,ort,ort-int8` measures a run's PyTorch, exported and INT8 models on the same
    images, corruptions and adversarial images and prints them side by side; the report's Deployment
    section shows the comparison.

    Example: convforge robust runs/demo shapes --attacks fgsm,pgd,apgd --eps 1/255,2/255,4/255,8/255
    --corruptions all --severities 1-5 --bias

    Example: convforge robust runs/demo shapes --backend torch,ort-int8
    """
    output = Output(quiet, as_json)
    from convforge.threads import set_threads

    set_threads(threads)
    if n < 1 or batch_size < 1:
        raise ConfigError("--n and --batch-size must be at least 1")
    from convforge.device import resolve_device
    from convforge.report import build_report
    from convforge.robust.attacks import check_attack_name, parse_epsilons
    from convforge.robust.card import latest_corruptions, robustness_cards, write_card
    from convforge.robust.corruptions import parse_severities, resolve_families
    from convforge.runs import ROBUST_DIR

    attack_names = [] if attacks.strip() == "none" else [check_attack_name(a) for a in attacks.split(",") if a.strip()]
    families = [] if corruptions.strip() == "none" else resolve_families(corruptions)
    epsilons = parse_epsilons(eps, "l2" if attack_names and all(a.endswith("-l2") for a in attack_names) else "linf")
    severity_list = parse_severities(severities)
    baseline_table = latest_corruptions(baseline) if baseline is not None else None
    target_device = resolve_device(device)
    opened = _open_models(model_path, backend, source, bool(attack_names), target_device,
                          onnx_overrides(classes, mean, std, size))  # fmt: skip
    output.message(f"measuring {', '.join(opened.models)} of {model_path} on up to {n} images of {data} ...")
    cards = robustness_cards(
        opened.models, opened.spec, data, attack_source=opened.attack_source, split=split, images=n,
        attacks=attack_names, epsilons=epsilons, steps=steps, families=families, severities=severity_list,
        preset=preset, bias_images=n if bias else 0, baseline=baseline_table,
        baseline_name=str(baseline) if baseline else "", batch_size=batch_size, seed=seed, strict=strict,
        device=target_device,
    )  # fmt: skip
    files = {name: write_card(opened.run, card) for name, card in cards.items()} if opened.run else {}
    if len(cards) == 1:
        print_card(output, next(iter(cards.values())))
    else:  # each model's full tables are in its files and the report
        output.table(robust_comparison_table({name: card.to_dict() for name, card in cards.items()}))
    transferred = [card.model for card in cards.values() if card.attacks_crafted_on]
    if transferred:
        output.message(f"attacks crafted on the PyTorch model and transferred to {', '.join(transferred)}")
    card = next(iter(cards.values()))
    if card.skipped_files:
        output.message(f"[yellow]{card.skipped_files} unreadable image(s) skipped[/yellow]")
    if opened.run:
        report = build_report(opened.run.path)
        output.message(f"curves and tables in {opened.run.artifacts / ROBUST_DIR}; report {report}")
    else:
        output.message(f"{model_path} is not in a run folder: results printed, nothing written")
    result = {name: {**card.to_dict(), "files": files.get(name, {})} for name, card in cards.items()}
    run = {"run": str(opened.run.path) if opened.run else None}
    output.result({**run, **result[card.model]} if len(cards) == 1 else {**run, "models": result})


@dataclass
class _Opened:
    models: dict  # name -> module, measured side by side
    spec: Any
    attack_source: Any  # the PyTorch model the attacks are crafted on (None: the one in `models`)
    run: Any  # the run folder the results go to, or None


def _open_models(path: Path, backend: str, source: Path | None, attacks: bool, device, overrides) -> _Opened:
    """The models a robust call measures: a run's backends, or an .onnx file with the PyTorch model that
    crafts its attacks (the run it belongs to, or --source)."""
    from convforge.checkpoint import load_model
    from convforge.deploy.backends import (
        BackendUnavailable,
        file_backend,
        open_model,
        parse_backends,
        run_backend,
    )
    from convforge.runs import Run

    names = parse_backends(backend)
    if path.suffix == ".onnx":
        if names != ["torch"]:
            raise ConfigError(f"--backend chooses among a run folder's models; {path} is one .onnx file")
        model, spec, run = open_model(path, **overrides)
        attacker_run = run or (Run.open(source) if source is not None else None)
        if attacks and attacker_run is None:
            raise ConfigError(
                f"an ONNX model has no gradients, so attacks are crafted on a PyTorch model: {path} is not in a run "
                "folder; give --source RUN (the run it was exported from), or --attacks none"
            )
        attacker = None
        if attacks:
            attacker, attacker_spec = load_model(attacker_run.path, device=device)
            if list(attacker_spec.classes) != list(spec.classes):
                raise ConfigError(
                    f"{attacker_run.path} predicts other classes than {path}; give the run it came from"
                )
        return _Opened({file_backend(path) if run else path.name: model}, spec, attacker, run)
    if source is not None:
        raise ConfigError(
            "--source is for an .onnx file; a run folder crafts attacks on its own PyTorch model"
        )
    run = Run.open(path)
    model, spec = load_model(run.path, device=device)
    try:
        models = {name: run_backend(run, model, name) for name in names}
    except BackendUnavailable as exc:
        raise ConfigError(str(exc)) from None
    return _Opened(models, spec, model, run)


def register(app: typer.Typer) -> None:
    app.command("robust")(robust_command)
