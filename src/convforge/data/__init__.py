"""Dataset sources, safe decoding, the decode cache, on-device batched transforms and loaders."""

from convforge.data.decode import decode_image
from convforge.data.imageset import Dataset, ImageSet, SkippedFile
from convforge.data.spec import load_dataset

__all__ = ["Dataset", "ImageSet", "SkippedFile", "decode_image", "load_dataset"]
