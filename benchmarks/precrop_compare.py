"""PreCropping against uniform narrowing at equal MACs (issue 15): the same architecture, narrowed at
initialisation to the same MACs budget either with SynFlow's layer-wise widths (PreCropping) or with
the same share in every layer, each trained from scratch with the same recipe and epochs, for several
seeds (the seed draws the initialisation and the data order).

    python benchmarks/precrop_compare.py DATA [--model resnet18] [--macs 0.3] [--epochs 4] [--seeds 0,1]

Runs go to benchmarks/out/precrop/<model>-<widths>-s<seed>; the table and the hardware to
benchmarks/out/precrop_compare-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from convforge.compress.precrop import precrop_run
from convforge.runs import describe_hardware, hardware_fingerprint

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--macs", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for uniform in (False, True):
            widths = "uniform" if uniform else "synflow"
            out = OUT / "precrop" / f"{args.model}-{widths}-s{seed}"
            shutil.rmtree(out, ignore_errors=True)
            from convforge.train.config import TrainConfig

            config = TrainConfig(data=args.data, model=args.model, seed=seed)
            result = precrop_run(args.model, args.data, out, macs=args.macs, uniform=uniform, epochs=args.epochs,
                                 config=config)  # fmt: skip
            before, after = result.pruning.before, result.pruning.after
            rows.append({"widths": widths, "seed": seed, "top1": result.top1, "params": after.params / before.params,
                         "macs": after.macs / before.macs})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    hardware = hardware_fingerprint()
    print(f"{args.model}, MACs kept <= {args.macs}, {args.epochs} epochs from scratch: {describe_hardware(hardware)}")
    print("| widths | params kept | MACs kept | top-1 per seed | mean ± std |")
    print("|---|---:|---:|---|---:|")
    for widths in ("synflow", "uniform"):
        mine = [row for row in rows if row["widths"] == widths]
        top1 = [row["top1"] for row in mine]
        spread = statistics.stdev(top1) if len(top1) > 1 else 0.0
        print(f"| {widths} | {mine[0]['params']:.1%} | {mine[0]['macs']:.1%} | "
              f"{', '.join(f'{t:.2%}' for t in top1)} | {statistics.mean(top1):.2%} ± {spread:.2%} |")  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "macs": args.macs, "epochs": args.epochs, "hardware": hardware, "rows": rows}
    (OUT / f"precrop_compare-{args.model}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
