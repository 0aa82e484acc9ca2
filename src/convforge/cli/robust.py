"""`convforge robust RUN DATA`: a run's robustness report card (attacks, corruptions, shape bias).

Parse, call `convforge.robust.card`, print. Library modules are imported inside the command, so that
`--help` does not import torch.
"""

from pathlib import Path
from typing import Annotated

import typer

from convforge.cli.common import (
    BatchSizeOption,
    DeviceOption,
    JsonOption,
    Output,
    QuietOption,
    SplitOption,
    StrictOption,
    user_errors,
)
from convforge.cli.tables import print_card
from convforge.errors import ConfigError


@user_errors
def robust_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder with a trained model.")],
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
    n: Annotated[int, typer.Option("--n", help="Images, spread evenly over the split.")] = 512,
    split: SplitOption = None,
    batch_size: BatchSizeOption = 128,
    seed: Annotated[int, typer.Option(help="Seed of random starts and corruption noise.")] = 0,
    device: DeviceOption = "auto",
    strict: StrictOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Measure how a run's model fails: adversarial attacks, common corruptions and shape bias.

    Attacks and corruptions work on [0, 1] pixels and the model's own normalisation is applied
    after them. Writes curves and a table into RUN/artifacts/robust/, appends the numbers to
    metrics.jsonl and adds a "Robustness" section to the report.

    Example: convforge robust runs/demo shapes --attacks fgsm,pgd,apgd --eps 1/255,2/255,4/255,8/255
    --corruptions all --severities 1-5 --bias
    """
    output = Output(quiet, as_json)
    if n < 1 or batch_size < 1:
        raise ConfigError("--n and --batch-size must be at least 1")
    from convforge.checkpoint import load_model
    from convforge.device import resolve_device
    from convforge.report import build_report
    from convforge.robust.attacks import check_attack_name, parse_epsilons
    from convforge.robust.card import latest_corruptions, robustness_card, write_card
    from convforge.robust.corruptions import parse_severities, resolve_families
    from convforge.runs import ROBUST_DIR, Run

    attack_names = [] if attacks.strip() == "none" else [check_attack_name(a) for a in attacks.split(",") if a.strip()]
    families = [] if corruptions.strip() == "none" else resolve_families(corruptions)
    epsilons = parse_epsilons(eps, "l2" if attack_names and all(a.endswith("-l2") for a in attack_names) else "linf")
    severity_list = parse_severities(severities)
    baseline_table = latest_corruptions(baseline) if baseline is not None else None
    run = Run.open(run_path)
    target_device = resolve_device(device)
    model, spec = load_model(run.path, device=target_device)
    output.message(f"measuring {run.path} on up to {n} images of {data} ...")
    card = robustness_card(
        model, spec, data, split=split, images=n, attacks=attack_names, epsilons=epsilons, steps=steps,
        families=families, severities=severity_list, preset=preset, bias_images=n if bias else 0,
        baseline=baseline_table, baseline_name=str(baseline) if baseline else "", batch_size=batch_size,
        seed=seed, strict=strict, device=target_device,
    )  # fmt: skip
    files = write_card(run, card)
    report = build_report(run.path)
    print_card(output, card)
    if card.skipped_files:
        output.message(f"[yellow]{card.skipped_files} unreadable image(s) skipped[/yellow]")
    output.message(f"curves and table in {run.artifacts / ROBUST_DIR}; report {report}")
    output.result({"run": str(run.path), **card.to_dict(), "files": files})


def register(app: typer.Typer) -> None:
    app.command("robust")(robust_command)
