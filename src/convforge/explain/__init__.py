"""Explain what a model looks at: CAM methods on the device, the target layer found automatically,
and faithfulness measured (deletion/insertion, pointing game, sanity check, drift)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "GRADIENT_METHODS": "convforge.explain.cam",
    "METHODS": "convforge.explain.cam",
    "Explainer": "convforge.explain.cam",
    "Explanation": "convforge.explain.cam",
    "explain": "convforge.explain.cam",
    "normalize_maps": "convforge.explain.cam",
    "principal_projection": "convforge.explain.cam",
    "TargetLayer": "convforge.explain.layers",
    "find_target_layer": "convforge.explain.layers",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
