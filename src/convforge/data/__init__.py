"""Dataset sources, safe decoding, the decode cache, on-device batched transforms and loaders."""

from convforge.data.decode import decode_image
from convforge.data.imageset import Dataset, ImageSet, SkippedFile
from convforge.data.spec import absolute_spec, load_dataset

__all__ = ["Dataset", "ImageSet", "SkippedFile", "absolute_spec", "decode_image", "load_dataset"]
