"""What a model costs: parameters and multiply-accumulates today; latency, throughput and memory
join them as the deploy work lands (imported on first use)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "count_macs": "convforge.measure.counting",
    "count_params": "convforge.measure.counting",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
