"""Architectures: `create_model` and `list_models` over timm's registry plus convforge's own zoo.

The zoo's modules register their architectures in timm's registry when this package is imported,
so `timm.create_model` finds them too.
"""

from convforge.models import hornet, ibnnet, replknet, simplenet, unireplknet  # noqa: F401  (registers them)
from convforge.models.factory import check_model_name, create_model, load_weights, read_state_dict
from convforge.models.info import ModelInfo, count_macs, count_params, list_models
from convforge.models.reparam import reparameterize_model

__all__ = [
    "ModelInfo",
    "check_model_name",
    "count_macs",
    "count_params",
    "create_model",
    "list_models",
    "load_weights",
    "read_state_dict",
    "reparameterize_model",
]
