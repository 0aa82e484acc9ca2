"""The training engine, its configuration and evaluation (imported on first use)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "EvalResult": "convforge.train.evaluate",
    "TrainConfig": "convforge.train.config",
    "TrainProgress": "convforge.train.progress",
    "TrainResult": "convforge.train.result",
    "evaluate": "convforge.train.evaluate",
    "resume": "convforge.train.engine",
    "train": "convforge.train.engine",
    "train_seeds": "convforge.train.seeds",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
