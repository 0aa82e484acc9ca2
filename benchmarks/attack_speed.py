"""Attack speed: convforge against torchattacks, side by side, on the same model and images.

resnet18 (timm, random initialisation: nothing is downloaded) at 32x32 on the first CIFAR-10 test
JPEGs of the shared archive, float32 on the CPU, batch 128. PGD-10 (eps 8/255, step 2/255, random
start) and FGSM (eps 8/255). torchattacks gets the same pixel-space model (convforge's
PixelSpaceModel) so both attack exactly the same function; convforge runs with its default early
stop (a sample leaves the batch once fooled) and, as a second column, without it. The attacks of a
row run interleaved in one process, in rotating order (`convforge.measure.paired.time_interleaved`):
images per second from the median round, ratios the median of per-round ratios with its 95% interval.

    python benchmarks/attack_speed.py --budget 20
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import timm
import torch
import torchattacks
from PIL import Image

from convforge.measure.paired import time_interleaved
from convforge.models.prepared import model_prepared
from convforge.robust.attacks import PixelSpaceModel, fgsm, pgd
from convforge.runs import describe_hardware

ARCHIVE = Path(os.environ.get("CONVFORGE_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def cifar_images(count: int) -> torch.Tensor:
    images = []
    with tarfile.open(ARCHIVE / "cifar10-jpg" / "cifar10-jpg.tar.gz") as archive:
        for member in archive:
            if member.isfile() and "/test/" in f"/{member.name}" and member.name.endswith(".jpg"):
                data = archive.extractfile(member).read()
                images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                if len(images) == count:
                    break
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per attack")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    pixel_model = PixelSpaceModel(model, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    images = cifar_images(args.batch)
    labels = pixel_model(images).argmax(1).detach()  # the model's own predictions: all correct at eps 0
    rows = []
    with model_prepared(pixel_model):
        cases = {
            "PGD-10": (
                lambda: torchattacks.PGD(pixel_model, eps=8 / 255, alpha=2 / 255, steps=10)(images, labels),
                lambda: pgd(pixel_model, images, labels, 8 / 255, steps=10, step_size=2 / 255),
                lambda: pgd(pixel_model, images, labels, 8 / 255, steps=10, step_size=2 / 255, early_stop=False),
            ),
            "FGSM": (
                lambda: torchattacks.FGSM(pixel_model, eps=8 / 255)(images, labels),
                lambda: fgsm(pixel_model, images, labels, 8 / 255),
                None,
            ),
        }
        for name, (reference, ours, ours_full) in cases.items():
            calls = {"torchattacks": reference, "convforge": ours}
            if ours_full is not None:
                calls["convforge_no_early_stop"] = ours_full
            timed = time_interleaved(calls, batch=len(images), warmup=1, budget_seconds=args.budget)
            row = {"attack": name, "rounds": timed.rounds}
            for tool in calls:
                row[tool] = timed.latency(tool).images_per_second
                if tool != "torchattacks":
                    ratio = timed.ratio("torchattacks", tool)
                    row[f"{tool}_ratio"], row[f"{tool}_ratio_text"] = ratio.to_dict(), ratio.text()
            rows.append(row)
    hardware = f"{describe_hardware()}, torch {torch.__version__}"
    out = Path(__file__).parent / "out" / "attack_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"hardware": hardware, "batch": args.batch, "rows": rows}, indent=2))
    print(f"resnet18 32x32, batch {args.batch}, float32, {hardware}\n")
    print("| attack | torchattacks img/s | convforge img/s | ratio (95% interval) "
          "| convforge without early stop | ratio | rounds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        full = r.get("convforge_no_early_stop")
        extra = f"{full:.0f} | {r['convforge_no_early_stop_ratio_text']}" if full else "- | -"
        print(f"| {r['attack']} | {r['torchattacks']:.0f} | {r['convforge']:.0f} | "
              f"{r['convforge_ratio_text']} | {extra} | {r['rounds']} |")  # fmt: skip


if __name__ == "__main__":
    main()
