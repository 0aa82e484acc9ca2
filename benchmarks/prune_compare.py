"""Pruning criteria side by side at the same MACs and the same recovery budget: convforge's stepped l2
(per layer, channels rounded to 8), convforge's lrp (relevance, ranked across layers), and Torch-Pruning
used the way its README shows (one-shot MetaPruner with GroupMagnitudeImportance, its defaults: no
rounding, per-layer ratio; the ratio found by bisection so that the MACs kept match).

    python benchmarks/prune_compare.py RUN DATA --macs 0.27 --epochs 8 [--criteria l2,lrp,tp-default]
        [--lr 1e-3] [--tag NAME]

Each child is distilled from RUN for --epochs with the same recipe (compress.prune_run.distill_child;
`--lr` its learning rate, by default a tenth of the parent's), then evaluated on DATA's test split and
timed at batch 1 and 64 against the parent, interleaved (`measure.paired.paired_speedup`: the speed-up
is the median of per-round ratios with its 95% interval; torch eager fp32, this machine's threads).
`--only-time` times the parent and
the children an earlier run left again, on a quiet machine, keeping their accuracies. Children go to
benchmarks/out/prune_compare/<run>-<criterion>[-<tag>]; the table and the hardware go to
benchmarks/out/prune_compare-<run>[-<tag>].json.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import torch

from convforge.checkpoint import load_model
from convforge.compress.prune import classifier_layers
from convforge.compress.prune_run import distill_child, prune_run
from convforge.data.sample import align_classes
from convforge.data.spec import load_dataset
from convforge.measure.counting import count_macs, count_params
from convforge.measure.paired import paired_speedup
from convforge.runs import Run, describe_hardware, hardware_fingerprint
from convforge.train.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def torch_pruning_default(model: torch.nn.Module, input_size, macs: float) -> torch.nn.Module:
    """Torch-Pruning's README recipe, one shot, its defaults; the ratio bisected to keep `macs` of the MACs."""
    import torch_pruning as tp

    full = count_macs(model, input_size)
    low, high, best = 0.0, 0.95, None
    for _ in range(12):
        ratio = (low + high) / 2
        pruned = copy.deepcopy(model).eval()
        importance = tp.importance.GroupMagnitudeImportance()
        pruner = tp.pruner.MetaPruner(pruned, torch.zeros(1, *input_size), importance=importance,
                                      pruning_ratio=ratio, ignored_layers=classifier_layers(pruned))  # fmt: skip
        pruner.step()
        kept = count_macs(pruned, input_size) / full
        if kept <= macs:
            high, best = ratio, pruned
        else:
            low = ratio
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("data")
    parser.add_argument("--macs", type=float, default=0.27)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--criteria", default="l2,lrp,tp-default")
    parser.add_argument("--lr", type=float, default=None, help="distillation learning rate")
    parser.add_argument("--tag", default="", help="suffix of the output names, to keep several budgets")
    parser.add_argument("--seconds", type=float, default=2.0, help="latency budget per measurement")
    parser.add_argument("--only-time", action="store_true", help="re-time the children of an earlier run")
    args = parser.parse_args()
    if args.only_time:
        return retime(args)

    parent = Run.open(args.run)
    model, spec = load_model(parent.path)
    input_size = (spec.in_chans, *spec.preprocessing.input_size)
    test = align_classes(load_dataset(args.data, channels=spec.in_chans).eval_split(), spec.classes, args.data)
    parent_top1 = evaluate(model, test, spec.preprocessing).top1
    rows = [_row("parent", model, model, input_size, args.seconds, top1=parent_top1)]
    for criterion in args.criteria.split(","):
        out = OUT / "prune_compare" / f"{parent.path.name}-{criterion}{_suffix(args)}"
        shutil.rmtree(out, ignore_errors=True)
        if criterion == "tp-default":
            child = torch_pruning_default(model, input_size, args.macs)
            pruned_top1 = evaluate(child, test, spec.preprocessing).top1
            distill_child(parent, spec, child, args.data, out, epochs=args.epochs, lr=args.lr)
        else:
            result = prune_run(parent.path, args.data, out, criterion=criterion, macs=args.macs, latency_seconds=0.2)
            pruned_top1 = result.top1
            distill_child(parent, spec, load_model(out)[0], args.data, out, epochs=args.epochs, lr=args.lr,
                          force=True)  # fmt: skip
        child = load_model(out)[0]
        rows.append(_row(criterion, child, model, input_size, args.seconds, pruned_top1=pruned_top1,
                         top1=evaluate(child, test, spec.preprocessing).top1))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    hardware = hardware_fingerprint()
    _table(rows, args.epochs, args.macs, parent.path.name, hardware)
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"run": str(parent.path), "macs": args.macs, "epochs": args.epochs, "lr": args.lr, "hardware": hardware,
              "rows": rows}  # fmt: skip
    (OUT / f"prune_compare-{parent.path.name}{_suffix(args)}.json").write_text(json.dumps(record, indent=1))


def _suffix(args) -> str:
    return f"-{args.tag}" if args.tag else ""


def retime(args) -> None:
    parent = Run.open(args.run)
    path = OUT / f"prune_compare-{parent.path.name}{_suffix(args)}.json"
    record = json.loads(path.read_text())
    parent_model, spec = load_model(parent.path)
    input_size = (spec.in_chans, *spec.preprocessing.input_size)
    for row in record["rows"]:
        child = OUT / "prune_compare" / f"{parent.path.name}-{row['name']}{_suffix(args)}"
        model = parent_model if row["name"] == "parent" else load_model(child)[0]
        row.update(_row(row["name"], model, parent_model, input_size, args.seconds, top1=row["top1"]))
    record["hardware"] = hardware_fingerprint()
    path.write_text(json.dumps(record, indent=1))
    _table(record["rows"], record["epochs"], record["macs"], parent.path.name, record["hardware"])


def _table(rows, epochs, macs, name, hardware) -> None:
    print(f"{name}, {epochs} epochs of distillation, MACs kept <= {macs}: {describe_hardware(hardware)}")
    print("| criterion | params kept | MACs kept | batch 1 ms | batch 64 ms | top-1 before recovery | top-1 after |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    first = rows[0]
    for row in rows:
        cells = [_latency_cell(row, b) for b in (1, 64)]
        before = f"{row['pruned_top1']:.2%}" if "pruned_top1" in row else ""
        print(f"| {row['name']} | {row['params'] / first['params']:.1%} | {row['macs'] / first['macs']:.1%} | "
              f"{cells[0]} | {cells[1]} | {before} | {row['top1']:.2%} |")  # fmt: skip


def _latency_cell(row: dict, batch: int) -> str:
    """'1.29 (2.06x, 2.01-2.10)': the child's p50 ms and its paired speed-up over the parent."""
    ms = {int(b): v for b, v in row["ms"].items()}[batch]
    ratio = {int(b): r for b, r in row.get("speedup", {}).items()}.get(batch)
    if ratio is None:
        return f"{ms:.2f}"
    noisy = ", too noisy to quote" if ratio["noisy"] else ""
    return f"{ms:.2f} ({ratio['median']:.2f}x, {ratio['low']:.2f}-{ratio['high']:.2f}{noisy})"


def _row(name, model, parent, input_size, seconds, **figures) -> dict:
    """Counts, and latency timed interleaved with the parent (the parent's own row: its latency alone)."""
    _, ms, ratios = paired_speedup(parent, model, input_size, (1, 64), 2 * seconds)
    speedup = {} if model is parent else {b: r.to_dict() for b, r in ratios.items()}
    return {"name": name, "params": count_params(model), "macs": count_macs(model, input_size), "ms": ms,
            "speedup": speedup, **figures}  # fmt: skip


if __name__ == "__main__":
    main()
