"""Using a trained model: prediction on image files, ONNX export with a parity gate, backends and
benchmarks (serving builds on them)."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "ParityError": "convforge.deploy.export",
    "Prediction": "convforge.deploy.predict",
    "bench": "convforge.deploy.bench",
    "export_model": "convforge.deploy.export",
    "export_run": "convforge.deploy.export",
    "expand_image_paths": "convforge.data.decode",
    "predict_files": "convforge.deploy.predict",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
