"""Wall time and accuracy of `convforge demo`, the README's main command (target: under 3 minutes).

Runs the installed `convforge demo` end to end in a fresh cache (so the shapes data is drawn too, as on
a first run) --repeats times and reports the median. Writes JSON to benchmarks/out/demo_time.json.

    python benchmarks/demo_time.py --repeats 2 --seeds 0 1 2 [--avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from convforge.runs import describe_hardware, hardware_fingerprint
from cpu_kind import hold_to_avx2

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (one demo each, per repeat)")
    parser.add_argument("--avx2", action="store_true", help="hold PyTorch and oneDNN to AVX2 (benchmarks/cpu_kind.py)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "demo_time.json")
    args = parser.parse_args()
    hold_to_avx2(args.avx2)
    seconds, top1 = [], []
    for repeat in range(args.repeats):
        for seed in args.seeds:
            scratch = Path(tempfile.mkdtemp())  # a cold cache: the shapes are drawn again, as on a first run
            env = {**os.environ, "CONVFORGE_CACHE": str(scratch / "cache")}
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "convforge", "demo", "--out", str(scratch / "demo"), "--quiet",
                            "--seed", str(seed)], check=True, env=env)  # fmt: skip
            seconds.append(time.perf_counter() - started)
            top1.append(json.loads((scratch / "demo" / "run.json").read_text())["test"]["top1"])
            shutil.rmtree(scratch)
            print(f"repeat {repeat + 1}, seed {seed}: {seconds[-1]:.1f} s, test top-1 {100 * top1[-1]:.2f}%",
                  flush=True)  # fmt: skip
    result = {
        "benchmark": "demo_time",
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "seeds": args.seeds,
        "test_top1": top1,
        "hardware": hardware_fingerprint(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"median {result['median_seconds']:.1f} s over {len(seconds)} run(s); "
          f"{describe_hardware(result['hardware'])}; written to {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
