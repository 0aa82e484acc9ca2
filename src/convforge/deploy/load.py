"""Load-testing `convforge serve`: a bounded HTTP load generator (aiohttp, async) and a server process
to aim it at.

The generator shares the machine with the server it loads, so its own cost per request decides what
can be measured. On the 2-core development machine httpx's AsyncClient spent 2.5 ms of CPU per GET and
aiohttp's client 0.07 ms (`benchmarks/serve_load.py RUN --ceiling`): with httpx the figures would
measure the client. Tests still talk to the server with httpx, one request at a time.

`run_load` sends `requests` POSTs of image files, `concurrency` at a time, stopping after that many or
after `max_seconds`, whichever comes first, and reports what a user of the server sees: answers per
second, images per second, latency p50/p90/p99 of answered requests, the count of each status (and of
requests that got no answer at all). `serve_process` starts `convforge serve` on a free port of
127.0.0.1, waits (bounded) until it is ready, and stops it with SIGTERM (kill if it hangs) whatever
happens; tests and benchmarks/serve_load.py use both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

READY_SECONDS = 90  # importing torch and warming up on a busy 2-core machine


@dataclass
class LoadResult:
    requests: int  # sent
    concurrency: int
    images_per_request: int
    seconds: float
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "503", ..., "no answer"
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p90/p99/max of answered requests
    rejected_latency_ms: dict[str, float] = field(default_factory=dict)  # the same of 503 answers (overload)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.requests_per_second * self.images_per_request

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requests_per_second": self.requests_per_second,
                "images_per_second": self.images_per_second}  # fmt: skip


def run_load(
    url: str,
    images: list[tuple[str, bytes]],
    *,
    requests: int,
    concurrency: int,
    images_per_request: int = 1,
    max_seconds: float = 60.0,
    timeout_seconds: float = 30.0,
) -> LoadResult:
    """POST `requests` multipart requests of `images_per_request` files each (cycling through `images`)
    to `url`, `concurrency` in flight at a time."""
    return asyncio.run(_load(url, images, requests, concurrency, images_per_request, max_seconds, timeout_seconds))


async def _load(url, images, requests, concurrency, per_request, max_seconds, timeout_seconds) -> LoadResult:
    import aiohttp

    statuses: Counter[str] = Counter()
    latencies: dict[int, list[float]] = {200: [], 503: []}
    counter = iter(range(requests))
    started = time.perf_counter()
    stop_at = started + max_seconds

    async def client_loop(session: aiohttp.ClientSession) -> None:
        for index in counter:
            if time.perf_counter() > stop_at:
                return
            form = aiohttp.FormData()
            for j in range(per_request):
                name, data = images[(index * per_request + j) % len(images)]
                form.add_field("files", data, filename=name, content_type="application/octet-stream")
            sent = time.perf_counter()
            try:
                async with session.post(url, data=form) as response:
                    await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                statuses["no answer"] += 1
                continue
            statuses[str(response.status)] += 1
            if response.status in latencies:
                latencies[response.status].append(time.perf_counter() - sent)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client_loop(session) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    sent = sum(statuses.values())
    return LoadResult(sent, concurrency, per_request, seconds, dict(statuses), _percentiles(latencies[200]),
                      _percentiles(latencies[503]))  # fmt: skip


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    values = np.array(seconds) * 1000
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)} | {"max": float(values.max())}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, alive=lambda: True, seconds: float = READY_SECONDS) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the server at {url} did not become ready within {seconds} s")


class ServerProcess:
    """A `convforge serve` process: its URL and its log."""

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
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    try:
        try:
            wait_ready(server.url, alive=lambda: process.poll() is None)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} (exit status {process.poll()}); its output:\n{server.output()}") from None
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
