"""Regenerate tests/models/official/<reference>.json from the official implementations, or check them.

    git clone https://github.com/raoyongming/HorNet && git -C HorNet checkout ac9e210   # and the others
    python -m tests.models.make_official_references --checkout hornet=HorNet --checkout ibnnet=IBN-Net \\
        --checkout replknet=RepLKNet-pytorch --checkout simplenet=SimpleNet_Pytorch \\
        --checkout unireplknet=UniRepLKNet [--check] [--only NAME]

Each reference records the official repository and the commit it was made with; check that commit out.
For each, the official module is imported from its checkout (not from convforge, which is never
imported here: the official modules register some of the same names with timm), the small
configuration the file records is built, the formula weights of `official_weights.formula_state_dict`
are loaded in the official layout, and the logits on `probe_input` are written with the state dict's key
names and shapes - for the training form, and for the deployed (re-parameterized) form where the model
has one. `--check` compares with the committed files instead of writing them: the same keys and shapes,
logits within 1e-5 of their largest magnitude. Needs only torch and timm beside the checkouts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from tests.models.official_weights import OFFICIAL, formula_state_dict, load_reference, probe_input

SIMPLENET_NETWORKS = {"imagenet_5m": 0, "imagenet_9m": 1, "cifar_310k": 2, "cifar_460k": 3, "cifar_5m": 4,
                      "cifar_5m_extra_pool": 5}  # fmt: skip


@dataclass(frozen=True)
class Official:
    checkout: str  # the --checkout name
    folder: str  # inside the checkout, put on sys.path
    module: str
    build: Callable  # (module, config, deploy) -> the official model
    deploys: bool = False


def _hornet(module, config: dict, deploy: bool):
    gnconvs = []
    for order, window in zip(config["orders"], config["global_filters"], strict=True):
        extra = {} if window is None else {"h": window[0], "w": window[1], "gflayer": module.GlobalLocalFilter}
        gnconvs.append(partial(module.gnconv, order=order, s=1.0 / 3.0, **extra))  # s: every official variant's
    return module.HorNet(num_classes=config["num_classes"], depths=config["depths"], base_dim=config["base_dim"],
                         gnconv=gnconvs)  # fmt: skip


def _ibnnet(module, config: dict, deploy: bool):
    if config["channels"] != [64, 128, 256, 512] or config["stem_width"] != 64:
        raise ValueError("the official ResNet_IBN has fixed widths (64, 128, 256, 512)")
    block = {"basic": module.BasicBlock_IBN, "bottleneck": module.Bottleneck_IBN}[config["block"]]
    return module.ResNet_IBN(block, config["layers"], ibn_cfg=tuple(config["ibn_cfg"]),
                             num_classes=config["num_classes"])  # fmt: skip


def _replknet(module, config: dict, deploy: bool):
    return module.RepLKNet(large_kernel_sizes=config["large_kernel_sizes"], layers=config["layers"],
                           channels=config["channels"], drop_path_rate=0.0, small_kernel=config["small_kernel"],
                           num_classes=config["num_classes"], use_sync_bn=False,
                           small_kernel_merged=deploy)  # fmt: skip


def _simplenet(module, config: dict, deploy: bool):
    return module.SimpleNet(num_classes=config["num_classes"], scale=config["scale"], mode=config["mode"],
                            network_idx=SIMPLENET_NETWORKS[config["layout"]])  # fmt: skip


def _unireplknet(module, config: dict, deploy: bool):
    return module.UniRepLKNet(num_classes=config["num_classes"], depths=config["depths"], dims=config["dims"],
                              kernel_sizes=config["kernel_sizes"], deploy=deploy,
                              attempt_use_lk_impl=False)  # fmt: skip


OFFICIALS = {
    "hornet": Official("hornet", ".", "hornet", _hornet),
    "ibnnet": Official("ibnnet", ".", "ibnnet.resnet_ibn", _ibnnet),
    "ibnnet_b": Official("ibnnet", ".", "ibnnet.resnet_ibn", _ibnnet),
    "replknet": Official("replknet", ".", "replknet", _replknet, deploys=True),
    "simplenet": Official("simplenet", "imagenet", "simplenet", _simplenet),
    "simplenet_imagenet": Official("simplenet", "imagenet", "simplenet", _simplenet),
    "unireplknet": Official("unireplknet", ".", "unireplknet", _unireplknet, deploys=True),
}


def official_outputs(official: Official, checkout: Path, config: dict, input_shape: list[int]) -> dict:
    """Keys, shapes and logits of the official model in each of its forms, with the formula weights."""
    sys.path.insert(0, str((checkout / official.folder).resolve()))
    try:
        module = importlib.import_module(official.module)
    finally:
        sys.path.pop(0)
    outputs = {}
    for form in ("train", "deploy") if official.deploys else ("train",):
        model = official.build(module, config, deploy=form == "deploy").eval()
        keys = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
        model.load_state_dict(formula_state_dict(keys), strict=True)
        with torch.no_grad():
            outputs[f"{form}_keys"] = keys
            outputs[f"{form}_logits"] = model(probe_input(input_shape)).tolist()
    return outputs


def compare(name: str, made: dict, committed: dict) -> list[str]:
    """What differs between regenerated outputs and the committed reference (empty: they agree)."""
    problems = []
    for field, value in made.items():
        if field.endswith("_keys") and value != committed.get(field):
            problems.append(f"{name}: {field} differ")
        elif field.endswith("_logits"):
            expected = torch.tensor(committed[field])
            difference = float((torch.tensor(value) - expected).abs().max())
            if difference > 1e-5 * max(float(expected.abs().max()), 1e-30):
                problems.append(f"{name}: {field} differ by up to {difference:.3g}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = sorted({official.checkout for official in OFFICIALS.values()})
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=PATH",
                        help=f"an official repository's checkout; names: {names}")
    parser.add_argument("--only", action="append", help="regenerate only these references")
    parser.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = parser.parse_args(argv)
    checkouts = dict(item.split("=", 1) for item in args.checkout)
    problems = []
    for name in args.only or sorted(OFFICIALS):
        official = OFFICIALS[name]
        if official.checkout not in checkouts:
            print(f"{name}: skipped (no --checkout {official.checkout}=PATH)")
            continue
        reference = load_reference(name)
        made = official_outputs(official, Path(checkouts[official.checkout]), reference["config"],
                                reference["input_shape"])  # fmt: skip
        if args.check:
            found = compare(name, made, reference)
            problems += found
            print(f"{name}: {'agrees with' if not found else 'DIFFERS from'} {OFFICIAL / (name + '.json')}")
        else:
            (OFFICIAL / f"{name}.json").write_text(json.dumps({**reference, **made}, indent=0) + "\n")
            print(f"{name}: written")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
