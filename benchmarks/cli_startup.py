"""How long the command line takes to answer before it does any work (target: under 1 s).

Times whole processes, start-up included: `convforge --help`, `convforge train --help`, a mistyped
command (a usage error), and `convforge --version`, next to the floor (`python -c pass`) and to
`python -c "import torch, timm"` (what a command pays when it imports its libraries at start). Each is
run --repeats times after one unmeasured warm-up; medians are reported with min and max, because these
machines are shared and noisy. Also says which heavy modules `--help` left imported.

    python benchmarks/cli_startup.py --repeats 7

Writes JSON to benchmarks/out/cli_startup.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from convforge.runs import describe_hardware, hardware_fingerprint

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "convforge"]
COMMANDS = {
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
    "python -c 'import torch, timm'": [sys.executable, "-c", "import torch, timm"],
    "convforge --help": [*CLI, "--help"],
    "convforge train --help": [*CLI, "train", "--help"],
    "convforge trian (usage error)": [*CLI, "trian"],
    "convforge --version": [*CLI, "--version"],
}
TARGET_SECONDS = 1.0
_HEAVY = ("torch", "torchvision", "timm", "numpy", "PIL", "matplotlib", "onnxruntime", "fastapi", "torch_pruning")
_PROBE = (
    "import sys\n"
    "from convforge.cli import app\n"
    "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
    f"print('heavy:' + ','.join(m for m in {_HEAVY!r} if m in sys.modules))\n"
)


def time_command(command: list[str], repeats: int) -> list[float]:
    subprocess.run(command, capture_output=True)  # warm-up: file cache, bytecode
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cli_startup.json")
    args = parser.parse_args()
    hardware = hardware_fingerprint()
    print(f"{describe_hardware(hardware)}\n")
    print(f"| command | median s | min s | max s | under {TARGET_SECONDS:.0f} s |\n|---|---:|---:|---:|---|")
    rows = []
    for name, command in COMMANDS.items():
        seconds = time_command(command, args.repeats)
        median = statistics.median(seconds)
        row = {"command": name, "seconds": seconds, "median": median}
        rows.append(row)
        verdict = "yes" if median < TARGET_SECONDS else "no"
        print(f"| `{name}` | {median:.2f} | {min(seconds):.2f} | {max(seconds):.2f} | {verdict} |", flush=True)
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    marker = [line for line in probe.stdout.splitlines() if line.startswith("heavy:")][-1]
    imported = [m for m in marker.removeprefix("heavy:").split(",") if m]
    print(f"\nheavy modules imported by `convforge --help`: {', '.join(imported) or 'none'}")
    result = {"benchmark": "cli_startup", "repeats": args.repeats, "rows": rows,
              "imported_by_help": imported, "hardware": hardware}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
