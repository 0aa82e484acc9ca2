"""Explanation speed: convforge against pytorch-grad-cam, side by side, and against the forward pass.

* Grad-CAM and Eigen-CAM on resnet50 at 224x224, batch 32;
* Score-CAM on resnet18 at 112x112, batch 8 (one masked forward pass per channel of the target
  layer: 512 per image).

Images are the first CIFAR-10 test JPEGs of the shared archive, resized; models have timm's random
initialisation (nothing is downloaded; speed does not depend on the weights' values except through
Score-CAM's shortcut for channels that are constant, which random and trained ReLU networks both
have). Both libraries explain the same layer (`layer4`) for the same classes (the predictions), in
float32 on the CPU. The floor is the model's own forward pass on the same batch under no_grad, timed
both on the batch as given (NCHW) and in channels-last memory, which is how convforge feeds the model
(the input only; the model is left as it is): Grad-CAM and Eigen-CAM cannot beat the latter, since
their backward pass only has to reach the target layer.
pytorch-grad-cam runs as its README shows (`with GradCAM(model, target_layers) as cam: cam(x, targets)`),
at its default Score-CAM chunk of 16. The four calls of a row (both forwards and both explainers) run
interleaved in one process, in rotating order (`convforge.measure.paired.time_interleaved`): every time
is the median round, the speed-up the median of per-round ratios with its 95% interval (at least
--rounds rounds; 3 for the cases where the reference takes tens of seconds a call).

    python benchmarks/explain_speed.py --rounds 9
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM progress bars

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_grad_cam import EigenCAM, GradCAM, ScoreCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from convforge.explain import Explainer  # noqa: E402
from convforge.measure.paired import time_interleaved  # noqa: E402
from convforge.runs import describe_hardware, hardware_fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpg" / "cifar10-jpg.tar.gz"
REFERENCE = {"gradcam": GradCAM, "eigencam": EigenCAM, "scorecam": ScoreCAM}
CASES = [
    ("gradcam", "resnet50", 224, 32),
    ("eigencam", "resnet50", 224, 32),
    ("scorecam", "resnet18", 112, 8),
]


def load_images(archive: Path, count: int, size: int) -> torch.Tensor:
    """The first `count` test JPEGs, resized to size x size and normalised with ImageNet statistics."""
    pictures = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and "/test/" in f"/{member.name}" and member.name.lower().endswith(".jpg"):
                pictures.append(
                    np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                )
                if len(pictures) == count:
                    break
    x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def measure(method: str, model_name: str, size: int, batch: int, images: torch.Tensor, rounds: int) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=1000).eval()
    x = images[:batch]
    with torch.no_grad():
        targets = model(x).argmax(1).tolist()
    explainer = Explainer(model, "layer4")
    explainer.target_layer(x)  # found once per input size, as a session would

    x_channels_last = x.contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.no_grad():
            model(x)

    def forward_channels_last():
        with torch.no_grad():
            model(x_channels_last)

    def convforge_call():
        explainer(x, method, targets)

    def reference_call():
        with REFERENCE[method](model, [model.layer4]) as cam:
            cam(x, [ClassifierOutputTarget(t) for t in targets])

    slow = method in ("scorecam", "eigencam")  # the reference takes tens of seconds a call here
    calls = {"forward": forward, "forward_channels_last": forward_channels_last, "convforge": convforge_call,
             "pytorch_grad_cam": reference_call}  # fmt: skip
    timed = time_interleaved(calls, batch=batch, warmup=1, budget_seconds=0, min_rounds=3 if slow else rounds)
    seconds = {name: timed.latency(name).p50_ms / 1000 for name in calls}
    speedup = timed.ratio("pytorch_grad_cam", "convforge")
    return {
        "method": method,
        "model": model_name,
        "input": size,
        "batch": batch,
        "rounds": timed.rounds,
        "forward_s": seconds["forward"],
        "forward_channels_last_s": seconds["forward_channels_last"],
        "convforge_s": seconds["convforge"],
        "pytorch_grad_cam_s": seconds["pytorch_grad_cam"],
        "convforge_img_per_s": batch / seconds["convforge"],
        "pytorch_grad_cam_img_per_s": batch / seconds["pytorch_grad_cam"],
        "speedup": speedup.to_dict(),
        "speedup_text": speedup.text(),
        "convforge_over_forward": 1 / timed.ratio("forward", "convforge").median,
        "convforge_over_forward_channels_last": 1 / timed.ratio("forward_channels_last", "convforge").median,
        "times": timed.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per row (3 for the slow ones)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "explain_speed.json")
    args = parser.parse_args()
    images = {size: load_images(args.archive, 32, size) for size in {c[2] for c in CASES}}
    rows = [
        measure(method, model, size, batch, images[size], args.rounds)
        for method, model, size, batch in CASES
    ]
    print("| method | model | input | batch | forward NCHW (s) | forward channels-last (s) | convforge (s) |"
          " pytorch-grad-cam (s) | convforge img/s | pytorch-grad-cam img/s | speed-up (95% interval) |"
          " convforge / forward (NCHW, channels-last) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['model']} | {r['input']} | {r['batch']} | {r['forward_s']:.3f} | "
            f"{r['forward_channels_last_s']:.3f} | {r['convforge_s']:.3f} | {r['pytorch_grad_cam_s']:.3f} | "
            f"{r['convforge_img_per_s']:.1f} | {r['pytorch_grad_cam_img_per_s']:.1f} | **{r['speedup_text']}** | "
            f"{r['convforge_over_forward']:.2f}x, {r['convforge_over_forward_channels_last']:.2f}x |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"hardware": hardware_fingerprint(), "torch": torch.__version__,
                                    "timm": timm.__version__, "rows": rows}, indent=2))  # fmt: skip
    print(f"{describe_hardware()}; wrote {args.out}")


if __name__ == "__main__":
    main()
