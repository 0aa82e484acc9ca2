"""Dataset sources, safe decoding, the decode cache, on-device batched transforms and loaders
(imported on first use)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "Dataset": "convforge.data.imageset",
    "ImageSet": "convforge.data.imageset",
    "SkippedFile": "convforge.data.imageset",
    "absolute_spec": "convforge.data.spec",
    "decode_image": "convforge.data.decode",
    "load_dataset": "convforge.data.spec",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
