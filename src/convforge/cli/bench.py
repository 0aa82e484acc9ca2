"""`convforge bench SOURCE`: latency and throughput of a run, a model name or an ONNX file on
several backends and batch sizes, in one table (library imports in the body)."""

from typing import Annotated

import typer

from convforge.cli.common import JsonOption, Output, QuietOption, parse_batches, user_errors
from convforge.cli.tables import bench_table
from convforge.errors import ConfigError


@user_errors
def bench_command(
    source: Annotated[str, typer.Argument(help="A run folder, an .onnx file or a model name.")],
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma-separated.")] = "1,64",
    backend: Annotated[
        str, typer.Option("--backend", help="Backends, comma-separated: torch, torch-bf16, ort, ort-int8.")
    ] = "torch,ort,ort-int8",
    threads: Annotated[int | None, typer.Option(help="Intra-op threads (default: all cores).")] = None,
    seconds: Annotated[float, typer.Option(help="Time budget per backend and batch size.")] = 2.0,
    size: Annotated[int | None, typer.Option(help="Input side in pixels (default: the model's).")] = None,
    record: Annotated[bool, typer.Option(help="Append the result to a run's metrics.jsonl.")] = True,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Measure latency (p50/p99) and throughput per backend and batch size.

    The speed-up column compares each backend with the first one at the same batch size. A backend a
    model cannot use here (no exported file yet, bf16 without CPU support) is listed with the reason.
    For a run folder the result joins its metrics.jsonl with the hardware it was measured on.

    Example: convforge bench runs/resnet18 --batch 1,8,64 --backend torch,torch-bf16,ort,ort-int8 --threads 2
    """
    output = Output(quiet, as_json)
    batches = parse_batches(batch)
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if seconds <= 0:
        raise ConfigError(f"--seconds is a time budget, more than 0; got {seconds:g}")
    if size is not None and size < 8:
        raise ConfigError(f"--size is an input side in pixels, at least 8; got {size}")
    from convforge.deploy.backends import parse_backends
    from convforge.deploy.bench import bench, open_source, record_bench
    from convforge.runs import describe_hardware, hardware_fingerprint

    names = parse_backends(backend)
    opened = open_source(source, input_size=size)
    result = bench(opened, names, batches, threads=threads, budget_seconds=seconds)
    if record and opened.run is not None:
        record_bench(opened.run, result)
    output.table(bench_table(result.to_dict(), title=f"{opened.name} at {'x'.join(map(str, result.input_size))}"))
    hardware = {**hardware_fingerprint(), "torch_threads": result.threads}  # the count bench ran with
    output.message(f"measured on {describe_hardware(hardware)}")
    output.result(result.to_dict())


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
