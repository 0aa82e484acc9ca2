"""`convforge serve RUN`: the run's model behind HTTP with dynamic batching (library imports in the body)."""

import os
from pathlib import Path
from typing import Annotated

import typer

from convforge.cli.common import (
    ClassesOption,
    DeviceOption,
    JsonOption,
    MeanOption,
    Output,
    QuietOption,
    SizeOption,
    StdOption,
    onnx_overrides,
    user_errors,
)
from convforge.errors import ConfigError

_LIMITS = "Limits"
_BATCHING = "Batching"


@user_errors
def serve_command(
    source: Annotated[
        Path, typer.Argument(metavar="RUN", help="Run folder with a trained model, or an .onnx file.")
    ],
    backend: Annotated[
        str | None,
        typer.Option(help="torch (the weights; the default for a run), torch-bf16, ort (artifacts/model.onnx) or "
                          "ort-int8 (artifacts/model.int8.onnx). An .onnx file runs in ONNX Runtime."),  # fmt: skip
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow a --host other machines can reach (no authentication).")
    ] = False,
    max_batch: Annotated[int, typer.Option(help="Most images per forward pass.", rich_help_panel=_BATCHING)] = 32,
    max_delay_ms: Annotated[
        float, typer.Option(help="Longest wait for a batch to fill after its first image.", rich_help_panel=_BATCHING)
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option(help="Most images in the server at once (decoding, queued, computing); beyond it, 503.",
                          rich_help_panel=_BATCHING),
    ] = 256,
    timeout_ms: Annotated[
        float,
        typer.Option(help="Deadline per request: its headers and body must arrive within it (else 408), its "
                     "answer too (else 504, never computed).", rich_help_panel=_BATCHING),
    ] = 10_000.0,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body.", rich_help_panel=_LIMITS)] = 16.0,
    max_images: Annotated[int, typer.Option(help="Most images per request.", rich_help_panel=_LIMITS)] = 64,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image, in pixels, checked before decoding.", rich_help_panel=_LIMITS)
    ] = 40_000_000,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes per image unless the request asks.")] = 3,
    workers: Annotated[
        int, typer.Option(help="Processes, each with its own model and batcher (with --ray: replicas).")
    ] = 1,
    ray: Annotated[
        bool, typer.Option("--ray", help="Deploy as a Ray Serve application (@serve.batch, --workers replicas).")
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="With --ray: the Ray cluster to join (default: a new local instance).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Model threads per worker (default: cores / workers).")] = None,
    decode_workers: Annotated[int, typer.Option(help="Decoding threads per worker (0: one per core).")] = 0,
    inline_decode_kb: Annotated[
        float, typer.Option(help="Files up to this size decode on the event loop, cheaper than a thread hop.")
    ] = 8.0,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request (slower under load).")] = False,
    graceful_seconds: Annotated[int, typer.Option(help="On SIGTERM, longest wait to answer accepted requests.")] = 30,
    device: DeviceOption = "auto",
    classes: ClassesOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    size: SizeOption = None,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Serve a run's model over HTTP, with dynamic batching.

    POST /v1/predict takes images as multipart files in the field 'files' or as JSON
    {"images": ["<base64>", ...], "top_k": 3} and answers the top-k classes per image, in order, with
    the run's own decoding and preprocessing (the same as `convforge predict`). Images of concurrent
    requests are batched together (--max-batch, --max-delay-ms). GET /v1/models, /healthz, /readyz
    and /metrics (Prometheus) describe the server. SIGTERM or Ctrl-C stops accepting, answers what was
    accepted and exits 0.

    With --workers N each process loads the model and batches on its own, with cores / N threads;
    on a small machine one worker with all cores batches best.

    With --ray the same predictor runs as a Ray Serve application: --workers replicas, batched by Ray
    Serve's @serve.batch, on a local Ray instance or the cluster at --ray-address (pip install
    'convforge\\[ray]'). The API is the same; metrics are Ray's.

    Example: convforge serve runs/demo --backend ort-int8 --port 8000
    """
    output = Output(quiet, as_json)
    # OpenMP threads that busy-wait between the model's calls would take the cores decoding and HTTP need;
    # read when torch loads, which the CLI has not done yet (a user's own setting wins)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if max_request_mb <= 0:
        raise ConfigError(f"--max-request-mb must be positive, got {max_request_mb:g}")
    from convforge.deploy.backends import parse_backends
    from convforge.deploy.launch import Launch, build_app, check_address, check_options, run
    from convforge.deploy.server import ServeSettings

    if backend is None:  # the natural one: a run's weights, or the ONNX Runtime an .onnx file needs
        backend = "ort" if source.suffix == ".onnx" else "torch"
    names = parse_backends(backend)
    if len(names) != 1:
        raise ConfigError("--backend takes one backend; a server runs one model")
    backend_name = names[0]
    settings = ServeSettings(max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue,
                             timeout_ms=timeout_ms, max_request_bytes=int(max_request_mb * 2**20),
                             max_images=max_images, max_pixels=max_pixels, top_k=top_k,
                             decode_workers=decode_workers,
                             inline_decode_bytes=int(inline_decode_kb * 1024))  # fmt: skip
    check_options(settings, workers, threads)
    remote = check_address(host, port, allow_remote)
    from convforge.device import resolve_device

    launch = Launch(str(source), backend_name, host, port, workers, threads, str(resolve_device(device)),
                    settings.to_dict(),
                    onnx_overrides(classes, mean, std, size), access_log, graceful_seconds)  # fmt: skip
    if ray:
        try:
            from convforge.deploy import ray_serve
        except ImportError as exc:
            raise ConfigError(f"--ray needs Ray Serve ({exc}); install it with pip install 'convforge[ray]'") from None
    app, model = build_app(launch)  # in this process too: a mistake is said here, once, before workers start
    described = model.describe()
    if workers > 1 or ray:
        app = model = None  # each worker loads its own; the supervisor keeps no copy
    queueing = "queue and deadlines: Ray Serve's" if ray else f"queue {max_queue} images; deadline {timeout_ms:g} ms"
    output.message(
        f"serving {described['name']} ({described['architecture']}, {len(described['classes'])} classes) with "
        f"{described['backend']}{' from ' + described['file'] if described['file'] else ''} on {launch.device}\n"
        f"  {workers} {'Ray Serve replica' if ray else 'worker'}(s) x {launch.threads_per_worker} model thread(s); "
        f"batches of up to {max_batch} images within {max_delay_ms:g} ms; {queueing}\n"
        f"  limits per request: {max_request_mb:g} MB, {max_images} images, {max_pixels:,} pixels per image\n"
        f"  http://{host}:{port}/v1/predict  (/v1/models /healthz /readyz{'' if ray else ' /metrics /docs'})"
    )
    if remote:
        output.message(f"[bold yellow]warning:[/bold yellow] listening on {host}: anyone who can reach this "
                       "machine can use the model; there is no authentication")  # fmt: skip
    # --json: one JSON document a supervisor can read before the server starts (the logs follow on stderr)
    output.result({"url": f"http://{host}:{port}", "model": described, "workers": workers, "ray": ray,
                   "threads_per_worker": launch.threads_per_worker, "settings": settings.to_dict(),
                   "remote": remote})  # fmt: skip
    if ray:
        ray_serve.run(launch, ray_address)
        return
    run(launch, app)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
