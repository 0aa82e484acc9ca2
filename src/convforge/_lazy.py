"""Package faces that import their modules on first use (PEP 562).

`import convforge.cli` imports `convforge` first; if the package face imported torch, timm and
torchvision eagerly, `convforge --help` would take seconds before printing a line. A face built
with `lazy_exports` keeps `from convforge import train` and `convforge.train(...)` working and only
imports `convforge.train.engine` when the name is first looked up.

One trap comes with it: importing the submodule `convforge.train.evaluate` makes Python set the
attribute `evaluate` of `convforge.train` to that module, hiding the exported function of the same
name. The eager faces avoided this by importing the function last; a lazy face refuses that one kind
of assignment instead (the module stays reachable through `sys.modules` and `import a.b.c`).
"""

import importlib
import sys
import types
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """`__getattr__` and `__dir__` for `package`, which re-exports each name from the module given;
    also keeps a submodule that shares an exported name from replacing it."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    class _Face(types.ModuleType):
        def __setattr__(self, name: str, value: object) -> None:
            if name in exports and isinstance(value, types.ModuleType):
                return  # a submodule named like an export (train.evaluate): the export wins
            super().__setattr__(name, value)

    sys.modules[package].__class__ = _Face
    return __getattr__, __dir__
