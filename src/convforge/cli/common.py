"""What every command shares: user-error handling, --quiet/--json output, options declared once,
small parsers. Imports no library module that imports torch (the CLI stays fast to start)."""

import errno
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from convforge.errors import ConfigError, UserError

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final result.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (for scripts).")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
SplitOption = Annotated[str | None, typer.Option(help="Dataset split (default: test, else val, else all).")]
StrictOption = Annotated[bool, typer.Option(help="Stop on unreadable images instead of skipping them.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", "-b", help="Images per batch.")]
AmpOption = Annotated[str, typer.Option(help="auto (bf16 where the hardware has it), bf16, fp16 or off.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        help="Intra-op threads of the model (default: one per core). Fewer leave cores to other work on a "
        "shared machine.",
        min=1,
    ),
]
# Evaluation and prediction report what the deployed float32 model computes unless asked otherwise
InferenceAmpOption = Annotated[
    str,
    typer.Option(
        "--amp",
        help="off (float32, what the exported model computes; the default), bf16, or fp16 (CUDA). "
        "The precision is printed and recorded with the figures.",
    ),
]
MaxPixelsOption = Annotated[
    int,
    typer.Option(help="Refuse images that declare more pixels than this (decompression bombs).", min=1),
]
# For an .onnx file without convforge metadata (one exported elsewhere): how to feed it and name its outputs
ClassesOption = Annotated[
    str | None, typer.Option(help="For an .onnx file without convforge metadata: class names, comma-separated.")
]
MeanOption = Annotated[str | None, typer.Option(help="For such a file: per-channel mean on [0, 1], like 0.5,0.5,0.5.")]
StdOption = Annotated[str | None, typer.Option(help="For such a file: per-channel std on [0, 1].")]
SizeOption = Annotated[int | None, typer.Option(help="For such a file: input side in pixels, when not fixed in it.")]
# Without a terminal rich would wrap tables at 80 columns; a log file or a pipe has no width to respect.
_PLAIN_WIDTH = 200


class Output:
    """Tables and messages for people, or one JSON document for scripts."""

    def __init__(self, quiet: bool = False, as_json: bool = False, silent: bool = False):
        """`quiet`: no progress messages; `as_json`: one JSON document; `silent`: nothing at all (the other
        processes of a distributed run, whose rank 0 reports)."""
        self.quiet = quiet or as_json or silent
        self.as_json = as_json
        self.silent = silent
        # soft_wrap: paths and commands stay on one line, whatever the terminal width.
        self.out = console(stderr=False)
        self.err = console(stderr=True)
        self._held: list[Table] = []  # --quiet: tables wait to see whether they are the result
        _show_library_log(self.err, enabled=not self.quiet)

    def message(self, text: str) -> None:
        if not self.quiet:
            self.err.print(text)

    def table(self, table: Table) -> None:
        if self.as_json or self.silent:
            return
        if self.quiet:
            self._held.append(table)
        else:
            self.out.print(table)

    def result(self, data: Any, text: str | None = None) -> None:
        """The command's final result: JSON in --json mode, else `text` when given. With --quiet only this
        is printed; a command whose result has no text line (bench, predict) prints its tables as the result."""
        if self.silent:
            return
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
        elif text:
            self.out.print(text)
        else:
            for table in self._held:
                self.out.print(table)
        self._held.clear()


def console(stderr: bool) -> Console:
    """A console as wide as the terminal, or _PLAIN_WIDTH columns when there is none (COLUMNS wins)."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal or os.environ.get("COLUMNS") else _PLAIN_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _show_library_log(console: Console, enabled: bool) -> None:
    """The library says what long one-off work it starts (decoding a dataset ...) through logging."""
    logger = logging.getLogger("convforge")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, RichHandler)]
    if enabled:
        logger.addHandler(RichHandler(console=console, show_time=False, show_path=False, show_level=False))
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _json_default(value: Any) -> Any:
    """The run folder's conversions, and for `--json` output anything else as its text."""
    from convforge.files import json_default

    try:
        return json_default(value)
    except TypeError:
        return str(value)


def _refuse_non_finite(options: dict[str, Any]) -> None:
    """No number option means anything as nan or infinity (`--lr nan`, `--max-delay-ms nan`, `1e400`):
    refused by name before any work, for every command at once."""
    import math

    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


_DISK_ERRORS = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere (--out, CONVFORGE_CACHE)",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere (--out, CONVFORGE_CACHE)",
    errno.EROFS: "the file system is read-only: write elsewhere (--out, CONVFORGE_CACHE)",
    errno.EACCES: "permission denied: write elsewhere (--out, CONVFORGE_CACHE) or change the folder's permissions",
}


def user_errors(command: Callable) -> Callable:
    """Print a UserError, or a full, read-only or forbidden disk, as one clear message (no traceback) and
    exit with status 2; restore torch's thread count afterwards."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from convforge.threads import start_sampling, threads_kept

        start_sampling()  # the free-core window overlaps the command's start-up (convforge.threads)
        try:
            _refuse_non_finite(kwargs)
            with threads_kept():  # a command run in-process (tests) leaves the caller's thread count
                return command(*args, **kwargs)
        except ValueError as exc:
            if "--threads" not in str(exc):
                raise
            Console(stderr=True, highlight=False).print(f"[bold red]error:[/bold red] {escape(str(exc))}")
            raise typer.Exit(code=2) from None
        except UserError as exc:
            # escaped: a message may hold brackets rich would read as markup (pip install 'convforge[lrp]')
            message = escape(str(exc))
            Console(stderr=True, highlight=False).print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
            raise typer.Exit(code=2) from None
        except OSError as exc:
            if exc.errno not in _DISK_ERRORS:
                raise
            # every writer is atomic (files.py): nothing half-written is left under its final name
            where = f" {exc.filename}" if exc.filename else ""
            message = escape(f"cannot write{where}: {exc.strerror}; {_DISK_ERRORS[exc.errno]}")
            Console(stderr=True, highlight=False).print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("[yellow]interrupted[/yellow]")
            raise typer.Exit(code=130) from None

    return wrapper


def parse_key_values(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """`name=value` pairs (values parsed as JSON when they parse, else kept as strings)."""
    parsed: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{option} takes name=value, got {item!r}")
        try:
            parsed[name] = json.loads(value)
        except json.JSONDecodeError:
            parsed[name] = value
        except RecursionError:
            raise ConfigError(f"{option} {name}: the value is nested too deeply to be read") from None
    return parsed


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def onnx_overrides(classes: str | None, mean: str | None, std: str | None, size: int | None) -> dict[str, Any]:
    """The keyword arguments of `deploy.backends.open_model` from --classes/--mean/--std/--size."""

    def floats(text: str | None, option: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            return tuple(float(part) for part in text.split(","))
        except ValueError:
            raise ConfigError(f"{option} takes numbers separated by commas, like 0.5,0.5,0.5; got {text!r}") from None

    names = [name.strip() for name in classes.split(",")] if classes else None
    return {"classes": names, "mean": floats(mean, "--mean"), "std": floats(std, "--std"), "size": size}


def parse_batches(text: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64]; anything else is a ConfigError that says what is wrong."""
    batches = []
    for part in (p.strip() for p in text.split(",")):
        if not (part.isascii() and part.isdigit()) or int(part) < 1:
            raise ConfigError(f"--batch takes positive whole numbers separated by commas, like 1,8,64; got {part!r}")
        batches.append(int(part))
    return list(dict.fromkeys(batches))
