"""The `convforge` command: a Typer app with one module per command.

Click already answers a mistyped command or option with "Did you mean ...?".
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="convforge",
    # Only what the commands below do.
    help="Build a convolutional vision model from a zoo of architectures, train it on your images, "
    "evaluate it, explain what it looks at, stress it with attacks and corruptions, export it to ONNX, "
    "prune and quantize it, measure what it costs and serve it over HTTP; one run folder keeps its whole "
    "history; write your data as WebDataset shards to stream it to several processes. "
    "Start with `convforge demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # the installed version, without importing torch

        typer.echo(f"convforge {version('convforge')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Options of `convforge` itself (before the command)."""


def _register() -> None:
    from convforge.cli import (
        bench,
        demo,
        evaluate,
        explain,
        export,
        models,
        predict,
        prune,
        quantize,
        report,
        robust,
        serve,
        shard,
        train,
    )  # fmt: skip

    commands = (models, shard, train, evaluate, predict, explain, robust, export, quantize, prune, bench, serve, report,
                demo)  # fmt: skip
    for module in commands:
        module.register(app)


_register()


def main() -> None:
    app()
