"""Using a trained model: prediction on image files (ONNX export and serving build on it)."""

from convforge.deploy.predict import Prediction, expand_image_paths, predict_files

__all__ = ["Prediction", "expand_image_paths", "predict_files"]
