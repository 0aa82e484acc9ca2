"""ONNX export with proof that nothing changed: the file is handed over only when ONNX Runtime
computes what PyTorch computes on real images.

The exporter is the one torch recommends in the installed version: `torch.onnx.export(...,
dynamo=True)` (the default since torch 2.9; the TorchScript-based exporter is deprecated). It traces
the model with `torch.export`, so the zoo's size-free graphs apply (models/padding_taps.py), and its
optimiser (onnxscript) folds constants and each BatchNormalization into the convolution before it;
`fold=False` keeps them as separate nodes. Re-parameterizable models are re-parameterized first (the
deployed form of RepLKNet and UniRepLKNet). The batch axis is dynamic.

The parity gate runs both on images of the run's own data (its test split, else validation) and
compares logits: the largest absolute difference, top-1 agreement and the largest probability
difference. Below the thresholds the file is kept as `model.onnx.rejected` for inspection and never
under its final name.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from convforge.checkpoint import ModelSpec, load_model
from convforge.data.sample import sample_split
from convforge.data.transforms import eval_transform
from convforge.deploy.divergence import Divergence, find_divergence
from convforge.deploy.onnx_file import metadata_for, open_session, set_metadata
from convforge.errors import RunFolderError, UserError
from convforge.files import atomic_write_bytes
from convforge.models.reparam import reparameterize_model
from convforge.runs import MODEL_FILE, ONNX_FILE, REJECTED_SUFFIX, WEIGHTS_FILE, Run

# largest |logit difference| accepted per unit of the logits' scale (the largest |logit|, at least 1): fp32 ORT
# against PyTorch differs by float rounding, which grows with the values (7.5e-7 relative on logits near 1e5)
DEFAULT_ATOL = 1e-3
DEFAULT_MIN_AGREEMENT = 0.99  # share of images with the same top-1 class


class ParityError(Exception):
    """An exported model that does not compute what the PyTorch model does (not a user error: exit 1)."""

    def __init__(self, message: str, parity: Parity):
        super().__init__(message)
        self.parity = parity


@dataclass
class Parity:
    images: int
    max_abs_logit_diff: float
    max_abs_logit: float
    top1_agreement: float
    max_prob_diff: float
    atol: float
    min_agreement: float

    @property
    def allowed(self) -> float:
        """The largest |logit difference| accepted: `atol` times the logits' scale (at least 1)."""
        return self.atol * max(1.0, self.max_abs_logit)

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.allowed and self.top1_agreement >= self.min_agreement

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "allowed": self.allowed, "passed": self.passed}


def compare_logits(reference: np.ndarray, candidate: np.ndarray, atol: float, min_agreement: float) -> Parity:
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return Parity(
        images=len(reference),
        max_abs_logit_diff=float(np.abs(reference - candidate).max()) if len(reference) else 0.0,
        max_abs_logit=float(np.abs(reference).max()) if len(reference) else 0.0,
        top1_agreement=float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0,
        max_prob_diff=float(np.abs(softmax(reference) - softmax(candidate)).max()) if len(reference) else 0.0,
        atol=atol,
        min_agreement=min_agreement,
    )


def deployable(model: nn.Module) -> nn.Module:
    """A copy of `model` in its deployed form: eval mode, re-parameterized, on the CPU in float32."""
    model = copy.deepcopy(model).float().cpu().eval()
    return reparameterize_model(model, inplace=True)


def export_onnx_bytes(model: nn.Module, spec: ModelSpec, *, opset: int | None = None, fold: bool = True,
                      metadata: dict[str, str] | None = None) -> tuple[bytes, int]:  # fmt: skip
    """The serialised ONNX model (dynamic batch axis, metadata set) and its opset."""
    height, width = spec.preprocessing.input_size
    example = torch.zeros(2, spec.in_chans, height, width)  # 2: a batch of one would be specialised
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=({0: batch},), opset_version=opset,
            input_names=["images"], output_names=["logits"], optimize=False, verbose=False,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; the user needs the op and module
        reason = _explain_failure(exc, model, example)
        raise UserError(f"{spec.architecture} cannot be exported to ONNX: {reason}") from None
    _optimise(program, fold)
    proto = program.model_proto
    set_metadata(proto, metadata or {})
    return proto.SerializeToString(), max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _optimise(program: Any, fold: bool) -> None:
    """onnxscript's optimiser: constant folding, its default rewrite rules (which fuse each
    BatchNormalization into the Conv or Gemm before it), dead-code removal. Without `fold`, the same
    minus the BatchNormalization fusions (the default rule list is private to onnxscript; should it
    move, no rewrite runs and the graph stays merely constant-folded)."""
    import onnxscript.optimizer
    import onnxscript.rewriter

    if fold:
        onnxscript.optimizer.optimize_ir(program.model)
        return
    rules = [rule for rule in getattr(onnxscript.rewriter, "_DEFAULT_REWRITE_RULES", ())
             if "batchnorm" not in str(getattr(rule, "name", rule)).lower()]  # fmt: skip
    onnxscript.optimizer.fold_constants_ir(program.model)
    onnxscript.rewriter.rewrite(program.model, pattern_rewrite_rules=rules)
    onnxscript.optimizer.remove_unused_nodes(program.model)


def _explain_failure(exc: BaseException, model: nn.Module, example: torch.Tensor) -> str:
    """The ATen op the exporter could not translate and the module that calls it, found by running
    the model once and noting which module is running when that op is dispatched."""
    chain, cause = [], exc
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    match = re.search(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)", "\n".join(chain))
    if match is None:
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    op = match.group(1)
    modules = _modules_calling(model, example, op)
    where = f" in module {modules[0]}" if modules else ""
    return (f"ONNX has no translation for {op}, called{where}; replace that operation (or give the module "
            "an ONNX-friendly path), or export without it")  # fmt: skip


def _modules_calling(model: nn.Module, example: torch.Tensor, op: str) -> list[str]:
    """Modules (innermost) that dispatch `op` in an eager forward pass; when none does exactly, those
    that dispatch an op it was decomposed from (`aten._linalg_svd` comes from `aten.linalg_svdvals`)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    stack: list[str] = []
    calls: list[tuple[str, str]] = []  # (op, module)

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if stack:
                calls.append((func.overloadpacket._qualified_op_name.replace("::", "."), stack[-1]))
            return func(*args, **(kwargs or {}))

    def enter(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            stack.append(name)

        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:  # returns None: the output stays as it is
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), Watch():
            model(example)
    except Exception:  # noqa: BLE001 - naming the module is a courtesy; the op name stands alone
        pass
    finally:
        for handle in handles:
            handle.remove()
    base = op.split(".", 1)[-1].lstrip("_")
    exact = [module for called, module in calls if called == op]
    related = [module for called, module in calls if base in called.split(".", 1)[-1].lstrip("_")]
    return [f"{name} ({type(model.get_submodule(name)).__name__})" for name in exact or related]


def check_parity(model: nn.Module, onnx_bytes: bytes, inputs: torch.Tensor, *, atol: float = DEFAULT_ATOL,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT, batch_size: int = 64) -> Parity:  # fmt: skip
    """PyTorch (float32, CPU) against ONNX Runtime on the same normalised inputs."""
    session = open_session(onnx_bytes)
    name = session.get_inputs()[0].name
    expected, found = [], []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size].float().contiguous()
            expected.append(model(batch).numpy())
            found.append(session.run(None, {name: batch.numpy()})[0])
    return compare_logits(np.concatenate(expected), np.concatenate(found), atol, min_agreement)


@dataclass
class ExportResult:
    path: str
    size_bytes: int
    opset: int
    folded: bool
    exporter: str
    seconds: float
    parity: Parity
    divergence: Divergence | None = None  # module by module, when the gate failed or was asked for

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "parity": self.parity.to_dict(),
                "divergence": self.divergence.to_dict() if self.divergence else None}  # fmt: skip


def export_model(
    model: nn.Module, spec: ModelSpec, inputs: torch.Tensor, *, opset: int | None = None, fold: bool = True,
    atol: float = DEFAULT_ATOL, min_agreement: float = DEFAULT_MIN_AGREEMENT, run_name: str | None = None,
    weights_sha256: str | None = None, diagnose: bool = False,
) -> tuple[bytes, ExportResult]:
    """Export and check; returns the file's bytes and the result (its `path` is filled in by the caller
    that writes it). The parity is checked against the deployed form, which equals the trained model
    (re-parameterization is exact: tests/models). When the gate fails, or with `diagnose`, the
    divergence finder (deploy/divergence.py) compares every module's output on a few of the images."""
    started = time.perf_counter()
    deployed = deployable(model)
    metadata = metadata_for(spec, run_name=run_name, weights_sha256=weights_sha256, batchnorm_folded=fold)
    data, used_opset = export_onnx_bytes(deployed, spec, opset=opset, fold=fold, metadata=metadata)
    parity = check_parity(deployed, data, inputs, atol=atol, min_agreement=min_agreement)
    exporter = f"torch.onnx.export(dynamo=True), torch {torch.__version__}"
    divergence = find_divergence(deployed, data, inputs[:8]) if diagnose or not parity.passed else None
    result = ExportResult("", len(data), used_opset, fold, exporter, time.perf_counter() - started, parity, divergence)
    return data, result


def export_run(
    run_path: str | os.PathLike,
    *,
    data: str | None = None,
    split: str | None = None,
    images: int = 256,
    strict: bool = False,
    opset: int | None = None,
    fold: bool = True,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    force: bool = False,
    diagnose: bool = False,
) -> ExportResult:
    """Export a run's best weights to RUN/artifacts/model.onnx, gated on parity over `images` images
    of its own data (`data` overrides the dataset the run trained on). Raises ParityError, after
    keeping the file as model.onnx.rejected, when the gate fails."""
    run = Run.open(run_path)
    if not run.has_model:
        raise RunFolderError(f"{run.path} holds no trained model yet (no {WEIGHTS_FILE}); train it first")
    target = run.artifact(ONNX_FILE)
    if target.exists() and not force:
        raise UserError(f"{target} exists already; --force replaces it")
    if images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    source = data or (run.info.get("config") or {}).get("data")
    if not source:
        raise UserError(f"{run.path} does not say which data it was trained on; give --data SPEC for the parity check")
    model, spec = load_model(run.path)
    sample = sample_split(source, spec.classes, spec.in_chans, split, images, strict)
    inputs = eval_transform(torch.from_numpy(sample.pixels), spec.preprocessing)
    weights_sha256 = json.loads((run.path / MODEL_FILE).read_text())["weights"]["sha256"]
    onnx_bytes, result = export_model(
        model, spec, inputs, opset=opset, fold=fold, atol=atol, min_agreement=min_agreement, run_name=run.name,
        weights_sha256=weights_sha256, diagnose=diagnose,
    )
    record = {"kind": "export", "data": source, "split": sample.imageset.name, "skipped_files": sample.skipped}
    if not result.parity.passed:
        rejected = target.with_name(target.name + REJECTED_SUFFIX)
        atomic_write_bytes(rejected, onnx_bytes)
        result.path = run.relative(rejected)
        run.append_metrics({**record, "status": "rejected", **result.to_dict()})
        p = result.parity
        raise ParityError(
            f"the exported model does not compute what {run.name}'s weights do on {p.images} images: largest logit "
            f"difference {p.max_abs_logit_diff:.3g} (allowed {p.allowed:.3g}), top-1 agreement {p.top1_agreement:.2%} "
            f"(required {p.min_agreement:.2%}); {result.divergence.describe()}; kept as {rejected} for inspection, "
            f"nothing written as {target.name}",
            p,
        )
    atomic_write_bytes(target, onnx_bytes)
    result.path = run.relative(target)
    run.append_metrics({**record, "status": "exported", **result.to_dict()})
    return result
