"""Large depthwise kernels on this CPU: F.conv2d against the alternatives, per kernel size and resolution.

Part 1 times one depthwise convolution (eval mode, no grad) at the kernel sizes, widths and resolutions
UniRepLKNet and RepLKNet use at 224x224, with every implementation `LargeKernelDWConv2d` can choose
(models/large_kernel.py): F.conv2d on NCHW input, on channels-last input, the kernel zero-padded by 2
in channels-last, and an FFT convolution; plus what the autotuner picks. Inputs arrive channels-last,
as convforge's engine and eval feed them. Part 2 times whole deployed models at batch 1: the autotuned
convolution against plain F.conv2d (CONVFORGE_LARGE_KERNEL_AUTOTUNE=0 behaviour).

Every implementation of a row is timed interleaved, in rotating order, in one process
(`convforge.measure.paired.time_interleaved`): the milliseconds are medians over rounds, and the
speed-ups are medians of per-round ratios with their 95% interval, so a drift of the machine lands on all.

    python benchmarks/large_kernel.py --budget 2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from convforge.measure.paired import time_interleaved
from convforge.models import create_model, large_kernel, reparameterize_model
from convforge.models.large_kernel import LargeKernelDWConv2d
from convforge.runs import describe_hardware, hardware_fingerprint

ROOT = Path(__file__).resolve().parents[1]
# (model, channels, resolution, kernel) at 224x224 input
LAYERS = [
    ("UniRepLKNet-A s1", 80, 28, 13), ("UniRepLKNet-A s2", 160, 14, 13), ("UniRepLKNet-S s1", 192, 28, 13),
    ("UniRepLKNet-S s2", 384, 14, 13), ("UniRepLKNet-S s3", 768, 7, 13),
    ("RepLKNet-31B s0", 128, 56, 31), ("RepLKNet-31B s1", 256, 28, 29), ("RepLKNet-31B s2", 512, 14, 27),
    ("RepLKNet-31B s3", 1024, 7, 13),
]  # fmt: skip
PLANS = ["nchw", "channels_last", "pad2", "fft"]


@torch.no_grad()
def layer_table(batch: int, budget: float) -> list[dict]:
    rows = []
    for name, channels, size, kernel in LAYERS:
        conv = LargeKernelDWConv2d(channels, kernel).eval()
        x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
        row = {"layer": name, "channels": channels, "resolution": size, "kernel": kernel, "batch": batch}
        # PyTorch's native NCHW kernel takes tens of seconds per call at these sizes
        plans = [p for p in PLANS if not (p == "nchw" and kernel > 15 and batch > 1)]
        calls = {plan: (lambda p=plan, c=conv, x=x: c.run(p, x)) for plan in plans}
        timed = time_interleaved(calls, batch=batch, warmup=1, budget_seconds=budget)
        for plan in PLANS:
            row[plan] = timed.latency(plan).p50_ms if plan in plans else None
        large_kernel.clear_plans()
        conv(x)
        row["chosen"] = next(iter(large_kernel._PLANS.values()))
        ratio = timed.ratio("channels_last", row["chosen"])
        row["chosen_vs_channels_last"], row["chosen_vs_channels_last_text"] = ratio.to_dict(), ratio.text()
        rows.append(row)
        print(row, flush=True)
    return rows


def _with_autotune(setting: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    os.environ["CONVFORGE_LARGE_KERNEL_AUTOTUNE"] = setting  # read by every call (models/large_kernel.py)
    return model(x)


@torch.no_grad()
def model_table(budget: float) -> list[dict]:
    rows = []
    for name in ("unireplknet_a", "unireplknet_s", "replknet_31b"):
        for layout in ("channels_last", "nchw"):
            memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model = reparameterize_model(create_model(name).eval()).to(memory_format=memory_format)
            x = torch.randn(1, 3, 224, 224).contiguous(memory_format=memory_format)
            large_kernel.clear_plans()
            calls = {"F.conv2d": lambda m=model, x=x: _with_autotune("0", m, x),
                     "autotuned": lambda m=model, x=x: _with_autotune("1", m, x)}  # fmt: skip
            timed = time_interleaved(calls, batch=1, budget_seconds=budget)
            os.environ.pop("CONVFORGE_LARGE_KERNEL_AUTOTUNE")
            ratio = timed.ratio("F.conv2d", "autotuned")
            row = {"model": name, "layout": layout, "F.conv2d_ms": timed.latency("F.conv2d").p50_ms,
                   "autotuned_ms": timed.latency("autotuned").p50_ms, "speedup": ratio.to_dict(),
                   "speedup_text": ratio.text()}  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed rounds per row")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "large_kernel.json")
    args = parser.parse_args()
    result = {
        "layers_batch1": layer_table(1, args.budget),
        "layers_batch8": layer_table(8, args.budget),
        "models_batch1_224": model_table(args.budget),
        "hardware": hardware_fingerprint(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for key in ("layers_batch1", "layers_batch8"):
        print(f"\n{key}: ms per call (median over interleaved rounds)")
        print("| layer | C | HxW | k | NCHW | channels-last | pad2 | FFT | chosen | chosen vs channels-last |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for r in result[key]:
            cells = [f"{r[p]:.2f}" if r[p] is not None else "-" for p in PLANS]
            print(f"| {r['layer']} | {r['channels']} | {r['resolution']} | {r['kernel']} | " + " | ".join(cells)
                  + f" | {r['chosen']} | {r['chosen_vs_channels_last_text']} |")  # fmt: skip
    print(f"\n{describe_hardware()}")
    print("\nwhole deployed models, batch 1, 224x224: | model | layout | F.conv2d ms | autotuned ms | speed-up |")
    for r in result["models_batch1_224"]:
        cells = f"{r['F.conv2d_ms']:.1f} | {r['autotuned_ms']:.1f} | {r['speedup_text']}"
        print(f"| {r['model']} | {r['layout']} | {cells} |")


if __name__ == "__main__":
    main()
