"""Speed-ups that a second measurement confirms: two or more calls timed interleaved, in one process,
and compared round by round.

Timing a parent, then its pruned child a second later, compares two moments of the machine as much as
two models: on a shared 2-core machine one model measured 35.6 ms and later 828 ms, and a pruning search
stopped on a lucky reading (1.52x) that its own final measurement put at 0.67x. Here every round calls
each model once, in an order that rotates (A B, B A, ...), so whatever the machine does lands on both;
a speed-up is the median over rounds of the per-round ratio, quoted with a distribution-free 95%
interval of that median (order statistics of the binomial, as for any median: no assumption about how
timings are distributed). A target counts as reached only when the interval's lower end clears it
(`Ratio.holds`), and a ratio whose interval is wider than `latency.NOISY_SPREAD` is reported as too
noisy to quote instead of as a figure.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from convforge.measure.cost import torch_threads
from convforge.measure.latency import NOISY_SPREAD, Latency, median_interval, summarise, timer_for

MIN_ROUNDS = 9  # the 95% interval of a median needs at least 6 values to be narrower than the range


@dataclass
class Ratio:
    """How many times faster `other` ran than `reference`: the median of per-round ratios and its interval."""

    median: float
    low: float
    high: float
    rounds: int

    @property
    def spread(self) -> float:
        """high / low: 1.0 for a ratio the machine let us measure exactly."""
        return self.high / self.low if self.low > 0 else math.inf

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD

    def holds(self, goal: float) -> bool:
        """The speed-up is at least `goal` with 95% confidence: the interval's lower end clears it."""
        return self.low >= goal

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread, "noisy": self.noisy}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Ratio:
        """A ratio as `to_dict` recorded it (run folders, benchmark JSON)."""
        return cls(record["median"], record["low"], record["high"], record.get("rounds", 0))

    def text(self, what: str = "") -> str:
        """'1.52x (1.48-1.57)' (with `what`=" faster": '1.52x faster (1.48-1.57)'), or only the interval,
        marked, when it is too wide to quote a figure."""
        if self.noisy:
            return f"too noisy to quote ({self.low:.2f}-{self.high:.2f}x)"
        return f"{self.median:.2f}x{what} ({self.low:.2f}-{self.high:.2f})"


@dataclass
class Interleaved:
    """Per-round times of several calls timed in rotating order; `latency(name)` summarises each."""

    batch: int
    seconds: dict[str, list[float]]  # name -> one time per round (its turn's median), rounds aligned
    calls: dict[str, list[float]] = field(default_factory=dict)  # name -> every timed call, for percentiles

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values())))

    def latency(self, name: str) -> Latency:
        return summarise(self.calls.get(name) or self.seconds[name], self.batch)

    def ratio(self, reference: str, other: str) -> Ratio:
        """How many times faster `other` ran than `reference`, round by round."""
        return per_round_ratio(self.seconds[reference], self.seconds[other])


def per_round_ratio(numerators: list[float], denominators: list[float]) -> Ratio:
    """The median over rounds of numerators[i] / denominators[i], with its 95% interval. For times, pass
    the reference's first (how many times faster the other ran); for rates (images per second), the other's."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    return Ratio(*median_interval(ratios), rounds=len(ratios))


def rotating_rounds(runs: dict[str, Callable[[], Any]], rounds: int, report: Callable[[int, dict], None] | None = None
                    ) -> dict[str, list[Any]]:  # fmt: skip
    """Whole runs too long to time call by call (a training epoch, a server under load): every run once per
    round, in an order that rotates each round; what each returned, round by round. `report(round, results)`
    is called after each round."""
    names = list(runs)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(runs[name]())
        if report is not None:
            report(round_index + 1, results)
    return results


def time_interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    batch: int,
    warmup: int = 3,
    budget_seconds: float = 2.0,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = 1000,
    device: torch.device | str = "cpu",
    turn: int = 1,
    settle: int = 0,
) -> Interleaved:
    """Time every call of `calls` once per round, in an order that rotates each round, after `warmup`
    untimed rounds; as many rounds as `budget_seconds` allows within [min_rounds, max_rounds].

    Args:
        calls: name -> a call that runs one batch (a model's forward on a fixed input).
        batch: images per call, for the throughput of each summary.
        warmup: untimed rounds first (allocations, kernel selection, caches).
        budget_seconds: the time all timed rounds together may take once `min_rounds` are done.
        min_rounds, max_rounds: bounds on the number of timed rounds.
        device: where the calls run; on a GPU each call is timed with CUDA events.
        turn: timed calls in each call's turn of a round; the round's time is their median.
        settle: untimed calls at the start of each turn. Runtimes with thread pools of their own (PyTorch's
            OpenMP, ONNX Runtime's) each pay to wake theirs after the other ran: measured 1.3-1.8x on a
            model's first call after a switch, so comparisons across runtimes settle first.
    """
    names = list(calls)
    if not names:
        raise ValueError("nothing to time")
    device = torch.device(device)
    timer = timer_for(device)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    every: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    for round_index in range(max_rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(settle):
                calls[name]()
            timed = [timer(calls[name]) for _ in range(turn)]
            seconds[name].append(statistics.median(timed))
            every[name].extend(timed)
        done = round_index + 1
        if done >= min_rounds and time.perf_counter() - started >= budget_seconds:
            break
    return Interleaved(batch, seconds, every)


def paired_speedup(
    reference: nn.Module,
    candidate: nn.Module,
    input_size: tuple[int, int, int],
    batches: tuple[int, ...] | list[int],
    budget_seconds: float,
    *,
    threads: int | None = None,
) -> tuple[dict[int, float], dict[int, float], dict[int, Ratio]]:
    """Two models (eval mode, on one device) timed interleaved on a batch of zeros at each batch size,
    `budget_seconds` for both together: the p50 latency of each (batch -> ms), and how many times faster
    `candidate` ran (batch -> Ratio). What the pruning search and `prune`'s final figure measure."""
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    reference_ms, candidate_ms, ratios = {}, {}, {}
    with torch_threads(threads), torch.no_grad():
        for batch in batches:
            inputs = torch.zeros(batch, *input_size, device=device)
            calls = {"reference": lambda x=inputs: reference(x), "candidate": lambda x=inputs: candidate(x)}
            timed = time_interleaved(calls, batch=batch, budget_seconds=budget_seconds, device=device)
            reference_ms[batch] = timed.latency("reference").p50_ms
            candidate_ms[batch] = timed.latency("candidate").p50_ms
            ratios[batch] = timed.ratio("reference", "candidate")
    return reference_ms, candidate_ms, ratios
