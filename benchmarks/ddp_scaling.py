"""One process with batch B against N processes with batch B/N each (DDP over gloo, `--nproc N`): the
same seed and recipe, so the loss curves and the final accuracy should agree within what BatchNorm's
per-process statistics and the processes' own augmentation draws change; and the throughput of both.

    python benchmarks/ddp_scaling.py DATA --model resnet18 --epochs 4 --batch-size 256 [--nproc 2]
        [--extra "--crop pad"]

On a 2-core CPU no speed-up is expected (the processes share the cores; each gets cores / N threads);
the point is that the distributed run computes the same training. Runs go to
benchmarks/out/ddp_scaling/<model>-<1|N>proc; the table and the hardware to
benchmarks/out/ddp_scaling-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from convforge.runs import describe_hardware, hardware_fingerprint

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"


def train(data: str, args, processes: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    batch = args.batch_size // processes
    command = [sys.executable, "-m", "convforge", "train", data, "--model", args.model, "--epochs", str(args.epochs),
               "--batch-size", str(batch), "--seed", str(args.seed), "--out", str(out), "--quiet",
               *shlex.split(args.extra)]  # fmt: skip
    if processes > 1:
        command += ["--nproc", str(processes)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // processes))})
    wall = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    test = next(r for r in records if r["kind"] == "eval")
    return {"processes": processes, "batch_per_process": batch, "wall_seconds": wall, "test_top1": test["top1"],
            "epochs": [{k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_acc", "images_per_second")}
                       for r in epochs]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256, help="the global batch")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="more `convforge train` options, quoted")
    args = parser.parse_args()
    rows = [train(args.data, args, n, OUT / "ddp_scaling" / f"{args.model}-{n}proc") for n in (1, args.nproc)]
    hardware = describe_hardware(hardware_fingerprint())
    print(f"{args.model} on {args.data}, global batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}: "
          f"{hardware}")  # fmt: skip
    print("| processes x batch | epoch | train loss | val loss | val acc | img/s (global) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        for e in row["epochs"]:
            print(f"| {row['processes']} x {row['batch_per_process']} | {e['epoch']} | {e['train_loss']:.4f} | "
                  f"{e['val_loss']:.4f} | {e['val_acc']:.2%} | {e['images_per_second']:.0f} |")  # fmt: skip
    for row in rows:
        print(f"{row['processes']} x {row['batch_per_process']}: test top-1 {row['test_top1']:.2%}, "
              f"wall {row['wall_seconds']:.0f} s")  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "hardware": hardware, "rows": rows}
    (OUT / f"ddp_scaling-{args.model}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
