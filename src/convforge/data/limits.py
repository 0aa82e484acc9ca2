"""Limits on input that the command line shows as defaults, in a module that imports nothing (so
`convforge --help` does not import Pillow, numpy or torch)."""

# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS; tests/data check they agree)
DEFAULT_MAX_PIXELS = 89_478_485
