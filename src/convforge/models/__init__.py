"""Architectures: `create_model` and `list_models` over timm's registry plus convforge's own.

Native architectures (one file each, added by the zoo) register in timm's registry on import.
"""

from convforge.models.factory import check_model_name, create_model, load_weights, read_state_dict
from convforge.models.info import ModelInfo, count_macs, count_params, list_models

__all__ = [
    "ModelInfo",
    "check_model_name",
    "count_macs",
    "count_params",
    "create_model",
    "list_models",
    "load_weights",
    "read_state_dict",
]
