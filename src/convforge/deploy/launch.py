"""Starting the server: checks that fail before anything is loaded (options, the address), the model,
then uvicorn in this process, or in `workers` processes that each load the model and batch on their own.

With several workers, uvicorn's supervisor starts each process by importing `app_from_environment`,
which reads what to serve from the environment (uvicorn cannot hand an app object to another process).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from convforge.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)
ENVIRONMENT_KEY = "CONVFORGE_SERVE"


@dataclass
class Launch:
    """Everything `convforge serve` was asked, in a form that survives a trip through the environment."""

    source: str
    backend: str = "torch"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None  # per worker; None: the cores divided among the workers
    device: str = "auto"
    settings: dict[str, Any] = field(default_factory=dict)  # ServeSettings fields
    overrides: dict[str, Any] = field(default_factory=dict)  # for .onnx files without metadata
    access_log: bool = False
    graceful_seconds: int = 30

    @property
    def threads_per_worker(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)


def check_options(settings: Any, workers: int, threads: int | None) -> None:
    """Option values that cannot work together, said before anything loads."""
    problems = []
    if settings.max_batch < 1:
        problems.append(f"--max-batch must be at least 1, got {settings.max_batch}")
    if settings.max_delay_ms < 0:
        problems.append(f"--max-delay-ms cannot be negative, got {settings.max_delay_ms:g}")
    if settings.timeout_ms <= settings.max_delay_ms:
        problems.append(f"--timeout-ms ({settings.timeout_ms:g}) must be longer than --max-delay-ms "
                        f"({settings.max_delay_ms:g}), or a lone request would always time out")  # fmt: skip
    if settings.max_images < 1 or settings.max_queue < settings.max_images:
        problems.append(f"--max-queue ({settings.max_queue}) must hold at least --max-images "
                        f"({settings.max_images}) images, which must be 1 or more")  # fmt: skip
    for name, value in (("--max-request-mb", settings.max_request_bytes), ("--max-pixels", settings.max_pixels),
                        ("--top-k", settings.top_k), ("--workers", workers), ("--threads", threads or 1)):  # fmt: skip
        if value < 1:
            problems.append(f"{name} must be positive, got {value}")
    if settings.decode_workers < 0 or settings.inline_decode_bytes < 0:
        problems.append("--decode-workers and --inline-decode-kb cannot be negative")
    if problems:
        raise ConfigError("; ".join(problems))


def check_address(host: str, port: int, allow_remote: bool) -> bool:
    """Refuse a non-loopback host unless allowed, and a port already in use. True when the server will
    be reachable from other machines (the caller warns)."""
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    remote = not _is_loopback(host)
    if remote and not allow_remote:
        raise ConfigError(
            f"--host {host} would expose the model to other machines, with no authentication; serve on 127.0.0.1 "
            "behind a proxy, or pass --allow-remote if that is what you want"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                message = f"port {port} on {host} is in use (another server?); choose another with --port"
                raise ConfigError(message) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return remote


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_model(launch: Launch):
    """The model of one worker (or Ray replica), loaded with its thread count."""
    import torch

    from convforge.deploy.serving import open_serving_model
    from convforge.device import resolve_device

    # process-wide on purpose: a worker process (or Ray replica) is this model's alone; an in-process
    # caller (a test building the app) keeps its own count with convforge.threads.threads_kept
    torch.set_num_threads(launch.threads_per_worker)
    return open_serving_model(launch.source, launch.backend, device=resolve_device(launch.device),
                              threads=launch.threads_per_worker, overrides=launch.overrides)  # fmt: skip


def build_app(launch: Launch):
    """The app of one worker: the model loaded with this worker's thread count."""
    from convforge.deploy.server import ServeSettings, create_app

    model = build_model(launch)
    return create_app(model, ServeSettings(**launch.settings)), model


def app_from_environment():
    """uvicorn's factory in each worker process (`--workers N`)."""
    logging.getLogger("convforge").setLevel(logging.INFO)
    logging.basicConfig(format="%(levelname)s:     %(message)s")
    launch = Launch(**json.loads(os.environ[ENVIRONMENT_KEY]))
    _guard_headers(launch)
    return build_app(launch)[0]


def _guard_headers(launch: Launch) -> None:
    """The deadline for a request's headers in this process: the request deadline (`--timeout-ms`)."""
    from convforge.deploy.http_protocol import set_header_seconds
    from convforge.deploy.server import ServeSettings

    set_header_seconds(ServeSettings(**launch.settings).timeout_ms / 1000)


def run(launch: Launch, app: Any = None) -> None:
    """Serve until SIGTERM or SIGINT: then stop accepting, answer what was accepted, and return."""
    import uvicorn

    from convforge.deploy.http_protocol import GuardedHttpProtocol

    # uvicorn drains on SIGTERM/SIGINT, then raises the signal again for the handler it found; a quiet one
    # makes a drained server exit 0, as a supervisor (systemd, Kubernetes) expects of a clean stop
    if threading.current_thread() is threading.main_thread():
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, lambda *_: None)
    common = {"host": launch.host, "port": launch.port, "access_log": launch.access_log, "log_level": "info",
              "timeout_graceful_shutdown": launch.graceful_seconds, "http": GuardedHttpProtocol}  # fmt: skip
    _guard_headers(launch)
    if launch.workers == 1:
        uvicorn.run(app, **common)
        return
    os.environ[ENVIRONMENT_KEY] = json.dumps(launch.__dict__)
    uvicorn.run("convforge.deploy.launch:app_from_environment", factory=True, workers=launch.workers, **common)
