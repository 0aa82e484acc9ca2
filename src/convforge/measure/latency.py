"""Timing calls the way a latency figure should be taken: warm-up first, then a fixed number of
timed calls or as many as a time budget allows, each timed on its own, quoted as percentiles.

On a GPU each call is timed with CUDA events and the device is synchronised after it, so a figure
is the time the work took, not the time it took to queue. The function is cheap to call again on
the same loaded model (the pruning work calls it after every step): it allocates nothing but the
list of times.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

CONFIDENCE = 0.95
# A median whose 95% interval spans more than this factor (high / low) is too noisy to quote. On an idle
# 2-core machine `convforge bench` of the demo model gave intervals of 1-3% (speed-ups 5.06-5.20x, latencies
# within 2%); with ONNX Runtime's threads spinning through PyTorch's turns, 1.29 (11.74-15.20 ms), which
# is flagged; a model whose p50 swung 21-644 ms between rounds on a busy machine is far beyond it
NOISY_SPREAD = 1.25


@dataclass
class Latency:
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_second: float  # batch / median time
    iterations: int
    p50_low_ms: float = 0.0  # the 95% interval of the median (order statistics)
    p50_high_ms: float = 0.0

    @property
    def noisy(self) -> bool:
        """The machine did not let the median be measured within NOISY_SPREAD: do not quote it."""
        return self.p50_high_ms > NOISY_SPREAD * self.p50_low_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "noisy": self.noisy}


def time_calls(
    call: Callable[[], Any],
    *,
    batch: int,
    warmup: int = 3,
    iterations: int | None = None,
    budget_seconds: float = 2.0,
    min_iterations: int = 5,
    max_iterations: int = 1000,
    device: torch.device | str = "cpu",
) -> Latency:
    """Time `call()` (one batch of `batch` images): `warmup` untimed calls, then `iterations` timed
    ones, or, when None, as many as `budget_seconds` allows within [min_iterations, max_iterations]."""
    device = torch.device(device)
    for _ in range(warmup):
        call()
    timer = timer_for(device)
    times: list[float] = []
    started = time.perf_counter()
    while True:
        times.append(timer(call))
        done = len(times)
        if iterations is not None:
            if done >= iterations:
                break
        elif done >= max_iterations or (done >= min_iterations and time.perf_counter() - started >= budget_seconds):
            break
    return summarise(times, batch)


def summarise(seconds: list[float], batch: int) -> Latency:
    """Percentiles (linear interpolation between order statistics) of per-call times in seconds, and the
    95% interval of the median."""
    ordered = sorted(seconds)
    median, low, high = median_interval(ordered)
    return Latency(
        batch=batch,
        p50_ms=median * 1e3,
        p90_ms=_percentile(ordered, 0.90) * 1e3,
        p99_ms=_percentile(ordered, 0.99) * 1e3,
        mean_ms=statistics.fmean(ordered) * 1e3,
        images_per_second=batch / median if median > 0 else float("inf"),
        iterations=len(ordered),
        p50_low_ms=low * 1e3,
        p50_high_ms=high * 1e3,
    )


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The median of `values` and a distribution-free `confidence` interval for it (no assumption about
    how timings are distributed): order statistics x_(j) and x_(n-j+1), j the largest index such that
    P(Binomial(n, 1/2) < j) <= (1 - confidence) / 2. Below 6 values no j exists: the whole range."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    tail, j, cumulative = (1 - confidence) / 2, 0, 0.0
    while j < n // 2:
        cumulative += math.comb(n, j) / 2**n  # P(Binomial(n, 1/2) == j)
        if cumulative > tail:
            break
        j += 1
    low, high = (ordered[j - 1], ordered[n - j]) if j else (ordered[0], ordered[-1])
    return statistics.median(ordered), low, high


def _percentile(ordered: list[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def timer_for(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that runs a call and returns the seconds it took on `device` (CUDA events on a GPU)."""
    return _cuda_timer(device) if device.type == "cuda" else _wall_timer


def _wall_timer(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _cuda_timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    def timed(call: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3

    return timed
