"""`convforge models [PATTERN]`: the architectures convforge can build."""

from collections import defaultdict
from contextlib import nullcontext
from typing import Annotated

import typer
from rich.table import Table

from convforge.cli.common import JsonOption, Output, QuietOption, user_errors


@user_errors
def models(
    pattern: Annotated[
        str | None, typer.Argument(help="Wildcard or substring, e.g. 'resnet*' or convnext.")
    ] = None,
    input_size: Annotated[int | None, typer.Option(help="Count GMACs at this square input size.")] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Every architecture, with counts (slow once).")
    ] = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """List architectures: family, parameters, GMACs and paper.

    Without a PATTERN, one line per family. Counts are computed on PyTorch's meta device and
    cached, so the first listing of a large family takes a few seconds.

    Example: convforge models 'resnet1*' --input-size 64
    """
    output = Output(quiet, as_json)
    from convforge.models import list_models

    if pattern is None and not all_models:
        infos = list_models(with_stats=False)
        families = defaultdict(list)
        for info in infos:
            families[info.family].append(info)
        table = Table(
            title=f"{len(infos)} architectures in {len(families)} families "
            "(convforge models PATTERN for parameters and GMACs)"
        )
        for column in ("family", "architectures", "examples", "paper"):
            table.add_column(column, overflow="fold")
        for family, members in sorted(families.items()):
            examples = ", ".join(m.name for m in members[:3]) + (", ..." if len(members) > 3 else "")
            table.add_row(family, str(len(members)), examples, members[0].paper or "")
        output.table(table)
        output.result({family: [m.name for m in members] for family, members in sorted(families.items())})
        return
    with output.err.status("counting parameters and GMACs ...") if not output.quiet else nullcontext():
        infos = list_models(pattern, input_size=input_size)
    if not infos:
        output.message(f"no architecture matches {pattern!r}; try a shorter pattern")
    table = Table(title=f"{len(infos)} architectures" + (f" matching {pattern!r}" if pattern else ""))
    for column, justify in (
        ("name", "left"),
        ("family", "left"),
        ("params (M)", "right"),
        ("GMACs", "right"),
        ("input", "right"),
        ("paper", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")
    for info in infos:
        table.add_row(
            info.name,
            info.family,
            f"{info.params / 1e6:.2f}" if info.params is not None else "?",
            f"{info.gmacs:.3f}" if info.gmacs is not None else "?",
            "x".join(map(str, info.input_size[1:])),
            info.paper or "",
        )
    output.table(table)
    output.result([info.to_dict() for info in infos])


def register(app: typer.Typer) -> None:
    app.command("models")(models)
