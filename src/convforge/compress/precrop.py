"""`convforge prune ARCH DATA --at-init`: PreCropping ("Structured Pruning is All You Need for Pruning
CNNs at Initialization", Cai et al. 2022) - an architecture narrowed before any training, its layer-wise
widths chosen from an at-init saliency to meet a params or MACs budget, then trained from scratch as a
dense model.

The paper's finding is that at initialisation what matters is how many channels each layer keeps, not
which ones: a random initialisation has no channel worth more than its neighbours. So convforge builds
the architecture for DATA (its classes, channels and input size, as `train` would), lets SynFlow's
data-free saliency (compress/synflow.py, ranked across layers and recomputed every step) decide how
far each layer narrows until the budget holds, and trains what is left - the initialised weights of the
channels kept, cropped, not a re-initialisation, so both arms of the comparison start from the same
draw. `--uniform` is that comparison: every layer narrowed by the same share to the same budget.
Train-time options (epochs, seed) come from the normal training recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from convforge.compress.prune import PruneResult, check_target, prune_model
from convforge.errors import ConfigError, UserError
from convforge.models import create_model
from convforge.runs import check_free, check_replaceable
from convforge.train.config import TrainConfig
from convforge.train.engine import train
from convforge.train.setup import load_training_data, resolve_preprocessing


@dataclass
class PrecropResult:
    child: Path
    widths: str  # synflow or uniform
    pruning: PruneResult
    top1: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"child": str(self.child), "widths": self.widths, "pruning": self.pruning.to_dict(), "top1": self.top1}


def precrop_run(
    architecture: str,
    data: str,
    out: str | Path,
    *,
    params: float | None = None,
    macs: float | None = None,
    speedup: float | None = None,
    uniform: bool = False,
    epochs: int = 0,
    round_to: int | None = 8,
    config: TrainConfig | None = None,
    force: bool = False,
) -> PrecropResult:
    """Build `architecture` for DATA, narrow it at initialisation to keep `params` or `macs` of its
    cost (SynFlow's layer-wise widths, or the same share everywhere with `uniform`), and train it from
    scratch for `epochs` into the run folder `out`. `config` gives the rest of the training recipe."""
    if speedup is not None:
        raise ConfigError("--at-init narrows to a --params or --macs budget; a --speedup target needs a trained run")
    target, goal = check_target(params, macs)
    if epochs < 1:
        raise UserError("--at-init trains the narrowed model from scratch: give --epochs N (1 or more)")
    out = Path(out)
    (check_replaceable if force else check_free)(out)
    base = config or TrainConfig(data=data, model=architecture)
    recipe = replace(base, data=data, model=architecture, epochs=epochs, pretrained=False)
    dataset = load_training_data(recipe)
    torch.manual_seed(recipe.seed)  # the initialisation both --uniform and SynFlow widths start from
    model = create_model(architecture, num_classes=dataset.num_classes, in_chans=dataset.channels,
                         **recipe.model_kwargs)  # fmt: skip
    preprocessing, _ = resolve_preprocessing(model, dataset.image_shape, recipe)
    input_size = (dataset.channels, *preprocessing.input_size)
    widths = "uniform" if uniform else "synflow"
    pruning = prune_model(model, input_size, criterion="l2" if uniform else "synflow", target=target, goal=goal,
                          round_to=round_to, architecture=architecture)  # fmt: skip
    trained = train(recipe, out, model=model, command="convforge prune --at-init", dataset=dataset, force=force)
    trained.run.update(stage="prune", pruning=pruning.to_dict(),
                       prune_config={"at_init": True, "widths": widths, "target": target, "goal": goal,
                                     "round_to": round_to})  # fmt: skip
    top1 = trained.test.top1 if trained.test is not None else None
    result = PrecropResult(out, widths, pruning, top1)
    trained.run.append_metrics({"kind": "prune", **result.to_dict()})
    return result
