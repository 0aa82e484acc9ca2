"""Explain what a model looks at: CAM methods on the device, the target layer found automatically,
and faithfulness measured (deletion/insertion, pointing game, sanity check, drift)."""

from convforge.explain.cam import (
    GRADIENT_METHODS,
    METHODS,
    Explainer,
    Explanation,
    explain,
    normalize_maps,
    principal_projection,
)
from convforge.explain.layers import TargetLayer, find_target_layer

__all__ = [
    "GRADIENT_METHODS",
    "METHODS",
    "Explainer",
    "Explanation",
    "TargetLayer",
    "explain",
    "find_target_layer",
    "normalize_maps",
    "principal_projection",
]
