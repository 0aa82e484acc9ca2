"""Several records of one run read side by side: the robustness cards of a run's models (PyTorch,
exported, quantized), which `convforge robust --backend` prints and the report's Deployment section
shows. Works on the records as metrics.jsonl holds them (plain dicts), so it needs no library above."""

from collections.abc import Mapping
from typing import Any

from convforge.runs import TORCH_MODEL


def record_model(record: dict[str, Any]) -> str:
    """Which model a robust record measured (records from before exported models were all PyTorch's)."""
    return record.get("model") or TORCH_MODEL


def latest_by_model(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The latest robust record of each model, the PyTorch model first."""
    latest = {record_model(record): record for record in records}
    return dict(sorted(latest.items(), key=lambda item: item[0] != TORCH_MODEL))


def comparison(cards: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The side-by-side table of several models' cards (as `to_dict` writes them): one row per measure,
    one value per model, for the measures every card has. Attack rows match on attack, norm, budget and
    steps; corruption rows are each family's mean over severities."""

    def attack_key(row: dict[str, Any]) -> tuple:
        return row["name"], row["norm"], row["eps"], row["steps"]

    def attack_label(row: dict[str, Any]) -> str:
        budget = f"{row['eps'] * 255:.3g}/255" if row["norm"] == "linf" else f"{row['eps']:.3g}"
        return f"{row['name']} {budget}"

    measures: dict[str, dict[str, float | None]] = {"clean accuracy": {}}
    labels: dict[tuple, str] = {}
    for name, card in cards.items():
        measures["clean accuracy"][name] = card["clean_accuracy"]
        for row in card.get("attacks") or []:
            if row["eps"] > 0:
                labels[attack_key(row)] = attack_label(row)
                measures.setdefault(labels[attack_key(row)], {})[name] = row["robust_accuracy"]
        corruptions = card.get("corruptions") or {}
        for family, value in (corruptions.get("mean_accuracy") or {}).items():
            measures.setdefault(f"{family} (mean over severities)", {})[name] = value
        if corruptions:
            measures.setdefault("mean corrupted accuracy", {})[name] = corruptions["mean_corrupted_accuracy"]
        if card.get("bias"):
            measures.setdefault("shape bias", {})[name] = card["bias"]["shape_bias"]
    return [{"measure": measure, "values": values} for measure, values in measures.items()
            if len(values) == len(cards)]  # fmt: skip
