"""convforge: the whole life of a convolutional vision model in one toolkit.

Build (`create_model`, `list_models`), train (`train`, `TrainConfig`), evaluate (`evaluate`),
and keep everything in run folders (`Run`, `load_model`). This module only re-exports, lazily
(`_lazy.py`): importing `convforge` or the CLI does not import torch until a name needs it.
"""

from convforge._lazy import lazy_exports
from convforge._version import __version__ as __version__

_EXPORTS = {
    "ModelSpec": "convforge.checkpoint",
    "load_model": "convforge.checkpoint",
    "save_model": "convforge.checkpoint",
    "Dataset": "convforge.data.imageset",
    "ImageSet": "convforge.data.imageset",
    "load_dataset": "convforge.data.spec",
    "UserError": "convforge.errors",
    "create_model": "convforge.models",
    "list_models": "convforge.models",
    "reparameterize_model": "convforge.models",
    "Run": "convforge.runs",
    "EvalResult": "convforge.train.evaluate",
    "evaluate": "convforge.train.evaluate",
    "TrainConfig": "convforge.train.config",
    "TrainResult": "convforge.train.engine",
    "resume": "convforge.train.engine",
    "train": "convforge.train.engine",
    "train_seeds": "convforge.train.seeds",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*_EXPORTS, "__version__"])
