"""Using a trained model: prediction on image files (ONNX export and serving build on it)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "Prediction": "convforge.deploy.predict",
    "expand_image_paths": "convforge.data.decode",
    "predict_files": "convforge.deploy.predict",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
