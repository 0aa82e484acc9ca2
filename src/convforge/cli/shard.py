"""`convforge shard DATA OUT`: a dataset written as WebDataset tar shards (library imports in the body)."""

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from convforge.cli.common import JsonOption, Output, QuietOption, user_errors
from convforge.errors import UserError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}  # fmt: skip


def parse_size(text: str) -> int:
    """`1GB`, `500MB`, `64MiB`, `1e9` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _UNITS or float(match.group(1)) * _UNITS[match.group(2)] < 1:
        raise UserError(f"--shard-size takes a size such as 1GB, 500MB or 64MiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@user_errors
def shard_command(
    data: Annotated[str, typer.Argument(help="Dataset spec: a folder, an archive, cifar10:PATH, csv:FILE, shapes...")],
    out: Annotated[Path, typer.Argument(help="New folder for the shards and manifest.json (must not exist).")],
    shard_size: Annotated[str, typer.Option(help="Size of each tar shard: 1GB, 500MB, 64MiB.")] = "1GB",
    seed: Annotated[int, typer.Option(help="Seed of the order the samples are written in.")] = 0,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Write a dataset as WebDataset tar shards, to train from with the spec wds:OUT.

    Each split goes to OUT/SPLIT/shard-000000.tar, ... in a seeded random order: a sample is KEY.jpg
    (the image's bytes as they were; arrays such as MNIST become PNG) and KEY.cls (its class index).
    OUT/manifest.json lists the classes and each shard's samples, size and SHA-256. OUT appears only
    when every shard is written. Train with `convforge train wds:OUT`, or name shards by a brace
    pattern: wds:OUT/train/shard-{000000..000009}.tar.

    Example: convforge shard cifar10:data/cifar10 shards/cifar10 --shard-size 256MB
    """
    output = Output(quiet, as_json)
    size = parse_size(shard_size)
    from convforge.data.shard_writer import write_shards

    summary = write_shards(data, out, shard_size=size, seed=seed)
    for split, info in summary.splits.items():
        output.message(f"{split}: {info['samples']:,} samples in {info['shards']} shard(s), "
                       f"{info['bytes'] / 1e6:,.1f} MB")  # fmt: skip
    if summary.skipped:
        first = summary.skipped[0]
        output.message(f"[yellow]{len(summary.skipped)} file(s) were left out[/yellow], first {escape(first.path)}: "
                       f"{first.reason} (all listed in {out / 'manifest.json'})")  # fmt: skip
    output.result(summary.to_dict(), text=f"shards: {out} (train from them with wds:{out})")


def register(app: typer.Typer) -> None:
    app.command("shard")(shard_command)
