"""Convolutions on maps smaller than their kernel's reach: `nn.Conv2d` against `PaddingAwareConv2d`.

The layers of timm's resnet18 at 32x32 input whose taps partly read only padding (layer4 on 1x1 and
its strided entry onto 1x1), and one that has nothing to skip (layer3 on 2x2, as a control), batch
256, channels-last, float32: forward + backward milliseconds per call. Then whole training steps of
resnet18 (SGD) with the taps kept and skipped. Each pair is timed interleaved in one process
(`convforge.measure.paired.time_interleaved`): milliseconds are medians over rounds, speed-ups the
median of per-round ratios with its 95% interval.

    python benchmarks/padding_taps.py [--avx2]

Writes JSON to benchmarks/out/padding_taps.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from convforge.measure.paired import time_interleaved
from convforge.models.padding_taps import PaddingAwareConv2d, skip_padding_taps
from convforge.runs import describe_hardware, hardware_fingerprint
from cpu_kind import hold_to_avx2

ROOT = Path(__file__).resolve().parents[1]
# (name, in, out, stride, input side): 3x3 convolutions with padding 1
LAYERS = [
    ("layer4 (1x1 map)", 512, 512, 1, 1),
    ("layer4 entry (2x2 -> 1x1, stride 2)", 256, 512, 2, 2),
    ("layer3 (2x2 map, nothing to skip)", 256, 256, 1, 2),
]


def conv_step(conv: nn.Conv2d, side: int, batch: int):
    x = torch.randn(batch, conv.in_channels, side, side).to(memory_format=torch.channels_last).requires_grad_()
    conv = conv.to(memory_format=torch.channels_last)
    grad = torch.randn_like(conv(x))
    return lambda: conv(x).backward(grad)


def training_step(skip: bool, batch: int):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    if skip:
        skip_padding_taps(model)
    model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def paired(calls: dict, batch: int, budget: float) -> dict:
    """Both calls interleaved: each one's median milliseconds and how many times faster 'skipping' ran."""
    timed = time_interleaved(calls, batch=batch, warmup=1, budget_seconds=budget)
    ratio = timed.ratio("plain", "skipping")
    return {"plain_ms": timed.latency("plain").p50_ms, "skipping_ms": timed.latency("skipping").p50_ms,
            "speedup": ratio.to_dict(), "speedup_text": ratio.text()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timed rounds per pair")
    parser.add_argument("--avx2", action="store_true", help="hold PyTorch and oneDNN to AVX2 (benchmarks/cpu_kind.py)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "padding_taps.json")
    args = parser.parse_args()
    hold_to_avx2(args.avx2)
    rows = []
    print(f"batch {args.batch}, float32, channels-last; {describe_hardware()}\n")
    print("| layer | nn.Conv2d ms | PaddingAwareConv2d ms | speed-up (95% interval) |\n|---|---:|---:|---:|")
    for name, cin, cout, stride, side in LAYERS:
        plain = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        skipping = PaddingAwareConv2d(cin, cout, 3, stride=stride, padding=1)
        calls = {"plain": conv_step(plain, side, args.batch), "skipping": conv_step(skipping, side, args.batch)}
        row = {"layer": name, **paired(calls, args.batch, args.budget)}
        rows.append(row)
        print(f"| {name} | {row['plain_ms']:.1f} | {row['skipping_ms']:.1f} | {row['speedup_text']} |", flush=True)
    calls = {"plain": training_step(False, args.batch), "skipping": training_step(True, args.batch)}
    steps = paired(calls, args.batch, args.budget)
    print(f"\nresnet18 training step at 32x32: {steps['plain_ms']:.0f} ms with every tap, "
          f"{steps['skipping_ms']:.0f} ms skipping padding-only taps ({steps['speedup_text']})")
    result = {"benchmark": "padding_taps", "batch": args.batch, "layers": rows, "training_step": steps,
              "hardware": hardware_fingerprint()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
