"""Exported files are first-class: eval and predict run an .onnx like a run folder, agree with the
PyTorch model, record into the run the file belongs to, and say what a foreign file lacks."""

import json

import numpy as np
import onnx
from PIL import Image

from convforge.deploy.export import export_run
from convforge.runs import Run
from tests.helpers import TINY_SHAPES, invoke


def test_eval_of_the_exported_file_matches_the_run_and_joins_its_metrics(tiny_run_copy):
    export_run(tiny_run_copy, images=16)
    torch_eval = json.loads(invoke("eval", tiny_run_copy, TINY_SHAPES, "--json").output)  # float32 by default
    onnx_file = tiny_run_copy / "artifacts" / "model.onnx"
    result = invoke("eval", onnx_file, TINY_SHAPES, "--json")
    assert result.exit_code == 0, result.output
    onnx_eval = json.loads(result.output)
    assert onnx_eval["model_file"] == str(onnx_file) and onnx_eval["run"] == str(tiny_run_copy)
    assert onnx_eval["images"] == torch_eval["images"] == 300
    # the parity gate allows no top-1 change on its images; here at most one flip among 300 near-ties
    assert abs(onnx_eval["top1"] - torch_eval["top1"]) <= 1 / 300
    assert np.allclose(onnx_eval["loss"], torch_eval["loss"], rtol=1e-4)
    assert Run(tiny_run_copy).metrics("eval")[-1]["model_file"] == str(onnx_file)
    assert torch_eval["precision"] == onnx_eval["precision"] == "float32"
    assert all(r["precision"] == "float32" for r in Run(tiny_run_copy).metrics("eval"))  # train's, torch's, ORT's
    bf16 = json.loads(invoke("eval", tiny_run_copy, TINY_SHAPES, "--json", "--amp", "bf16").output)
    assert bf16["precision"] == "bfloat16"  # asked for by name, and said


def test_a_file_without_convforge_metadata_says_what_is_missing_and_runs_when_told(tiny_run_copy, tmp_path):
    export_run(tiny_run_copy, images=8)
    model = onnx.load(str(tiny_run_copy / "artifacts" / "model.onnx"))
    classes = json.loads({p.key: p.value for p in model.metadata_props}["classes"])
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    result = invoke("eval", foreign, TINY_SHAPES)
    assert result.exit_code == 2
    # its input side is fixed in the graph (32x32), so only the names and the normalisation are missing
    assert "has no convforge metadata" in result.output and "give --classes, --mean, --std to run it" in result.output
    spec = json.loads((tiny_run_copy / "model.json").read_text())["preprocessing"]
    mean, std = ",".join(map(str, spec["mean"])), ",".join(map(str, spec["std"]))
    told = invoke("eval", foreign, TINY_SHAPES, "--classes", ",".join(classes), "--mean", mean, "--std", std, "--json")
    assert told.exit_code == 0, told.output
    assert json.loads(told.output)["run"] is None and json.loads(told.output)["images"] == 300
    bad = invoke("eval", foreign, TINY_SHAPES, "--classes", "a,b", "--mean", "half", "--std", "1", "--size", "32")
    assert bad.exit_code == 2 and "--mean takes numbers separated by commas" in bad.output


def test_predict_with_the_exported_file_names_the_same_classes(tiny_run_copy, tmp_path):
    export_run(tiny_run_copy, images=8)
    from convforge.data.spec import load_dataset

    test = load_dataset(TINY_SHAPES).splits["test"]
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"image{i}.png")
        Image.fromarray(test.gather(np.array([i]))[0]).save(paths[-1])
    # by default predict computes what the deployed float32 file computes, on every CPU kind (bf16
    # autocast, once the default on CPUs with bf16, moved probabilities by up to 0.3 points)
    by_torch = json.loads(invoke("predict", tiny_run_copy, *paths, "--json", "-k", "10").output)
    onnx_file = tiny_run_copy / "artifacts" / "model.onnx"
    by_onnx = json.loads(invoke("predict", onnx_file, *paths, "--json", "-k", "10").output)
    for a, b in zip(by_onnx, by_torch, strict=True):
        assert a["precision"] == b["precision"] == "float32"
        assert [row["class"] for row in a["top"]] == [row["class"] for row in b["top"]]
        assert np.allclose([r["probability"] for r in a["top"]], [r["probability"] for r in b["top"]], atol=1e-5)


def test_a_file_that_is_not_onnx_is_refused_by_eval(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("not a model")
    result = invoke("eval", fake, TINY_SHAPES)
    assert result.exit_code == 2 and "is not an ONNX file" in result.output
