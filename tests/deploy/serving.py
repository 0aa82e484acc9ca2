"""Servers for the tests: `convforge serve` as a real process (`convforge.deploy.load.serve_process`), or
an app in a uvicorn thread, both on a free port of 127.0.0.1, both stopped when the test ends (also when
it fails), every wait bounded; and real image files to send them."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from convforge.data.shapes import ShapesConfig, render_split
from convforge.deploy.load import free_port, serve_process, wait_ready

__all__ = ["exchange", "free_port", "parse_reply", "png_bytes", "serve_app", "serve_process", "shape_files"]



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


def exchange(url: str, sent: bytes, wait_seconds: float = 20) -> tuple[bytes, float]:
    """Send raw bytes to a server, read until the server closes the connection (bounded); the reply and its delay."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_seconds) as connection:
        if sent:
            connection.sendall(sent)
        reply = b""
        while chunk := connection.recv(65536):
            reply += chunk
    return reply, time.monotonic() - started


def parse_reply(reply: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, json.loads(body)
