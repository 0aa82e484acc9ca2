"""`convforge report RUN`: (re)build a run's self-contained HTML report."""

from pathlib import Path
from typing import Annotated

import typer

from convforge.cli.common import JsonOption, Output, QuietOption, user_errors


@user_errors
def report_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder.")],
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write the run's self-contained HTML report.

    RUN/report.html holds the summary and lineage, training curves, confusion matrix, per-class
    accuracy and sample predictions, with every picture embedded.

    Example: convforge report runs/demo
    """
    output = Output(quiet, as_json)
    from convforge.report import build_report

    path = build_report(run_path)
    output.result({"report": str(path)}, text=f"report: {path}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
