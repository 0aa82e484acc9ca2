"""A bounded HTTP load generator for `convforge serve` (httpx, async): `requests` POSTs of image files
at `concurrency` at a time, stopping after that many or after `max_seconds`, whichever comes first.

It reports what a user of the server sees: answers per second, images per second, latency p50/p90/p99
of answered requests, and the count of each status (and of requests that got no answer at all).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    requests: int  # sent
    concurrency: int
    images_per_request: int
    seconds: float
    statuses: dict[str, int] = field(default_factory=dict)  # "200", "503", ..., "no answer"
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p90/p99/max of answered requests

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
    import httpx

    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    stop_at = started + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in counter:
            if time.perf_counter() > stop_at:
                return
            files = [("files", images[(index * per_request + j) % len(images)]) for j in range(per_request)]
            sent = time.perf_counter()
            try:
                response = await client.post(url, files=files)
            except httpx.HTTPError:
                statuses["no answer"] += 1
                continue
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - sent)

    async with httpx.AsyncClient(limits=limits, timeout=timeout_seconds) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latency = {}
    if latencies:
        values = np.array(latencies) * 1000
        latency = {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)} | {"max": float(values.max())}
    sent = sum(statuses.values())
    return LoadResult(sent, concurrency, per_request, seconds, dict(statuses), latency)
