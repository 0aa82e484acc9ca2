"""What makes a pruned model fast on this CPU, beyond its MACs: the multiple its channel counts round to,
and folding BatchNorm into the convolutions (`convforge prune --fold`) against torch.fx's own conv-BN
fusion (`torch.fx.experimental.optimization.fuse`, the reference).

    python benchmarks/prune_widths.py RUN [--macs 0.27] [--multiples 1,4,8,16,32] [--seconds 2]

RUN's model is pruned with the l2 criterion to at most --macs of its MACs once per rounding multiple
(1: no rounding), then each child, the parent, the l2/8 child folded by convforge and the same child
fused by torch.fx are timed at batch 1 and 64 (torch eager fp32, this machine's threads), all of them
interleaved in one process, in rotating order (`convforge.measure.paired.time_interleaved`): the
milliseconds are medians over rounds, each speed-up over the parent the median of per-round ratios with
its 95% interval. No training is involved, since latency depends on the widths and the layers alone.
The table and the hardware go to benchmarks/out/prune_widths-<run>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse as fx_fuse

from convforge.checkpoint import load_model
from convforge.compress.prune import prune_model
from convforge.measure.counting import count_macs, count_params
from convforge.measure.paired import time_interleaved
from convforge.models.fold import fold_model
from convforge.runs import Run, describe_hardware, hardware_fingerprint

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
BATCHES = (1, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--macs", type=float, default=0.27)
    parser.add_argument("--multiples", default="1,4,8,16,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed rounds per variant and batch size")
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

    rows = [{"name": name, "params": count_params(variant), "macs": count_macs(variant, input_size), "ms": {},
             "speedup": {}} for name, variant in variants.items()]  # fmt: skip
    with torch.no_grad():
        for b in BATCHES:
            x = torch.zeros(b, *input_size)
            calls = {name: (lambda v=variant, x=x: v(x)) for name, variant in variants.items()}
            timed = time_interleaved(calls, batch=b, budget_seconds=args.seconds * len(calls))
            for row in rows:
                ratio = timed.ratio("parent", row["name"])
                row["ms"][b] = timed.latency(row["name"]).p50_ms
                row["speedup"][b] = {**ratio.to_dict(), "text": ratio.text()}
    hardware = hardware_fingerprint()
    print(f"{parent.path.name} pruned to <= {args.macs} of its MACs, timed interleaved: "
          f"{describe_hardware(hardware)}")  # fmt: skip
    print("| model | params | MACs kept | batch 1 ms | batch 64 ms |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        ms, up = row["ms"], row["speedup"]
        print(f"| {row['name']} | {row['params']:,} | {row['macs'] / rows[0]['macs']:.1%} | "
              f"{ms[1]:.2f} ({up[1]['text']}) | {ms[64]:.2f} ({up[64]['text']}) |")
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"run": str(parent.path), "macs": args.macs, "seconds": args.seconds, "hardware": hardware, "rows": rows}
    (OUT / f"prune_widths-{parent.path.name}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
