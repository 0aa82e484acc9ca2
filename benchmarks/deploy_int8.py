"""A trained run through the deployment path: export (with the parity gate), INT8 quantization (with
the accuracy check), then one latency table of PyTorch eager fp32 and bf16, ONNX Runtime fp32 and
ONNX Runtime INT8 at batch 1 and 64 on the same machine, the same threads and the same input, timed
interleaved as `convforge bench` times them: each speed-up over ORT fp32 is the median of per-round
ratios with its 95% interval.

    python benchmarks/deploy_int8.py RUN DATA [--calibration 512] [--threads 2] [--seconds 3] [--robust 1000]

RUN is a run folder trained by convforge (its model.onnx and model.int8.onnx are replaced), DATA the
dataset to calibrate on and evaluate (its train and test splits). ONNX Runtime chooses its INT8
kernels from the CPU itself: ONEDNN_MAX_CPU_ISA does not hold it to AVX2, so an AVX2-only figure needs
an AVX2-only machine. With --robust N, the PyTorch, ONNX fp32 and INT8 models are then stressed side by
side on N test images (FGSM and PGD crafted on PyTorch and transferred to the ONNX models, and every
corruption family at severities 1-5), written into the run as `convforge robust --backend` does. Writes
benchmarks/out/deploy_int8-<run>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convforge.checkpoint import load_model
from convforge.compress.quantize_run import quantize_run
from convforge.deploy.backends import run_backend
from convforge.deploy.bench import bench, open_source
from convforge.deploy.export import export_run
from convforge.measure.paired import Ratio
from convforge.report.compare import comparison
from convforge.robust.card import robustness_cards, write_card
from convforge.robust.corruptions import resolve_families
from convforge.runs import Run, describe_hardware, hardware_fingerprint

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["ort", "torch", "torch-bf16", "ort-int8"]  # bench's speed-ups are against the first: ORT fp32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--robust", type=int, default=0, help="test images for the robustness comparison")
    args = parser.parse_args()

    exported = export_run(args.run, data=args.data, images=512, force=True)
    quantized = quantize_run(args.run, args.data, calibration=args.calibration, max_drop=args.max_drop,
                             threads=args.threads, force=True, latency_seconds=args.seconds)  # fmt: skip
    result = bench(open_source(args.run), BACKENDS, [1, 64], threads=args.threads, budget_seconds=args.seconds)
    hardware = {**hardware_fingerprint(), "torch_threads": result.threads}
    print(f"{Path(args.run).name}: {describe_hardware(hardware)}")
    print(f"export parity: {json.dumps(exported.parity.to_dict())}")
    q = quantized
    print(f"quantize: fp32 top-1 {q.fp32_top1:.4f}, int8 top-1 {q.int8_top1:.4f} (drop {q.drop_points:.2f} "
          f"points, {q.method}, kept in fp32: {q.kept_fp32 or 'none'}), agreement {q.agreement:.4f}, "
          f"size {q.fp32_size_bytes / 1e6:.1f} -> {q.size_bytes / 1e6:.1f} MB")  # fmt: skip
    print("| backend | batch | p50 ms | p99 ms | img/s | vs ORT fp32 (95% interval) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in result.rows:
        if row.latency is None:
            print(f"| {row.backend} | {row.batch} | - | - | - | {row.unavailable} |")
            continue
        ratio = Ratio(**{k: row.speedup_interval[k] for k in ("median", "low", "high", "rounds")})
        print(f"| {row.backend} | {row.batch} | {row.latency.p50_ms:.2f} | {row.latency.p99_ms:.2f} | "
              f"{row.latency.images_per_second:.0f} | {ratio.text()} |")  # fmt: skip
    cards = robustness(args.run, args.data, args.robust) if args.robust else {}
    out = ROOT / "benchmarks" / "out" / f"deploy_int8-{Path(args.run).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"hardware": hardware, "export": exported.to_dict(), "quantize": quantized.to_dict(),
                               "bench": result.to_dict(), "robust": cards}, indent=2, default=str))  # fmt: skip


def robustness(run_path: str, data: str, images: int) -> dict:
    """torch, ort and ort-int8 on the same corrupted and adversarial images; prints the comparison."""
    run = Run.open(run_path)
    model, spec = load_model(run.path)
    models = {name: run_backend(run, model, name) for name in ("torch", "ort", "ort-int8")}
    cards = robustness_cards(models, spec, data, images=images, attacks=["fgsm", "pgd"],
                             epsilons=[1 / 255, 2 / 255, 4 / 255, 8 / 255], families=resolve_families("all"),
                             severities=[1, 2, 3, 4, 5])  # fmt: skip
    records = {name: card.to_dict() for name, card in cards.items()}
    for card in cards.values():
        write_card(run, card)
    print(f"| measure ({images} test images) | torch | ORT fp32 | ORT INT8 | INT8 - torch (points) |")
    print("|---|---:|---:|---:|---:|")
    for row in comparison(records):
        torch_, ort, int8 = (row["values"][name] for name in models)
        print(f"| {row['measure']} | {100 * torch_:.2f}% | {100 * ort:.2f}% | {100 * int8:.2f}% | "
              f"{100 * (int8 - torch_):+.2f} |")  # fmt: skip
    return records


if __name__ == "__main__":
    main()
