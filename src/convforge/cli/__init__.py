"""Command line: thin wrappers that parse options, call the library and print the result."""

from convforge.cli.app import app, main

__all__ = ["app", "main"]
