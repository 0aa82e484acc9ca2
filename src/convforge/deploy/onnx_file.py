"""ONNX files as convforge writes and reads them: the metadata a consumer needs without convforge,
and ONNX Runtime sessions with an explicit thread count.

The metadata (`metadata_props`, all strings) says how to feed the model and read its output:
`classes` (JSON list, in output order), `mean`, `std` (JSON lists, on [0, 1] pixels), `input_size`
(JSON [height, width]), `channels`, `channel_order` ("RGB" or "L"), `interpolation`, `crop_pct`, `resize`
and `pixel_scale` (the rule in words: a consumer who guesses it loses accuracy on resized photos),
`batchnorm_folded` (the graph's BatchNorms folded into its convolutions), and
where it came from: `convforge_version`, `architecture`, `source_weights_sha256`, `run`. `convforge`
holds the whole model description as JSON, which is what convforge itself reads back. `metadata_sha256`
is a SHA-256 over all of these: a copy whose class list or preprocessing was edited is refused instead of
predicting under the wrong names (integrity, not provenance: whoever edits the file can recompute it).
A run's own exported files must cite its weights (`check_exported_from`): another run's export copied
into artifacts/ is refused rather than evaluated or served under this run's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from convforge.checkpoint import ModelSpec
from convforge.data.transforms import Preprocessing
from convforge.errors import CheckpointError, UserError

CONSUMER_KEYS = ("classes", "mean", "std", "input_size", "channels", "channel_order", "interpolation", "crop_pct",
                 "resize", "pixel_scale", "batchnorm_folded")


def metadata_for(spec: ModelSpec, *, run_name: str | None, weights_sha256: str | None,
                 batchnorm_folded: bool = False) -> dict[str, str]:  # fmt: skip
    from convforge._version import __version__
    from convforge.data.transforms import PIXEL_SCALE, resize_rule

    p = spec.preprocessing
    plain = {
        "classes": spec.classes, "mean": list(p.mean), "std": list(p.std), "input_size": list(p.input_size),
        "channels": p.channels, "channel_order": "RGB" if p.channels == 3 else "L",
        "interpolation": p.interpolation, "crop_pct": p.crop_pct, "resize": resize_rule(p), "pixel_scale": PIXEL_SCALE,
        # the graph's BatchNorms folded into its convolutions at export (the description's "folded" says
        # whether the run's own weights were saved folded)
        "batchnorm_folded": batchnorm_folded,
    }  # fmt: skip
    description = {k: v for k, v in spec.to_dict().items() if k != "shapes"}
    metadata = {
        **{key: json.dumps(value) if not isinstance(value, str) else value for key, value in plain.items()},
        "convforge": json.dumps(description),
        "convforge_version": __version__,
        "architecture": spec.architecture,
        "source_weights_sha256": weights_sha256 or "",
        "run": run_name or "",
    }
    return {**metadata, SEAL: metadata_digest(metadata)}


SEAL = "metadata_sha256"


def metadata_digest(metadata: dict[str, str]) -> str:
    """SHA-256 over every metadata entry but the seal itself, in key order."""
    digest = hashlib.sha256()
    for key in sorted(k for k in metadata if k != SEAL):
        digest.update(f"{key}\0{metadata[key]}\0".encode())
    return digest.hexdigest()


def checked_metadata(path: str | os.PathLike, metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` when its seal holds (or it has none: files exported before seals, or by others)."""
    if SEAL in metadata and metadata[SEAL] != metadata_digest(metadata):
        raise CheckpointError(f"{path}: its metadata (classes, preprocessing or description) was edited after "
                              "export; export the run again with `convforge export RUN --force`")  # fmt: skip
    return metadata


def check_exported_from(path: str | os.PathLike, metadata: dict[str, str], weights_sha256: str,
                        spec: ModelSpec) -> None:  # fmt: skip
    """A run's own exported file must come from this run's weights and describe this run's model."""
    checked_metadata(path, metadata)
    source = metadata.get("source_weights_sha256") or "none"
    if source != weights_sha256:
        raise CheckpointError(f"{path} was not exported from this run's weights (it cites {source[:12]}, the run's "
                              f"are {weights_sha256[:12]}); export the run again with `convforge export RUN "
                              "--force` (and quantize again)")  # fmt: skip
    try:
        described = ModelSpec.from_dict(json.loads(metadata["convforge"]))
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} has no readable convforge description ({exc})") from None
    if described.classes != spec.classes or described.preprocessing != spec.preprocessing:
        raise CheckpointError(f"{path} describes other classes or preprocessing than the run's model.json; "
                              "export the run again with `convforge export RUN --force`")


def set_metadata(model_proto: Any, metadata: dict[str, str]) -> None:
    existing = {entry.key: entry for entry in model_proto.metadata_props}
    for key, value in metadata.items():
        entry = existing.get(key) or model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx(path: str | os.PathLike) -> Any:
    """The ModelProto of an ONNX file, or a UserError that says the file is not one."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds; all mean "not an ONNX file"
        raise CheckpointError(f"{path} is not an ONNX file ({type(exc).__name__}: {exc})") from None


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    return checked_metadata(path, _metadata(read_onnx(path)))


QUANTIZED_OPS = frozenset({"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})


def onnx_precision(path: str | os.PathLike) -> str:
    """'int8' when the file's graph quantizes (static or dynamic INT8 operators), else 'float32': the
    precision recorded with every figure computed by the file."""
    graph = read_onnx(path).graph
    return "int8" if any(node.op_type in QUANTIZED_OPS for node in graph.node) else "float32"


def _metadata(proto: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in proto.metadata_props}


def _input_dims(proto: Any) -> list[int | None]:
    """The first input's dimensions, None where symbolic (the batch axis)."""
    return _dims(proto.graph.input[0])


def _dims(value: Any) -> list[int | None]:
    return [d.dim_value or None for d in value.type.tensor_type.shape.dim]


def _described(path: str | os.PathLike, proto: Any, metadata: dict[str, str]) -> ModelSpec | None:
    """The convforge description of a file (None without one), checked against the graph it describes:
    an image input of its channels and size, and an output of one logit per class. A file that fails is
    refused here, before a server answers 500 to every request or an evaluation runs on garbage."""
    if not proto.graph.input or not proto.graph.output:
        raise CheckpointError(f"{path} holds no model graph (no input or no output): an empty or damaged file")
    if "convforge" not in metadata:
        return None
    try:
        spec = ModelSpec.from_dict(json.loads(metadata["convforge"]))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its convforge metadata is not a model description ({exc})") from None
    dims, outputs = _input_dims(proto), _dims(proto.graph.output[0])
    expected = [None, spec.in_chans, *spec.preprocessing.input_size]
    if len(dims) != 4 or any(d is not None and e is not None and d != e for d, e in zip(dims, expected, strict=True)):
        raise CheckpointError(f"{path} takes input of shape {dims} but its metadata describes "
                              f"{expected[1:]} (channels, height, width)")  # fmt: skip
    if len(outputs) != 2 or (outputs[1] is not None and outputs[1] != len(spec.classes)):
        raise CheckpointError(f"{path} gives outputs of shape {outputs} but its metadata names "
                              f"{len(spec.classes)} classes")  # fmt: skip
    return spec


def onnx_input_size(path: str | os.PathLike, side: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) an ONNX file takes: from convforge metadata, else its static input
    shape; `side` overrides height and width."""
    proto = read_onnx(path)
    spec = _described(path, proto, checked_metadata(path, _metadata(proto)))
    if spec is not None:
        channels, (height, width) = spec.in_chans, spec.preprocessing.input_size
    else:
        dims = _input_dims(proto)
        if len(dims) != 4 or not dims[1] or (side is None and not all(dims[2:4])):
            raise UserError(f"{path} has no fixed input size and no convforge metadata; give --size")
        channels, height, width = dims[1], dims[2], dims[3]
    return (channels, side, side) if side else (channels, height, width)


def spec_from_onnx(
    path: str | os.PathLike,
    *,
    classes: list[str] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    input_size: tuple[int, int] | None = None,
) -> ModelSpec:
    """The model description an ONNX file carries; for a file without convforge metadata, the
    caller's `classes`, `mean`, `std` (and `input_size`, else the file's static input shape)."""
    proto = read_onnx(path)
    spec = _described(path, proto, checked_metadata(path, _metadata(proto)))
    if spec is not None:
        return spec
    dims = _input_dims(proto)
    missing = [name for name, value in (("--classes", classes), ("--mean", mean), ("--std", std)) if value is None]
    static_size = tuple(dims[2:4]) if len(dims) == 4 and all(dims[2:4]) else None
    if input_size is None and static_size is None:
        missing.append("--size")
    if missing:
        raise UserError(
            f"{path} has no convforge metadata (class names, mean, std, input size): give {', '.join(missing)} "
            "to run it anyway, or export it with `convforge export RUN`"
        )
    channels = dims[1] if len(dims) == 4 and dims[1] else len(mean)
    try:
        preprocessing = Preprocessing(tuple(input_size or static_size), tuple(mean), tuple(std), channels=channels)
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    outputs = _dims(proto.graph.output[0])
    if len(outputs) == 2 and outputs[1] is not None and outputs[1] != len(classes):
        raise UserError(f"{path} gives {outputs[1]} outputs per image but --classes names {len(classes)}")
    return ModelSpec("onnx", len(classes), channels, list(classes), preprocessing)


def open_session(
    model: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu", *, spinning: bool = True
) -> Any:
    """An ONNX Runtime session with every graph optimisation and `threads` intra-op threads (None:
    ONNX Runtime's default, one per physical core). Without `spinning` its threads sleep between runs
    instead of busy-waiting for the next one: slower back to back, but a server's decoding and HTTP
    threads get the cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad files
        raise CheckpointError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: "
                              f"{exc}") from None  # fmt: skip
