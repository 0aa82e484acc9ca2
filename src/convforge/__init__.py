"""convforge: the whole life of a convolutional vision model in one toolkit.

Build (`create_model`, `list_models`), train (`train`, `TrainConfig`), evaluate (`evaluate`),
and keep everything in run folders (`Run`, `load_model`). This module only re-exports.
"""

__version__ = "0.1.0"

from convforge.checkpoint import ModelSpec, load_model, save_model  # noqa: E402
from convforge.data import Dataset, ImageSet, load_dataset  # noqa: E402
from convforge.errors import UserError  # noqa: E402
from convforge.models import create_model, list_models, reparameterize_model  # noqa: E402
from convforge.runs import Run  # noqa: E402
from convforge.train import EvalResult, TrainConfig, TrainResult, evaluate, resume, train, train_seeds  # noqa: E402

__all__ = [
    "Dataset",
    "EvalResult",
    "ImageSet",
    "ModelSpec",
    "Run",
    "TrainConfig",
    "TrainResult",
    "UserError",
    "__version__",
    "create_model",
    "evaluate",
    "list_models",
    "load_dataset",
    "load_model",
    "reparameterize_model",
    "resume",
    "save_model",
    "train",
    "train_seeds",
]
