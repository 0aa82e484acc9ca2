"""Are adversarially robust CNNs more shape-biased? (Geirhos et al. 2019 report that they are.)

One command trains the same small CNN twice on `shapes:textured=1` (every class has its own shape
and its own texture, so either cue predicts the label), once normally and once adversarially (PGD
under L-inf), then measures on the same held-out images: clean accuracy, PGD-10 robust accuracy at
the training budget, and shape bias on the cue-conflict set (the shape of one class filled with the
texture of another). Writes benchmarks/out/shape_bias.json and prints a markdown table.

    python benchmarks/shape_bias.py --epochs 10 --eps 4/255 --adv-steps 5 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from convforge.checkpoint import load_model
from convforge.robust.attacks import parse_epsilon
from convforge.robust.card import robustness_card
from convforge.runs import describe_hardware
from convforge.train import TrainConfig, train

MODEL = "resnet10t"
MODEL_KWARGS = {"channels": [32, 48, 96, 128], "stem_width": 16}


def measure(kind: str, data: str, args, seed: int, root: Path) -> dict:
    eps = parse_epsilon(args.eps)
    config = TrainConfig(
        data=data, model=MODEL, model_kwargs=dict(MODEL_KWARGS), epochs=args.epochs, batch_size=64, lr=6e-3,
        crop="none", seed=seed, adv="pgd" if kind == "adversarial" else None, adv_eps=eps, adv_steps=args.adv_steps,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config, root / f"{kind}-{seed}")
    seconds = time.perf_counter() - started
    model, spec = load_model(result.run.path)
    card = robustness_card(model, spec, data, images=args.images, attacks=["pgd"], epsilons=[eps],
                           bias_images=args.images)  # fmt: skip
    robust = next(row.robust_accuracy for row in card.attacks if row.settings.eps > 0)
    return {"kind": kind, "seed": seed, "train_seconds": seconds, "clean_accuracy": card.clean_accuracy,
            "pgd10_accuracy": robust, **card.bias.to_dict()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eps", default="4/255")
    parser.add_argument("--adv-steps", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--data", default="shapes:size=32,textured=1,train=8000,val=500,test=1000")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in range(args.seeds):
            for kind in ("normal", "adversarial"):
                rows.append(measure(kind, args.data, args, seed, Path(root)))
                print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).parent / "out" / "shape_bias.json"
    out.parent.mkdir(exist_ok=True)
    hardware = f"{describe_hardware()}, torch {torch.__version__}"
    out.write_text(json.dumps({"args": vars(args), "hardware": hardware, "rows": rows}, indent=2))
    print(f"\n{args.data}, {MODEL} {MODEL_KWARGS}, {args.epochs} epochs, adversarial: PGD-{args.adv_steps} "
          f"eps {args.eps}; {hardware}\n")  # fmt: skip
    print("| training | seed | clean accuracy | PGD-10 accuracy | shape bias | shape / texture / neither | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['seed']} | {r['clean_accuracy']:.3f} | {r['pgd10_accuracy']:.3f} | "
              f"{r['shape_bias']:.3f} | {r['shape_decisions']} / {r['texture_decisions']} / {r['other_decisions']} | "
              f"{r['train_seconds']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
