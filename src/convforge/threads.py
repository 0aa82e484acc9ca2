"""Threads that survive a busy machine: as many intra-op threads as there are free cores.

PyTorch's CPU kernels run on OpenMP (libgomp in the pip wheels), one thread per core by default, and
every parallel operation waits at a barrier for its slowest thread. When other work holds some of the
cores, the threads that lost theirs hold up every barrier, and libgomp's workers spin while they wait,
taking more of the cores the other work needs. Measured on a 2-core machine (benchmarks/threads_busy.py,
benchmarks/RESULTS.md): with both cores busy elsewhere, a batch-1 ResNet-18 forward took 21-644 ms with
two threads and 20-28 ms with one; training ran at 31-1,166 images per second against 2,470 with one;
with one core busy, two threads trained at 1,380 images per second and one at 3,390. OpenMP's PASSIVE
wait policy tames the worst case (32 ms, 1,290 img/s with two threads) but costs 35-45% on an idle
machine, so it is not the default; one thread per *free* core is: it loses nothing when the machine is
idle and wins 2-4x when it is not.

`available_threads` samples /proc/stat over a fifth of a second: the cores of this process's affinity
mask, minus the share of them other processes (and the hypervisor's steal) kept busy, at least one.
Every command that computes calls `set_threads(--threads)`, which uses it when no count is given;
run.json and the bench records say what was used and why. The CLI takes the window's first reading
when a command starts (`start_sampling`), so the window overlaps the command's own start-up (importing
torch alone takes longer) instead of adding a fifth of a second to every `predict`.

This module imports nothing beyond the standard library, so the CLI's `--help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

SAMPLE_SECONDS = 0.2
_chosen: dict[str, object] = {}  # how the last automatic count was chosen, for threads_report
_first_reading: tuple[float, tuple[int, int, int]] | None = None  # start_sampling's (time, ticks)


def available_cores() -> list[int]:
    """The cores this process may run on (its affinity mask; a container's CPU set)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def _ticks(cores: list[int]) -> tuple[int, int, int] | None:
    """Busy and total ticks of `cores` from /proc/stat, and this process's own CPU ticks; None without /proc."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    wanted = {f"cpu{core}" for core in cores}
    busy = total = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return busy, total, int(own[11]) + int(own[12])  # utime + stime of this process


def busy_elsewhere(cores: list[int], seconds: float = SAMPLE_SECONDS,
                   since: tuple[float, tuple[int, int, int]] | None = None) -> float | None:  # fmt: skip
    """How many of `cores` other processes kept busy over `seconds` (this process's own time left out),
    from /proc/stat's per-core ticks; None where there is no /proc. With `since` (a time and its
    reading), the window starts there and only what is left of `seconds` is waited for."""
    started, before = since if since is not None else (time.monotonic(), _ticks(cores))
    if before is None:
        return None
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))
    after = _ticks(cores)
    if after is None or after[1] <= before[1]:
        return None
    elsewhere = (after[0] - before[0]) - (after[2] - before[2])
    return max(0.0, elsewhere / (after[1] - before[1]) * len(cores))


def start_sampling() -> None:
    """Take the first reading of `available_threads`' window now (a command's start), so that the window
    overlaps the command's own start-up instead of adding to it."""
    global _first_reading
    reading = _ticks(available_cores())
    _first_reading = None if reading is None else (time.monotonic(), reading)


def available_threads() -> int:
    """One intra-op thread per core that other work is not using now, at least one."""
    global _first_reading
    cores = available_cores()
    busy = busy_elsewhere(cores, since=_first_reading)
    _first_reading = None  # a reading is used once: a later choice samples the machine as it is then
    threads = len(cores) if busy is None else max(1, len(cores) - round(busy))
    _chosen.update(cores=len(cores), busy_elsewhere=None if busy is None else round(busy, 2), threads=threads)
    return threads


def set_threads(threads: int | None, *, automatic: bool = True) -> int:
    """Use `threads` intra-op threads in torch; when None, one per free core (`available_threads`),
    unless OMP_NUM_THREADS says otherwise (the user's, or torchrun's share per process) or `automatic`
    is off (a deterministic run: the count changes how reductions split). The count used; ValueError
    for a count below 1."""
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    _chosen.clear()
    if threads is None and automatic and not os.environ.get("OMP_NUM_THREADS"):
        threads = available_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


@contextlib.contextmanager
def threads_kept() -> Iterator[None]:
    """Restore torch's thread count afterwards: a command or a training run called in-process (tests,
    notebooks) leaves the caller's count as it found it."""
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and previous is not None:
            torch.set_num_threads(previous)


def threads_report() -> dict[str, object]:
    """What a run or a timing was computed with: intra-op threads, and for an automatic count the cores
    and how many of them other work kept busy when it was chosen."""
    import torch

    return {"threads": torch.get_num_threads(), "chosen": "automatic" if _chosen else "given or inherited",
            **{key: value for key, value in _chosen.items() if key != "threads"}}  # fmt: skip
