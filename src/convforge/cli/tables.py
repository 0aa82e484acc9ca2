"""Rich tables that several commands print (train and eval, explain and demo, robust and demo).
Shared presentation, not a command: commands import it, it imports no command."""

from typing import TYPE_CHECKING

from rich.table import Table

from convforge.cli.common import Output, percent

if TYPE_CHECKING:
    from convforge.explain.study import MethodComparison
    from convforge.robust.card import RobustnessCard
    from convforge.train.evaluate import EvalResult


def eval_table(result: "EvalResult", title: str) -> Table:
    """Top-1, top-5 and the worst classes of an evaluation, as a rich table."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("split", f"{result.split} ({result.images} images)")
    table.add_row("precision", result.precision)
    table.add_row("top-1", percent(result.top1))
    table.add_row(f"top-{result.topk}", percent(result.top5))
    table.add_row("loss", f"{result.loss:.4f}")
    if result.calibration is not None:
        table.add_row("calibration error (ECE)", f"{result.calibration['ece']:.4f}")
    worst = sorted((v, k) for k, v in result.per_class.items() if v is not None)[:3]
    table.add_row("weakest classes", ", ".join(f"{k} {percent(v)}" for v, k in worst))
    return table


def comparison_table(comparison: "MethodComparison", title: str) -> Table:
    table = Table(title=title)
    for column in ("method", "layer", "pointing game", "energy in mask", "deletion AUC ↓", "insertion AUC ↑"):
        table.add_column(column, justify="left" if column in ("method", "layer") else "right")
    table.add_column("sanity ρ", justify="right")
    table.add_column("seconds", justify="right")

    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in comparison.scores:
        sanity = number(row.sanity_correlation, 2)
        if row.sanity_passed is False:
            sanity = f"[red]{sanity} (fails)[/red]"
        if row.sanity_constant_maps:
            verdict = "too few to say" if row.sanity_passed is None else "left out"
            sanity += f" [yellow]({row.sanity_constant_maps} constant: {verdict})[/yellow]"
        table.add_row(
            row.method,
            row.layer or "-",
            number(row.pointing_game),
            number(row.energy_inside),
            number(row.deletion_auc),
            number(row.insertion_auc),
            sanity,
            f"{row.seconds:.1f}",
        )
    if comparison.random_map:
        random_map = comparison.random_map
        table.add_row(
            "[dim]random map[/dim]", "-", number(random_map["pointing_game"]), number(random_map["energy_inside"]),
            "-", "-", "-", "-",
        )  # fmt: skip
    return table


def attack_table(card: "RobustnessCard", title: str = "") -> Table:
    transfer = f", transferred from {card.attacks_crafted_on}" if card.attacks_crafted_on else ""
    table = Table(
        title=f"{title}accuracy under attack ({card.images} images, clean {percent(card.clean_accuracy)}{transfer})"
    )
    for column in ("attack", "eps", "steps", "robust accuracy", "seconds"):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for row in card.attacks:
        if row.settings.eps > 0:
            table.add_row(row.settings.name, f"{row.settings.eps * 255:.3g}/255", str(row.settings.steps),
                          percent(row.robust_accuracy), f"{row.seconds:.1f}")  # fmt: skip
    return table


def corruption_table(card: "RobustnessCard", title: str = "") -> Table:
    corruptions = card.corruptions
    severities = sorted({s for v in corruptions.accuracy.values() for s in v})
    clean = percent(card.clean_accuracy)
    table = Table(title=f"{title}accuracy under corruption (preset {corruptions.preset}, clean {clean})")
    table.add_column("family", no_wrap=True)
    for s in severities:
        table.add_column(f"s{s}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("rel. robustness", justify="right")
    if card.corruption_errors:
        table.add_column("CE", justify="right")
    for family, by_severity in corruptions.accuracy.items():
        cells = [percent(by_severity[s]) for s in severities]
        cells += [percent(corruptions.mean_accuracy(family)), f"{corruptions.relative_robustness(family) or 0:.3f}"]
        if card.corruption_errors:
            ce = card.corruption_errors.corruption_error.get(family)
            cells.append("-" if ce is None else f"{100 * ce:.1f}%")
        table.add_row(family, *cells)
    return table


def print_card(output: Output, card: "RobustnessCard", title: str = "") -> None:
    if card.attacks:
        output.table(attack_table(card, title))
    if card.corruptions:
        output.table(corruption_table(card, title))
    if card.corruption_errors:
        errors = card.corruption_errors
        relative = "" if errors.relative_mce is None else f", relative mCE {100 * errors.relative_mce:.1f}%"
        output.message(f"mCE against {errors.baseline}: {100 * errors.mce:.1f}%{relative}")
    if card.bias:
        bias = card.bias
        value = "-" if bias.shape_bias is None else f"{bias.shape_bias:.3f}"
        output.message(
            f"shape bias {value} on {bias.images} cue-conflict images ({bias.shape_decisions} by shape, "
            f"{bias.texture_decisions} by texture, {bias.other_decisions} neither)"
        )


def robust_comparison_table(cards: dict[str, dict]) -> Table:
    """Several models' robustness side by side (`robust.card.comparison`), with each model's change
    against the first one in points."""
    from convforge.report.compare import comparison

    names = list(cards)
    table = Table(title=f"robustness side by side ({next(iter(cards.values()))['images']} images)")
    table.add_column("measure")
    for index, name in enumerate(names):
        table.add_column(name if index == 0 else f"{name} (Δ points)", justify="right")
    for row in comparison(cards):
        first = row["values"][names[0]]
        cells = [percent(first)]
        for name in names[1:]:
            value = row["values"][name]
            change = "" if value is None or first is None else f" ({100 * (value - first):+.1f})"
            cells.append(percent(value) + change)
        table.add_row(row["measure"], *cells)
    return table


def prune_table(result: dict, title: str) -> Table:
    """Parent against pruned child: parameters, MACs, top-1 and measured latency."""
    pruning = result["pruning"]
    before, after = pruning["before"], pruning["after"]
    table = Table(title=title)
    for column in ("", "parent", "pruned", "kept"):
        table.add_column(column, justify="left" if not column else "right")
    for name in ("params", "macs"):
        table.add_row(name, f"{before[name]:,}", f"{after[name]:,}", percent(after[name] / max(before[name], 1)))
    table.add_row("top-1", percent(result["parent_top1"]), percent(result["top1"]), "")
    for batch, speedup in result["speedup"].items():
        parent, child = result["latency_ms"]["parent"][batch], result["latency_ms"]["child"][batch]
        interval = result.get("speedup_interval", {}).get(batch)
        told = f"{speedup:.2f}x faster" if interval is None else speedup_text(interval)
        table.add_row(f"latency batch {batch} (p50 ms)", f"{parent:.2f}", f"{child:.2f}", told)
    return table


def speedup_text(ratio: dict) -> str:
    """'1.52x faster (1.48-1.57)' from a paired measurement's ratio, or why no figure is quoted."""
    # imported here: the tables are imported by --help, which loads no torch
    from convforge.measure.paired import Ratio

    text = Ratio.from_dict(ratio).text(" faster")
    return f"[yellow]{text}[/yellow]" if ratio["noisy"] else text


def export_table(parity: dict, title: str) -> Table:
    """The parity figures of an export: PyTorch against ONNX Runtime on the same images."""
    table = Table(title=title)
    table.add_column("parity check")
    table.add_column("value", justify="right")
    table.add_column("required", justify="right")
    table.add_row("images compared", str(parity["images"]), "")
    allowed = parity.get("allowed", parity["atol"])  # records before the tolerance scaled with the logits
    table.add_row("largest |logit difference|", f"{parity['max_abs_logit_diff']:.3g}", f"≤ {allowed:.3g}")
    table.add_row("top-1 agreement", percent(parity["top1_agreement"]), f"≥ {percent(parity['min_agreement'])}")
    table.add_row("largest probability difference", f"{parity['max_prob_diff']:.3g}", "")
    return table


def bench_table(result: dict, title: str) -> Table:
    """Backend x batch: p50/p99 latency, throughput and speed-up against the first backend."""
    table = Table(title=title)
    for column in ("backend", "batch", "p50 ms", "p99 ms", "img/s", "speed-up", "note"):
        table.add_column(column, justify="left" if column in ("backend", "note") else "right")
    for row in result["rows"]:
        if row["unavailable"]:
            table.add_row(row["backend"], str(row["batch"]), "-", "-", "-", "-", f"[dim]{row['unavailable']}[/dim]")
            continue
        interval = row.get("speedup_interval")
        if row.get("noisy") or (interval and interval["noisy"]):
            table.add_row(row["backend"], str(row["batch"]), "-", "-", "-", "-",
                          f"[yellow]too noisy to quote: median {row['p50_ms']:.2f} ms, 95% interval "
                          f"{row['p50_low_ms']:.2f}-{row['p50_high_ms']:.2f}: the machine is busy[/yellow]")
            continue
        speedup = f"{row['speedup']:.2f}x" + (f" ({interval['low']:.2f}-{interval['high']:.2f})" if interval else "")
        table.add_row(row["backend"], str(row["batch"]), f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                      f"{row['images_per_second']:.0f}", speedup, "")  # fmt: skip
    return table
