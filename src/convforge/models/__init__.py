"""Architectures: `create_model` and `list_models` over timm's registry plus convforge's own zoo.

The zoo's modules register their architectures in timm's registry when this package is imported,
so `timm.create_model` finds them too.
"""

from convforge.models import hornet, ibnnet, replknet, simplenet, unireplknet  # noqa: F401  (registers them)
from convforge.models.factory import check_model_name, create_model, load_weights
from convforge.models.info import ModelInfo, list_models
from convforge.models.reparam import reparameterize_model

__all__ = [
    "ModelInfo",
    "check_model_name",
    "create_model",
    "list_models",
    "load_weights",
    "reparameterize_model",
]
