"""Making a trained model smaller and faster: INT8 quantization now; structured pruning and
distillation recovery next (imported on first use)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "QuantizeResult": "convforge.compress.quantize_run",
    "quantize_run": "convforge.compress.quantize_run",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
