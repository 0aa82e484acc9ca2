"""Repeating a training run over seeds, to report mean and standard deviation instead of one number."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from convforge.device import resolve_device
from convforge.errors import UserError
from convforge.train import distributed
from convforge.train.config import TrainConfig
from convforge.train.engine import train
from convforge.train.progress import TrainProgress
from convforge.train.result import TrainResult, invoked_command
from convforge.train.setup import prepare_run


def train_seeds(
    config: TrainConfig,
    seeds: int,
    out: str | Path | None = None,
    *,
    progress: TrainProgress | None = None,
    runs_root: str | Path = "runs",
    force: bool = False,
) -> tuple[list[TrainResult], dict[str, Any]]:
    """Train `seeds` times (seed, seed+1, ...). The first run is `out`; the others are its children
    in out/seeds/seed-N. Returns the results and the mean and standard deviation of test top-1.
    `force` replaces an existing run folder at `out` (see `train`)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    command = invoked_command()
    # One dataset (and one validation split, drawn with the first seed) for all seeds, so the spread
    # measures training randomness only.
    world = distributed.join(resolve_device(config.device), config.dist_timeout)
    with distributed.rank_zero_first(world):  # as in `train`: rank 0 checks and fills the cache first
        config, out, dataset = prepare_run(config, out, runs_root, None, force=force, check=world.main)
    results = []
    for k in range(seeds):
        seed_config = replace(config, seed=config.seed + k)
        target = out if k == 0 else out / "seeds" / f"seed-{seed_config.seed}"
        if progress is not None and seeds > 1:
            progress.message(f"[bold]seed {seed_config.seed}[/bold] ({k + 1}/{seeds}) -> {target}")
        results.append(
            train(seed_config, target, progress=progress, command=command, dataset=dataset, force=force and k == 0)
        )
    summary = seeds_summary(results)
    if seeds > 1 and world.main:
        first = results[0].run
        first.append_metrics({"kind": "seeds", **summary})
        first.update(seeds=[r["seed"] for r in summary["runs"]], seeds_summary=summary)
    return results, summary


def seeds_summary(results: list[TrainResult]) -> dict[str, Any]:
    top1 = np.array([r.test.top1 for r in results if r.test is not None], dtype=np.float64)
    top5 = np.array([r.test.top5 for r in results if r.test is not None], dtype=np.float64)
    spread = lambda a: float(a.std(ddof=1)) if len(a) > 1 else 0.0  # noqa: E731 - sample std over seeds
    return {
        "n": len(results),
        "top1_mean": float(top1.mean()) if len(top1) else None,
        "top1_std": spread(top1) if len(top1) else None,
        "top5_mean": float(top5.mean()) if len(top5) else None,
        "top5_std": spread(top5) if len(top5) else None,
        "runs": [
            {
                "seed": r.run.info["config"]["seed"],
                "run": str(r.run.path),
                "top1": r.test.top1 if r.test else None,
            }
            for r in results
        ],
    }
