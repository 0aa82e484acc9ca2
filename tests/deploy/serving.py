"""Servers for the tests: `convforge serve` as a real process, or an app in a uvicorn thread, both on a
free port of 127.0.0.1, both stopped when the test ends (also when it fails), every wait bounded."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from convforge.data.shapes import ShapesConfig, render_split

START_SECONDS = 90  # importing torch and warming up on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shape_files(folder: Path, count: int, size: int = 32) -> list[Path]:
    """Real image files of held-out shapes: PNG and JPEG alternately."""
    folder.mkdir(parents=True, exist_ok=True)
    images, _, _ = render_split(ShapesConfig(size=size), "test", 0, count)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"shape{index}.{'png' if index % 2 == 0 else 'jpg'}"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def png_bytes(side: int, value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_ready(url: str, alive=lambda: True, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"the server at {url} did not become ready within {seconds} s")


class ServerProcess:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def output(self) -> str:
        return self.log.read_text()

    def terminate(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextlib.contextmanager
def serve_process(source, *args: str, log: Path) -> Iterator[ServerProcess]:
    """`python -m convforge serve SOURCE --port P ARGS`, ready, then SIGTERM (kill if it hangs)."""
    port = free_port()
    command = [sys.executable, "-m", "convforge", "serve", str(source), "--port", str(port), *map(str, args)]
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server.url, alive=lambda: process.poll() is None)
        yield server
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{server.output()}") from None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """An app in uvicorn on a thread of this process (real HTTP on 127.0.0.1); stopped after."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=thread.is_alive, seconds=30)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
