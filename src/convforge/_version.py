"""The version, in a module that imports nothing (run records and `--version` read it)."""

__version__ = "0.1.0"
