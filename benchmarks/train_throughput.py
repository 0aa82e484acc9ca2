"""Training throughput: convforge's engine against the pipeline timm's train.py runs, side by side.

Both train the same timm model (resnet18, 10 classes, 32x32 CIFAR-10 JPEGs) with the same optimizer
(timm's SGD, lr 0.1, momentum 0.9, wd 5e-4) and batch size for the same number of steps:

* timm baseline: `timm.data.create_dataset` on the extracted ImageFolder and `timm.data.create_loader`
  with its default training transforms (RandomResizedCrop, flip, colour jitter, ToTensor, Normalize)
  and 2 workers, then a plain fp32 training loop, as timm's train.py runs without --amp.
* convforge: `convforge.train` on the same images (decoded once into the cache beforehand, as a second
  run would find them), batched device-side augmentation, channels_last, convolutions that skip the
  taps which only read padding (models/padding_taps.py: resnet18's 1x1 and 2x2 maps at 32 px) and its
  default precision (bf16 autocast where the CPU has native bf16). A row with `amp=off` separates the
  precision's gain, and one with the padding taps kept the tap skipping's.

`--avx2` holds PyTorch and oneDNN to AVX2 kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA) to show
the figures of a CPU without AVX-512 on one that has it; the hardware line says so.

Each round runs every configuration once, in an order that rotates from round to round, so a drift of
the machine lands on all; the ratio against timm is the median of per-round ratios with its 95%
interval (`convforge.measure.paired`), images per second the median over rounds. Writes JSON to
benchmarks/out/.

    python benchmarks/train_throughput.py --steps 30 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import timm.data
import torch
from timm.optim import create_optimizer_v2

from convforge import TrainConfig, train
from convforge.data import load_dataset
from convforge.measure.paired import per_round_ratio, rotating_rounds
from convforge.runs import describe_hardware, hardware_fingerprint
from cpu_kind import hold_to_avx2

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpg" / "cifar10-jpg.tar.gz"


def timm_baseline(folder: Path, steps: int, batch_size: int, workers: int) -> float:
    """Images per second of timm's library pipeline (fp32, default train transforms)."""
    torch.manual_seed(0)
    dataset = timm.data.create_dataset("", root=str(folder / "train"), is_training=True)
    loader = timm.data.create_loader(
        dataset,
        input_size=(3, 32, 32),
        batch_size=batch_size,
        is_training=True,
        use_prefetcher=False,
        num_workers=workers,
        device=torch.device("cpu"),
    )
    model = timm.create_model("resnet18", num_classes=10)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    started, seen = time.perf_counter(), 0
    for step, (images, targets) in enumerate(loader, start=1):
        loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(targets)
        if step == steps:
            break
    return seen / (time.perf_counter() - started)


def convforge_engine(archive: Path, steps: int, batch_size: int, amp: str, runs: Path, skip_taps: bool = True) -> float:
    """Images per second of one convforge training epoch of exactly `steps` batches."""
    dataset = load_dataset(f"cifar10:{archive}")
    keep = np.random.default_rng(0).permutation(len(dataset.train))[: steps * batch_size]
    dataset.splits = {"train": dataset.train.subset(np.sort(keep))}
    config = TrainConfig(data=f"cifar10:{archive}", model="resnet18", epochs=1, batch_size=batch_size,
                         opt="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9, warmup_epochs=0, amp=amp,
                         val_fraction=0.0, skip_padding_taps=skip_taps)  # fmt: skip
    result = train(config, runs / f"convforge-{amp}-{time.time_ns()}", dataset=dataset)
    return result.run.metrics("epoch")[0]["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (each runs every configuration once)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "train_throughput.json")
    parser.add_argument("--avx2", action="store_true", help="hold PyTorch and oneDNN to AVX2 (re-executes)")
    args = parser.parse_args()
    hold_to_avx2(args.avx2)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = scratch / "cifar10"
        with tarfile.open(args.archive) as archive:
            archive.extractall(folder, filter="data")
        folder = next(p.parent for p in folder.rglob("train") if p.is_dir())
        load_dataset(f"cifar10:{args.archive}")  # decode once, as any second run finds it
        runs = {
            "timm (fp32, 2 workers)": lambda: timm_baseline(folder, args.steps, args.batch_size, args.workers),
            "convforge (default amp)": lambda: convforge_engine(args.archive, args.steps, args.batch_size, "auto",
                                                                scratch),
            "convforge (amp off)": lambda: convforge_engine(args.archive, args.steps, args.batch_size, "off", scratch),
            "convforge (amp off, padding taps kept)": lambda: convforge_engine(
                args.archive, args.steps, args.batch_size, "off", scratch, skip_taps=False),
        }  # fmt: skip
        rows = rotating_rounds(runs, args.repeats, report=lambda done, rows: print(
            f"round {done}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rows.items()), flush=True))

    medians = {name: statistics.median(values) for name, values in rows.items()}
    baseline = rows["timm (fp32, 2 workers)"]
    ratios = {name: per_round_ratio(values, baseline) for name, values in rows.items()}
    result = {
        "benchmark": "train_throughput",
        "model": "resnet18",
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "images_per_second": rows,
        "median_images_per_second": medians,
        "ratio_vs_timm": {name: ratio.to_dict() for name, ratio in ratios.items()},
        "hardware": hardware_fingerprint(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("\n| pipeline | median img/s | ratio vs timm (95% interval) |\n|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.0f} | {ratios[name].text()} |")
    print(f"\nhardware: {describe_hardware(result['hardware'])}; written to {args.out}")


if __name__ == "__main__":
    main()
