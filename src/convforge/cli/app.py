"""The `convforge` command: a Typer app with one module per command.

Click already answers a mistyped command or option with "Did you mean ...?".
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="convforge",
    help="The whole life of a convolutional vision model: build, train, explain, stress, compress, "
    "measure, export and serve it. Start with `convforge demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from convforge.cli import demo, evaluate, explain, models, predict, report, robust, train

    for module in (models, train, evaluate, predict, explain, robust, report, demo):
        module.register(app)


_register()


def main() -> None:
    app()
