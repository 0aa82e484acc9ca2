"""What a model costs: parameters, multiply-accumulates, peak activation memory, latency and
throughput (imported on first use)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "Latency": "convforge.measure.latency",
    "ModelCost": "convforge.measure.cost",
    "count_macs": "convforge.measure.counting",
    "count_params": "convforge.measure.counting",
    "measure_latency": "convforge.measure.cost",
    "measure_model": "convforge.measure.cost",
    "peak_activation_bytes": "convforge.measure.memory",
    "time_calls": "convforge.measure.latency",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
