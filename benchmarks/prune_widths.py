"""What makes a pruned model fast on this CPU, beyond its MACs: the multiple its channel counts round to,
and folding BatchNorm into the convolutions (`convforge prune --fold`) against torch.fx's own conv-BN
fusion (`torch.fx.experimental.optimization.fuse`, the reference).

    python benchmarks/prune_widths.py RUN [--macs 0.27] [--multiples 1,4,8,16,32] [--repeats 5]

RUN's model is pruned with the l2 criterion to at most --macs of its MACs once per rounding multiple
(1: no rounding), then each child, the parent, the l2/8 child folded by convforge and the same child
fused by torch.fx are timed at batch 1 and 64 (torch eager fp32, this machine's threads). Timings are
interleaved over --repeats rounds and the median of the per-round p50s is reported; no training is
involved, since latency depends on the widths and the layers alone. The table and the hardware go to
benchmarks/out/prune_widths-<run>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse as fx_fuse

from convforge.checkpoint import load_model
from convforge.compress.prune import prune_model
from convforge.measure.cost import measure_latency
from convforge.measure.counting import count_macs, count_params
from convforge.models.fold import fold_model
from convforge.runs import Run, describe_hardware, hardware_fingerprint

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
BATCHES = (1, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--macs", type=float, default=0.27)
    parser.add_argument("--multiples", default="1,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="latency budget per measurement")
    args = parser.parse_args()

    parent = Run.open(args.run)
    model, spec = load_model(parent.path)
    input_size = (spec.in_chans, *spec.preprocessing.input_size)
    variants: dict[str, torch.nn.Module] = {"parent": model}
    for multiple in (int(m) for m in args.multiples.split(",")):
        child = copy.deepcopy(model)
        prune_model(child, input_size, criterion="l2", target="macs", goal=args.macs, round_to=multiple,
                    architecture=spec.architecture)  # fmt: skip
        variants[f"l2, multiples of {multiple}" if multiple > 1 else "l2, unrounded"] = child.eval()
    reference = variants.get("l2, multiples of 8")
    if reference is not None:
        variants["l2/8 folded (convforge --fold)"] = fold_model(reference).model
        variants["l2/8 fused (torch.fx fuse)"] = fx_fuse(reference)

    samples: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in variants}
    for _ in range(args.repeats):
        for name, variant in variants.items():
            for b in BATCHES:
                samples[name][b].append(measure_latency(variant, input_size, b, budget_seconds=args.seconds).p50_ms)
    rows = [{"name": name, "params": count_params(variant), "macs": count_macs(variant, input_size),
             "ms": {b: statistics.median(samples[name][b]) for b in BATCHES}}
            for name, variant in variants.items()]  # fmt: skip
    hardware = hardware_fingerprint()
    print(f"{parent.path.name} pruned to <= {args.macs} of its MACs, median of {args.repeats} interleaved p50s: "
          f"{describe_hardware(hardware)}")  # fmt: skip
    print("| model | params | MACs kept | batch 1 ms | batch 64 ms |")
    print("|---|---:|---:|---:|---:|")
    base = rows[0]["ms"]
    for row in rows:
        ms = row["ms"]
        print(f"| {row['name']} | {row['params']:,} | {row['macs'] / rows[0]['macs']:.1%} | "
              f"{ms[1]:.2f} ({base[1] / ms[1]:.2f}x) | {ms[64]:.2f} ({base[64] / ms[64]:.2f}x) |")
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"run": str(parent.path), "macs": args.macs, "repeats": args.repeats, "hardware": hardware, "rows": rows}
    (OUT / f"prune_widths-{parent.path.name}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
