"""Robustness of a run's deployed forms: every model scored on the same corrupted and adversarial
images (attacks crafted once, on the PyTorch model), transfer marked, files and records per model, the
side-by-side comparison in the CLI and the report, and clear messages for what cannot be measured."""

import json
import shutil

import pytest

from convforge.checkpoint import load_model
from convforge.compress.quantize_run import quantize_run
from convforge.deploy.backends import BackendModule, open_model, torch_backend
from convforge.deploy.export import export_run
from convforge.errors import ConfigError
from convforge.robust.card import robustness_cards
from tests.helpers import TINY_SHAPES, invoke

OPTIONS = {"images": 64, "attacks": ["fgsm", "pgd"], "epsilons": [2 / 255, 8 / 255],
           "families": ["gaussian_noise", "contrast"], "severities": [1, 5], "batch_size": 24}  # fmt: skip


def figures(card) -> dict:
    """Every accuracy a card holds, by measure."""
    values = {"clean": card.clean_accuracy}
    values |= {(r.settings.name, r.settings.eps): r.robust_accuracy for r in card.attacks}
    values |= {(f, s): a for f, by in card.corruptions.accuracy.items() for s, a in by.items()}
    return values


@pytest.fixture
def exported_run(tiny_run_copy):
    export_run(tiny_run_copy, images=16)
    return tiny_run_copy


def test_every_model_is_scored_on_the_same_images_and_attacks_are_crafted_once(tiny_run):
    model, spec = load_model(tiny_run.run.path)
    # the same network behind another call: if each model saw its own adversarial or corrupted images
    # (another random start, other noise), its figures would differ from the PyTorch model's
    same_network = BackendModule(torch_backend(model))
    cards = robustness_cards({"torch": model, "copy": same_network}, spec, TINY_SHAPES, **OPTIONS)
    assert figures(cards["copy"]) == figures(cards["torch"])
    assert [row.transfer for row in cards["torch"].attacks] == [False] * 6
    assert [row.transfer for row in cards["copy"].attacks] == [True] * 6
    assert cards["torch"].attacks_crafted_on is None and cards["copy"].attacks_crafted_on == "torch"
    strongest = [r.robust_accuracy for r in cards["torch"].attacks if r.settings.eps == 8 / 255]
    assert max(strongest) < cards["torch"].clean_accuracy  # the attacks did something to compare


def test_the_exported_model_scores_like_pytorch_within_its_parity(exported_run):
    model, spec = load_model(exported_run)
    onnx_model, onnx_spec, owner = open_model(exported_run / "artifacts" / "model.onnx")
    assert owner.path == exported_run.resolve() and onnx_spec.classes == spec.classes
    cards = robustness_cards({"torch": model, "ort": onnx_model}, spec, TINY_SHAPES, **OPTIONS)
    torch_figures, ort_figures = figures(cards["torch"]), figures(cards["ort"])
    # logits agree to ~1e-6, so at most one of 64 near-tied images may change its top-1
    assert all(abs(ort_figures[k] - torch_figures[k]) <= 1 / 64 for k in torch_figures)
    assert cards["ort"].attacks_crafted_on == "torch"


def test_models_without_gradients_need_an_attack_source(exported_run):
    onnx_model, spec, _ = open_model(exported_run / "artifacts" / "model.onnx")
    with pytest.raises(ConfigError, match="none of these models has any"):
        robustness_cards({"ort": onnx_model}, spec, TINY_SHAPES, **OPTIONS)
    card = robustness_cards({"ort": onnx_model}, spec, TINY_SHAPES, **{**OPTIONS, "attacks": []})["ort"]
    assert card.attacks == [] and card.corruptions is not None


def test_the_cli_compares_pytorch_onnx_and_int8_side_by_side(exported_run):
    quantize_run(exported_run, TINY_SHAPES, calibration=32, max_drop=100.0, latency_seconds=0.02)
    result = invoke("robust", exported_run, TINY_SHAPES, "--backend", "torch,ort,ort-int8", "--n", "48",
                    "--eps", "4/255", "--corruptions", "contrast", "--severities", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "robustness side by side (48 images)" in result.output and "ort-int8 (Δ points)" in result.output
    assert "crafted on the PyTorch model and transferred to ort, ort-int8" in result.output
    records = [json.loads(line) for line in (exported_run / "metrics.jsonl").read_text().splitlines()]
    robust = {r["model"]: r for r in records if r["kind"] == "robust"}
    assert set(robust) == {"torch", "ort", "ort-int8"}
    assert robust["ort-int8"]["attacks_crafted_on"] == "torch" and robust["torch"]["attacks_crafted_on"] is None
    assert all(row["transfer"] for row in robust["ort-int8"]["attacks"])
    assert robust["ort-int8"]["files"]["table"] == "artifacts/robust/ort-int8/robustness.md"
    assert robust["torch"]["files"]["table"] == "artifacts/robust/robustness.md"
    html = (exported_run / "report.html").read_text()
    deployment = html[html.index("Robustness of the deployed models") :]
    assert "pgd 4/255" in deployment and "contrast (mean over severities)" in deployment
    assert "ort-int8" in deployment and "(transfer)" in deployment

    # an exported file given directly belongs to its run: same record, named by its backend
    result = invoke("robust", exported_run / "artifacts" / "model.int8.onnx", TINY_SHAPES, "--n", "16",
                    "--attacks", "fgsm", "--eps", "4/255", "--corruptions", "none", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["model"] == "ort-int8" and answer["attacks_crafted_on"] == "torch"
    assert answer["run"] == str(exported_run.resolve())


def test_an_onnx_file_outside_a_run_crafts_attacks_on_the_source_run(exported_run, tmp_path):
    loose = tmp_path / "elsewhere.onnx"
    shutil.copy(exported_run / "artifacts" / "model.onnx", loose)
    args = ["--n", "16", "--eps", "4/255", "--corruptions", "none"]
    result = invoke("robust", loose, TINY_SHAPES, *args)
    assert result.exit_code == 2
    assert "an ONNX model has no gradients" in result.output and "give --source RUN" in result.output
    result = invoke("robust", loose, TINY_SHAPES, *args, "--source", exported_run, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["run"] is None and answer["model"] == "elsewhere.onnx" and answer["attacks_crafted_on"] == "torch"
    assert len(answer["attacks"]) == 4  # fgsm and pgd at 0 and 4/255
    result = invoke("robust", loose, TINY_SHAPES, *args, "--attacks", "none")
    assert result.exit_code == 0 and "not in a run folder: results printed, nothing written" in result.output


@pytest.mark.parametrize(
    ("target", "args", "fragment"),
    [
        ("{run}", ["--backend", "ort-int8"], "no model.int8.onnx yet; make it with `convforge quantize RUN DATA`"),
        ("{run}", ["--backend", "ort-int9"], "Did you mean: ort-int8"),
        ("{run}", ["--source", "{run}"], "--source is for an .onnx file"),
        ("{run}/artifacts/model.onnx", ["--backend", "torch,ort"], "--backend chooses among a run folder's models"),
    ],
)
def test_what_cannot_be_measured_is_one_clear_message(exported_run, target, args, fragment):
    fill = {"run": exported_run}
    result = invoke("robust", target.format(**fill), TINY_SHAPES, "--n", "8", *[a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output
