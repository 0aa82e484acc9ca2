"""Package faces that import their modules on first use (PEP 562).

`import convforge.cli` imports `convforge` first; if the package face imported torch, timm and
torchvision eagerly, `convforge --help` would take seconds before printing a line. A face built
with `lazy_exports` keeps `from convforge import train` and `convforge.train(...)` working and only
imports `convforge.train.engine` when the name is first looked up.

One trap comes with it: some exported functions share their name with a submodule (`convforge.train`
the function and `convforge.train` the package; `convforge.train.evaluate` the function and its
module). Python binds the submodule to the package's attribute when it is imported, and `import a.b.c`
walks those attributes, so either the function hides the module (`import convforge.train.engine`
fails) or the module hides the function (`convforge.train(config)` fails). Here the name is bound to
the submodule made callable as the function (`__call__` forwards, `__wrapped__` is the function, so
`inspect.signature` shows its parameters): both uses work.
"""

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """`__getattr__` and `__dir__` for `package`, which re-exports each name from the module given; a
    name shared with a submodule resolves to that submodule, callable as the exported function."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        submodule = f"{package}.{name}"
        if callable(value) and importlib.util.find_spec(submodule) is not None:
            value = _callable_module(importlib.import_module(submodule), value)
        vars(sys.modules[package])[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    class _Face(types.ModuleType):
        def __setattr__(self, name: str, value: object) -> None:
            if name in exports and isinstance(value, types.ModuleType) and not callable(value):
                return  # the import system binding a submodule named like an export: __getattr__ decides
            super().__setattr__(name, value)

    sys.modules[package].__class__ = _Face
    return __getattr__, __dir__


def _callable_module(module: types.ModuleType, function: Callable) -> types.ModuleType:
    """`module`, which calling now calls `function`."""
    if getattr(module, "__wrapped__", None) is function:
        return module

    class CallableModule(type(module)):
        def __call__(self, *args: object, **kwargs: object) -> object:
            return function(*args, **kwargs)

    module.__class__ = CallableModule
    module.__wrapped__ = function
    return module
