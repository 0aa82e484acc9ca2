"""Threads on a busy machine: OpenMP's wait policy and the intra-op thread count, idle and loaded.

Each setting runs in a fresh process (OpenMP reads OMP_WAIT_POLICY when torch loads), on an idle
machine and while other processes keep one or all cores busy (pure-Python loops: another user's work).
Each child measures the two things issue 24 saw collapse: a batch-1 forward (timm resnet18 at 64 px,
p50 over 1.5 s, as `convforge bench` times it) and training throughput (the narrow resnet10t of the
tests at 32 px, batch 64, SGD steps for 3 s, images per second). The settings are run in rotating
order, --repeats rounds per load, so a drift of the machine lands on all of them; each figure is the
median over rounds with the range.

    python benchmarks/threads_busy.py [--repeats 3] [--loads idle,one,all]

"default" is what torch does when nothing is set (libgomp's spin-then-sleep, as many threads as cores);
"PASSIVE" sets OpenMP's wait policy so that idle workers sleep at once; "convforge (free cores)" is what
every convforge command does without --threads (`convforge.threads.set_threads`: one thread per core
that other work leaves free, sampled when it starts). Writes benchmarks/out/threads_busy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # name -> (environment, intra-op threads: None for torch's own choice, "auto" for convforge's)
    "default, 2 threads": ({}, None),
    "PASSIVE, 2 threads": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "default, 1 thread": ({}, 1),
    "convforge (free cores)": ({}, "auto"),
}


def child(threads: str) -> dict:
    import torch

    if threads == "auto":
        from convforge.threads import set_threads

        set_threads(None)  # what every convforge command does without --threads
    elif threads != "none":
        torch.set_num_threads(int(threads))
    from convforge.measure.latency import time_calls
    from convforge.models import create_model

    forward_model = create_model("resnet18", num_classes=10).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        forward = time_calls(lambda: forward_model(image), batch=1, warmup=5, budget_seconds=1.5)
    model = create_model("resnet10t", num_classes=10, channels=[16, 24, 32, 48], stem_width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for _ in range(3):  # warm-up steps
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < 3.0:
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    train_ips = steps * 64 / (time.perf_counter() - started)
    return {"forward_ms": forward.p50_ms, "train_img_s": train_ips, "threads": torch.get_num_threads()}


BUSY_LOOP = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


def run_setting(name: str) -> dict:
    environment, threads = SETTINGS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(environment)
    command = [sys.executable, __file__, "--child", str(threads or "none")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loads", default="idle,one,all")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    cores = len(os.sched_getaffinity(0))
    loads = {"idle": 0, "one": 1, "all": cores}
    names = list(SETTINGS)
    results: dict = {"cores": cores, "cpu_flags": _cpu_flags(), "loads": {}}
    for load in args.loads.split(","):
        busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(loads[load])]
        try:
            time.sleep(1.0)
            rounds: dict[str, list[dict]] = {name: [] for name in names}
            for round_index in range(args.repeats):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    rounds[name].append(run_setting(name))
        finally:
            for process in busy:
                process.kill()
                process.wait()
        results["loads"][load] = {}
        print(f"\n{load} ({loads[load]} busy process(es) on {cores} cores)")
        print(f"{'setting':<22}{'threads':>8}{'forward ms (range)':>26}{'train img/s (range)':>26}")
        for name in names:
            forward = [r["forward_ms"] for r in rounds[name]]
            train = [r["train_img_s"] for r in rounds[name]]
            results["loads"][load][name] = {"forward_ms": forward, "train_img_s": train,
                                            "threads": rounds[name][0]["threads"]}  # fmt: skip
            print(f"{name:<22}{rounds[name][0]['threads']:>8}"
                  f"{statistics.median(forward):>10.1f} ({min(forward):.1f}-{max(forward):.1f})".ljust(30)
                  + f"{statistics.median(train):>10.0f} ({min(train):.0f}-{max(train):.0f})")  # fmt: skip
    out = Path(__file__).parent / "out" / "threads_busy.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


def _cpu_flags() -> list[str]:
    import re

    text = Path("/proc/cpuinfo").read_text()
    return sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx2|amx[a-z_0-9]*)\b", text)))


if __name__ == "__main__":
    main()
