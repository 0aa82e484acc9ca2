"""The report's "Compression" section: a pruned run against its parent - parameters, MACs, size,
measured latency and top-1 of the parent, the pruned model and the pruned-and-distilled one, each step
of a latency search, and how the child explains the parent's test images (explain's drift: the rank
correlation of the two models' maps, side by side). It reads the run's `prune` and `drift` records;
a run narrowed at initialisation (`--at-init`) shows its widths' budget and its top-1."""

from __future__ import annotations

from typing import Any

from convforge.report import plots
from convforge.report.sections import section
from convforge.runs import Run

BYTES_PER_PARAMETER = 4  # float32 weights


@section("compression", "Compression", order=65)
def compression(run: Run) -> dict[str, Any] | None:
    records = run.metrics("prune")
    if not records:
        return None
    record = records[-1]
    pruning = record["pruning"]
    before, after = pruning["before"], pruning["after"]
    if "latency_ms" not in record:  # narrowed at initialisation: no parent to compare with
        return {"at_init": record, "before": before, "after": after}
    batches = sorted(record["latency_ms"]["parent"], key=int)
    models = [("parent", before, record["latency_ms"]["parent"], record["parent_top1"]),
              ("pruned", after, record["latency_ms"]["child"], record.get("pruned_top1"))]  # fmt: skip
    finetuned = (run.info.get("prune_config") or {}).get("finetune")
    if finetuned:
        models.append((f"pruned + {finetuned} epochs distilled", after, record["latency_ms"]["child"], record["top1"]))
    rows = [{"name": name, "params": cost["params"], "macs": cost["macs"],
             "size_mb": cost["params"] * BYTES_PER_PARAMETER / 1e6, "latency": latency, "top1": top1}
            for name, cost, latency, top1 in models]  # fmt: skip
    largest = batches[-1]
    scored = [row for row in rows if row["top1"] is not None]
    by_latency = plots.scatter_chart([(r["name"], r["latency"][largest], r["top1"]) for r in scored],
                                     f"p50 latency at batch {largest} (ms)", "top-1")  # fmt: skip
    by_size = plots.scatter_chart([(r["name"], r["size_mb"], r["top1"]) for r in scored], "weights (MB)", "top-1")
    return {"record": record, "rows": rows, "batches": batches, "by_latency": by_latency, "by_size": by_size,
            "search": _search_chart(pruning), "drift": _drift(run)}  # fmt: skip


def _search_chart(pruning: dict[str, Any]) -> str | None:
    """Latency of every step of a speed-up search against the share of MACs kept."""
    steps = [pruning["before"], *pruning["steps"]]
    if not all(step.get("latency_ms") for step in steps):
        return None
    full = pruning["before"]["macs"]
    series = {f"batch {b}": ([s["macs"] / full for s in steps], [s["latency_ms"][b] for s in steps])
              for b in pruning["before"]["latency_ms"]}  # fmt: skip
    return plots.line_chart(series, "each pruning step", "p50 latency (ms)", xlabel="share of MACs kept")


def _drift(run: Run) -> dict[str, Any] | None:
    records = run.metrics("drift")
    if not records:
        return None
    latest = records[-1]
    path = run.recorded_artifact(latest.get("grid"))
    return {**latest, "uri": plots.png_data_uri(path.read_bytes()) if path is not None else None}
