"""A run's files vouch for each other: a weights file whose description was edited (with model.json to
match) is refused, an ONNX copy whose class list was edited is refused, and a run's artifacts/model.onnx
that another run's weights produced is never evaluated or served under this run's name."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from convforge.checkpoint import load_model
from convforge.deploy.backends import run_backend_runner
from convforge.deploy.export import export_run
from convforge.deploy.onnx_file import SEAL, metadata_digest, set_metadata, spec_from_onnx
from convforge.errors import CheckpointError
from convforge.runs import Run
from tests.helpers import TINY_SHAPES, invoke

pytestmark = pytest.mark.xdist_group("file_integrity")  # its module fixtures are built once, on one worker


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    run = shutil.copytree(tiny_run.run.path, tmp_path_factory.mktemp("exported") / "run")
    export_run(run, images=16)
    return run


def _edit_metadata(source, target, change, reseal=False):
    proto = onnx.load(str(source))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    change(metadata)
    if reseal:  # what another run's export looks like: every field consistent, the weights another's
        metadata[SEAL] = metadata_digest(metadata)
    set_metadata(proto, metadata)
    onnx.save(proto, str(target))
    return target


def test_an_onnx_copy_whose_class_list_was_edited_is_refused(exported, tmp_path):
    def reverse(metadata):
        metadata["classes"] = json.dumps(json.loads(metadata["classes"])[::-1])

    copy = _edit_metadata(exported / "artifacts" / "model.onnx", tmp_path / "copy.onnx", reverse)
    with pytest.raises(CheckpointError, match="metadata .* was edited after export"):
        spec_from_onnx(copy)
    result = invoke("predict", copy, tmp_path / "none.png")
    assert result.exit_code == 2 and "edited after export" in " ".join(result.output.split())


def test_another_runs_export_in_a_runs_artifacts_is_not_taken_for_the_runs_own(exported, tmp_path):
    run = shutil.copytree(exported, tmp_path / "run")
    onnx_path = run / "artifacts" / "model.onnx"

    def other_weights(metadata):
        metadata["source_weights_sha256"] = "0" * 64

    _edit_metadata(onnx_path, onnx_path, other_weights, reseal=True)
    model, _ = load_model(run)
    with pytest.raises(CheckpointError, match="not exported from this run's weights"):
        run_backend_runner(Run(run), model, "ort")
    before = (run / "metrics.jsonl").read_text()
    result = invoke("eval", onnx_path, TINY_SHAPES)
    assert result.exit_code == 2 and "not exported from this run's weights" in " ".join(result.output.split())
    assert (run / "metrics.jsonl").read_text() == before  # nothing recorded under the run's name


def test_a_weights_description_edited_with_model_json_is_refused(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run.run.path, tmp_path / "run")
    weights = run / "model.safetensors"
    raw = weights.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    description = json.loads(header["__metadata__"]["convforge"])
    description["classes"] = description["classes"][::-1]  # relabel every prediction
    header["__metadata__"]["convforge"] = json.dumps(description)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    weights.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + size :])
    spec = json.loads((run / "model.json").read_text())
    spec["classes"] = description["classes"]
    (run / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="description .* was edited after the file was written"):
        load_model(run)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(convforge="{not json"), "convforge metadata is not a model description"),
    (lambda m: m.update(convforge=json.dumps({**json.loads(m["convforge"]),
                                              "classes": json.loads(m["convforge"])["classes"][:3],
                                              "num_classes": 3})), "names 3 classes"),
    (lambda m: m.update(convforge=json.dumps({**json.loads(m["convforge"]), "preprocessing": {
        **json.loads(m["convforge"])["preprocessing"], "input_size": [-5, 7]}})), "input_size must be"),
])  # fmt: skip
def test_an_onnx_file_whose_metadata_does_not_fit_its_graph_is_refused_before_any_work(exported, tmp_path, change,
                                                                                       message):
    """Resealed, as a careful forger would: the checks are of what the metadata says, not of the seal."""
    copy = _edit_metadata(exported / "artifacts" / "model.onnx", tmp_path / "bad.onnx", change, reseal=True)
    with pytest.raises(CheckpointError, match=message):
        spec_from_onnx(copy)
    served = invoke("predict", copy, tmp_path / "none.png")
    assert served.exit_code == 2 and "Traceback" not in served.output


def test_an_empty_onnx_file_is_one_message(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    result = invoke("predict", tmp_path / "empty.onnx", tmp_path / "none.png")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "empty or damaged" in " ".join(result.output.split()) or "not an ONNX file" in result.output


def test_serve_runs_an_onnx_file_without_being_told_its_backend(exported, monkeypatch):
    """An .onnx file can only run in ONNX Runtime: `serve FILE.onnx` takes that backend by itself (it once
    needed --backend ort, and its message said to leave --backend out)."""
    from convforge.deploy import launch as launch_module
    from convforge.deploy.load import free_port
    from convforge.threads import threads_kept

    started = {}
    monkeypatch.setattr(launch_module, "run", lambda launch, app=None: started.update(backend=launch.backend))
    with threads_kept():  # build_app sets the worker's thread count process-wide
        result = invoke("serve", exported / "artifacts" / "model.onnx", "--port", str(free_port()))
    assert result.exit_code == 0, result.output
    assert started == {"backend": "ort"} and "with ort" in " ".join(result.output.split())
