"""Where an exported model stops computing what the PyTorch model does: the first module whose output
differs, and by how much.

torch's dynamo exporter records, on every ONNX node, the module path it came from
(`pkg.torch.onnx.name_scopes`: `['', 'layer1', 'layer1.0', 'layer1.0.conv1', 'conv2d']`). A module's
output in the ONNX graph is the output of the last node carrying its path. Those values are exposed as
extra graph outputs, ONNX Runtime computes them, forward hooks record the same modules in PyTorch, and
the modules are compared in the order their last node runs: an inner module comes before the block that
holds it, so the first one that differs is where the difference starts. Modules folded away (a
convolution whose BatchNorm absorbed it keeps the BatchNorm's path) or whose outputs are not single
tensors are skipped.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class ModuleDifference:
    module: str
    kind: str  # the module's class
    max_abs_diff: float
    relative: float  # max_abs_diff over the largest |value| of the PyTorch output

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Divergence:
    compared: int  # modules compared
    first: ModuleDifference | None  # the first module beyond the tolerance, or None
    rtol: float

    def to_dict(self) -> dict[str, Any]:
        return {"compared": self.compared, "first": self.first.to_dict() if self.first else None, "rtol": self.rtol}

    def describe(self) -> str:
        if self.first is None:
            return f"no module differs beyond {self.rtol:g} of its scale ({self.compared} compared)"
        f = self.first
        return (f"the first module that differs is `{f.module}` ({f.kind}): largest difference {f.max_abs_diff:.3g}, "
                f"{f.relative:.2%} of its output's scale ({self.compared} modules compared)")  # fmt: skip


def _scopes(node: Any) -> list[str]:
    for entry in node.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            try:
                return list(ast.literal_eval(entry.value))
            except (ValueError, SyntaxError):
                return []
    return []


def module_outputs(onnx_model: Any) -> dict[str, str]:
    """Module path -> the ONNX value that is its output (the last node carrying the path), in the
    order those nodes run. The root module ('') is left out: it is the model's own output."""
    last: dict[str, str] = {}
    for node in onnx_model.graph.node:
        scopes = _scopes(node)
        # the first scope is the root and the last names the operation; innermost first, so that for a
        # node that ends several modules the innermost is compared before the blocks holding it
        for path in reversed(scopes[1:-1]):
            if node.output:
                last.pop(path, None)  # re-insert: the dict's order follows each module's last node
                last[path] = node.output[0]
    return last


def find_divergence(model: nn.Module, onnx_bytes: bytes, inputs: torch.Tensor, *, rtol: float = 1e-3) -> Divergence:
    """Compare every module's output between PyTorch and ONNX Runtime on `inputs` (a few images)."""
    import onnx

    from convforge.deploy.onnx_file import open_session

    proto = onnx.load_from_string(onnx_bytes)
    outputs = module_outputs(proto)
    modules = dict(model.named_modules())
    outputs = {path: value for path, value in outputs.items() if path in modules}
    existing = {value.name for value in proto.graph.output}
    for value in dict.fromkeys(outputs.values()):
        if value not in existing:
            proto.graph.output.add(name=value)
    session = open_session(proto.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    batch = inputs.float().contiguous()
    onnx_values = dict(zip(names, session.run(names, {session.get_inputs()[0].name: batch.numpy()}), strict=True))

    recorded: dict[str, torch.Tensor] = {}

    def keep(path: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                recorded[path] = output.detach().clone()

        return hook

    handles = [modules[path].register_forward_hook(keep(path)) for path in outputs]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()

    compared = 0
    for path, value in outputs.items():
        expected = recorded.get(path)
        found = onnx_values.get(value)
        if expected is None or found is None or tuple(expected.shape) != tuple(found.shape):
            continue
        compared += 1
        expected = expected.double().numpy()
        difference = float(np.abs(found.astype(np.float64) - expected).max()) if expected.size else 0.0
        relative = difference / max(float(np.abs(expected).max()) if expected.size else 0.0, 1e-6)
        if relative > rtol:
            first = ModuleDifference(path, type(modules[path]).__name__, difference, relative)
            return Divergence(compared, first, rtol)
    return Divergence(compared, None, rtol)
