"""Structured pruning: targets met on real architectures, widths on the rounding grid, the classifier
kept, a pruned child run that loads, evaluates and exports like any other, and clear messages."""

import json
import shutil

import pytest
import torch
from torch import nn

from convforge.checkpoint import load_model
from convforge.compress.prune import MAX_STEPS, SEARCH_MARGIN, prune_model
from convforge.compress.prune_run import prune_run
from convforge.deploy.export import export_run
from convforge.measure.paired import Ratio
from convforge.models import create_model
from tests.helpers import TINY_SHAPES, invoke

# HorNet-T 7x7 with one block per stage: the same gnConv of orders 2 to 5 in each stage, pruned and exported
# in a fifth of the time of its 2-3-18-2 blocks
SMALLER = {"hornet_tiny_7x7": {"depths": (1, 1, 1, 1)}}


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "efficientnet_b0"])
def test_a_macs_target_is_met_on_the_rounding_grid_and_the_classes_stay(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    result = prune_model(model, (3, 32, 32), criterion="l2", target="macs", goal=0.5, architecture=name)
    assert 0.35 < result.achieved <= 0.5 and result.reached  # stops at the first step past the target
    assert result.after.params < result.before.params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    narrowed = {n: m.out_channels for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d) and m.out_channels != widths[n]}  # fmt: skip
    assert narrowed and all(width % 8 == 0 for width in narrowed.values()), narrowed


@pytest.mark.parametrize("name", ["convnext_atto", "ghostnetv2_100", "unireplknet_a"])
def test_zoo_and_modern_blocks_prune_and_still_train(name):
    """Layer scale, GRN (UniRepLKNet's unwrapped_parameters hook), ghost modules, depthwise convolutions."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    result = prune_model(model, (3, 64, 64), target="macs", goal=0.6, architecture=name)
    assert result.reached and result.after.params < result.before.params
    model.train()
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).mean()
    loss.backward()  # one training step's gradients flow through the narrowed layers
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("name", "kept"), [("resnet18_ibn_a", "split by IBN"), ("hornet_tiny_7x7", "gnConv splits")])
def test_splits_the_graph_cannot_follow_are_kept_whole_and_the_rest_prunes(name, kept):
    """IBN-a's instance/batch split and HorNet's gnConv splits: those layers keep their outputs (the model
    file's pruning_protected hook, said in the notes), every other channel prunes and still trains."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **SMALLER.get(name, {}))
    result = prune_model(model, (3, 64, 64), target="macs", goal=0.6, architecture=name)
    assert result.reached and any(kept in note for note in result.notes), result.notes
    model.train()
    model(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_ibn_b_instance_norms_narrow_with_the_channels_around_them(tmp_path):
    """IBN-b's InstanceNorms (stem, after residual additions) sit behind in-place ReLUs on F.instance_norm's
    view, which hid them from Torch-Pruning's trace: they kept 64 channels while the stream shrank."""
    from convforge.checkpoint import ModelSpec, save_model
    from convforge.data.transforms import Preprocessing

    name = "resnet18_ibn_b"
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    result = prune_model(model, (3, 64, 64), target="macs", goal=0.6, architecture=name)
    assert result.reached and result.notes == []
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 and all(m.num_features == m.weight.shape[0] < 128 for m in norms[:2])
    assert model.conv1.out_channels == model.bn1.num_features < 64
    assert all(getattr(m, "inplace", True) for m in model.modules() if isinstance(m, nn.ReLU))  # restored
    spec = ModelSpec(name, 5, 3, [str(i) for i in range(5)], Preprocessing((64, 64), (0.5,) * 3, (0.25,) * 3))
    save_model(tmp_path, model, spec)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)[0](x), model.eval()(x))


def test_a_model_the_graph_cannot_follow_is_refused_with_a_reason():
    """FastViT's final MobileOne block: Torch-Pruning narrows its convolution's groups inconsistently."""
    from convforge.errors import UserError

    name = "fastvit_t8"
    model = create_model(name, num_classes=5)
    refusal = rf"pruning {name} failed or broke its forward pass in final_conv\S* \(Conv2d\) .* cannot be pruned yet"
    with pytest.raises(UserError, match=refusal):
        prune_model(model, (3, 64, 64), target="macs", goal=0.6, architecture=name)


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_100", "efficientnet_b0", "convnext_atto", "ghostnetv2_100",
                                  "unireplknet_a", "hornet_tiny_7x7", "resnet18_ibn_a", "resnet18_ibn_b"])  # fmt: skip
def test_every_family_pruned_still_exports_to_onnx_with_the_same_logits(name):
    """Forward and training are checked above; here the deployed form: re-parameterized (UniRepLKNet),
    exported by torch's dynamo exporter and run by ONNX Runtime, which must give the pruned model's logits."""
    import onnxruntime

    from convforge.checkpoint import ModelSpec
    from convforge.data.transforms import Preprocessing
    from convforge.deploy.export import deployable, export_onnx_bytes

    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **SMALLER.get(name, {}))
    prune_model(model, (3, 64, 64), target="macs", goal=0.6, architecture=name)
    spec = ModelSpec(name, 5, 3, [str(i) for i in range(5)], Preprocessing((64, 64), (0.5,) * 3, (0.25,) * 3))
    onnx, _ = export_onnx_bytes(deployable(model), spec)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert abs(got - expected).max() <= 1e-4 * abs(expected).max() + 1e-5


def test_bn_and_taylor_criteria_prune_a_params_target(tiny_run):
    """Each criterion chooses its own channels: bn and taylor keep other channels than l2 (a criterion
    ignored for l2 once passed), taylor's choice follows the data it scores on and bn's does not. The
    channels kept are read from every BatchNorm (its trained scales tell the channels apart), so a
    coincidence in one small layer cannot decide it (the 8-channel stem alone once did)."""
    original = {name: m.weight.detach() for name, m in load_model(tiny_run.run.path)[0].named_modules()
                if isinstance(m, torch.nn.BatchNorm2d)}  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(16, 3, 32, 32, generator=generator), torch.randint(0, 10, (16,), generator=generator))
               for _ in range(2)]  # fmt: skip

    def kept(criterion: str, data) -> dict[str, list[int]]:
        copy = load_model(tiny_run.run.path)[0]
        result = prune_model(copy, (3, 32, 32), criterion=criterion, target="params", goal=0.6, round_to=4,
                             data_batch=data)  # fmt: skip
        assert result.achieved <= 0.6 and copy(data[0]).shape == (16, 10)
        assert all(p.grad is None for p in copy.parameters())  # taylor's gradients are not left behind
        return {name: [int((original[name] == value).nonzero()[0]) for value in m.weight.detach()]
                for name, m in copy.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}  # fmt: skip

    l2, bn, taylor = (kept(criterion, batches[0]) for criterion in ("l2", "bn", "taylor"))
    assert sum(map(len, l2.values())) < sum(map(len, original.values()))  # channels were pruned
    assert bn != l2 and taylor != l2 and bn != taylor
    assert kept("bn", batches[1]) == bn and kept("taylor", batches[1]) != taylor


def test_a_pruned_child_run_loads_evaluates_and_exports(tiny_run, tmp_path):
    out = tmp_path / "child"
    result = prune_run(tiny_run.run.path, TINY_SHAPES, out, macs=0.6, latency_seconds=0.05)
    assert result.pruning.achieved <= 0.6 and set(result.speedup) == {1, 64}
    info = json.loads((out / "run.json").read_text())
    assert info["parent"] == str(tiny_run.run.path.resolve()) and info["stage"] == "prune"
    assert info["pruning"]["criterion"] == "l2" and info["test"]["top1"] == result.top1
    assert info["prune_seconds"] > 0 and info["command"] == "python-api" and info["name"] == "child"
    model, spec = load_model(out)  # rebuilt at the recorded widths, no pickle
    assert sum(p.numel() for p in model.parameters()) == result.pruning.after.params
    evaluated = invoke("eval", out, TINY_SHAPES, "--json", "-q")
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["top1"] == pytest.approx(result.top1)
    exported = export_run(out, images=16)
    assert exported.parity.passed


def test_fold_saves_a_child_without_batchnorm_that_loads_evaluates_and_exports(tiny_run, tmp_path):
    out = tmp_path / "folded"
    done = invoke("prune", tiny_run.run.path, TINY_SHAPES, "--macs", "0.6", "--fold", "--out", out, "--json", "-q")
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["fold"]["folded"] > 0 and result["fold"]["kept"] == []
    assert result["fold"]["max_abs_logit_change"] <= 1e-4 * result["fold"]["max_abs_logit"]
    assert json.loads((out / "model.json").read_text())["folded"] is True
    model, spec = load_model(out)
    assert spec.folded and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    evaluated = invoke("eval", out, TINY_SHAPES, "--json", "-q")
    assert json.loads(evaluated.output)["top1"] == pytest.approx(result["top1"])
    assert export_run(out, images=16).parity.passed
    again = invoke("prune", out, TINY_SHAPES, "--macs", "0.5", "--out", tmp_path / "again")
    assert again.exit_code == 2 and "holds a folded model" in again.output and not (tmp_path / "again").exists()


def test_a_speedup_target_is_measured_and_the_search_stops_by_its_rule():
    model = create_model("resnet18", num_classes=10)
    result = prune_model(model, (3, 64, 64), target="speedup", goal=1.2, latency_batches=(1, 8), latency_seconds=0.1)
    assert set(result.before.latency_ms) == set(result.after.latency_ms) == set(result.confirmed) == {1, 8}
    # reached means the final paired measurement's 95% interval clears the goal at both batch sizes. The
    # search stops at a step whose own interval cleared it with the margin, or after every step; the longer
    # confirmation may still deny it (it once did on an idle Zen 2), so that is not asserted either way
    assert result.reached == all(ratio.low >= 1.2 for ratio in result.confirmed.values())
    last = result.steps[-1].speedup.values()
    assert len(result.steps) == MAX_STEPS or all(ratio.holds(1.2 * SEARCH_MARGIN) for ratio in last)
    assert result.achieved == min(ratio.median for ratio in result.confirmed.values())


def test_the_cli_says_a_speedup_out_of_reach_and_keeps_the_fastest_model(tiny_run, tmp_path, monkeypatch):
    """The search's 40 measured steps stand in for by fixed ratios (the search itself is measured above)."""
    import convforge.compress.prune as prune

    monkeypatch.setattr(prune, "paired_speedup", _ratios(*[1.1] * 40, 1.1))
    out = tmp_path / "child"
    answer = invoke("prune", tiny_run.run.path, TINY_SHAPES, "--speedup", "1000", "--batch", "1", "--out", out)
    assert answer.exit_code == 0, answer.output
    assert "the target was not reached" in answer.output and "the fastest model measured was kept" in answer.output
    pruning = json.loads((out / "run.json").read_text())["pruning"]
    assert pruning["reached"] is False and len(pruning["steps"]) == 40


def _ratios(*medians):
    """A stand-in for `paired_speedup` that answers each call with the next median (a tight interval)."""
    answers = iter(medians)

    def paired(reference, candidate, input_size, batches, budget_seconds, threads=None):
        median = next(answers)
        return ({b: 10.0 for b in batches}, {b: 10.0 / median for b in batches},
                {b: Ratio(median, 0.98 * median, 1.02 * median, 15) for b in batches})  # fmt: skip

    return paired


def test_a_speedup_out_of_reach_keeps_the_fastest_step_not_the_last(monkeypatch):
    """Latency does not fall monotonically with pruning; the search keeps the step measured fastest."""
    import convforge.compress.prune as prune

    monkeypatch.setattr(prune, "measure_latency", lambda *a, **k: type("L", (), {"p50_ms": 10.0}))
    # steps: the 3rd is fastest; then the final measurement of the model kept
    monkeypatch.setattr(prune, "paired_speedup", _ratios(1.25, 1.67, 2.5, 2.0, 1.43, *[1.1] * 35, 2.4))
    model = create_model("resnet18", num_classes=10)
    result = prune_model(model, (3, 32, 32), target="speedup", goal=100.0, latency_batches=(1,))
    assert not result.reached and len(result.steps) == 40 and result.kept == 2
    assert result.after is result.steps[2] and result.achieved == 2.4  # the confirmed figure, not the step's
    assert sum(p.numel() for p in model.parameters()) == result.steps[2].params  # the model is that step's
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_a_lucky_step_that_the_final_measurement_contradicts_is_not_reached(tiny_run, tmp_path, monkeypatch):
    """The search stops at a step measured 1.6x, but the final, longer paired measurement of the child says
    0.67x: prune says the target was not reached, and its table, run.json and metrics show that figure."""
    import convforge.compress.prune as prune
    import convforge.compress.prune_run as prune_run_module

    monkeypatch.setattr(prune, "paired_speedup", _ratios(1.6))
    model = create_model("resnet18", num_classes=10)
    result = prune_model(model, (3, 32, 32), target="speedup", goal=1.5, latency_batches=(1,), confirm=False)
    assert result.reached and len(result.steps) == 1  # the search alone believed it
    monkeypatch.setattr(prune, "paired_speedup", _ratios(1.6))
    monkeypatch.setattr(prune_run_module, "paired_speedup", _ratios(0.67))
    out = tmp_path / "child"
    answer = invoke("prune", tiny_run.run.path, TINY_SHAPES, "--speedup", "1.5", "--batch", "1", "--out", out)
    assert answer.exit_code == 0, answer.output
    assert "the target was not reached" in answer.output and "0.67x (0.66-0.68) at batch 1" in answer.output
    assert "0.67x faster (0.66-0.68)" in answer.output
    info = json.loads((out / "run.json").read_text())
    assert info["pruning"]["reached"] is False and info["pruning"]["achieved"] == pytest.approx(0.67)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "prune" and record["speedup"] == {"1": pytest.approx(0.67)}
    assert record["pruning"]["reached"] is False and record["speedup_interval"]["1"]["low"] == pytest.approx(0.6566)


def test_a_speedup_is_timed_on_the_form_that_is_saved(monkeypatch):
    """With --fold, the folded form is timed before pruning and after every step, not the model itself."""
    import convforge.compress.prune as prune
    from convforge.models.fold import fold_model

    timed: list[bool] = []

    def latency(model, *args, **kwargs):
        timed.append(any(isinstance(m, nn.BatchNorm2d) for m in model.modules()))
        return type("L", (), {"p50_ms": 10.0})

    steps = _ratios(*[1.2 + 0.1 * i for i in range(41)])

    def paired(reference, candidate, *args, **kwargs):
        timed.extend(any(isinstance(m, nn.BatchNorm2d) for m in form.modules()) for form in (reference, candidate))
        return steps(reference, candidate, *args, **kwargs)

    monkeypatch.setattr(prune, "measure_latency", latency)
    monkeypatch.setattr(prune, "paired_speedup", paired)
    model = create_model("resnet18", num_classes=10)
    result = prune_model(model, (3, 32, 32), target="speedup", goal=1.5, latency_batches=(1,),
                         timed_as=lambda m: fold_model(m).model)  # fmt: skip
    # steps 1.2x .. 1.5x: the interval (2% either side) clears 1.5 first at the 5th, 1.6x; then the confirmation
    assert result.reached and len(result.steps) == 5 and len(timed) == 1 + 2 * 5 + 2 and not any(timed)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model itself is left unfolded


class _NeedsLargeInputs(nn.Module):
    def forward(self, x):
        if x.shape[-1] < 64:
            raise ValueError(f"this block needs inputs of at least 64 pixels, got {x.shape[-1]}")
        return x


class _LeavesAutograd(nn.Module):
    """Runs without gradients, but leaves the autograd graph that Torch-Pruning follows."""

    def forward(self, x):
        return torch.from_numpy(x.numpy()) if not torch.is_grad_enabled() else x.numpy()


def test_a_model_that_fails_or_cannot_be_traced_is_named_by_its_module():
    from convforge.errors import UserError

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.ReLU(), _NeedsLargeInputs()))
    with pytest.raises(UserError, match=r"fails on a \(3, 32, 32\) input in 1\.1 \(_NeedsLargeInputs\) \(ValueError"):
        prune_model(model, (3, 32, 32), target="macs", goal=0.5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _LeavesAutograd(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    named = r"(cannot trace this model|fails on a \(3, 32, 32\) input) in 1 \(_LeavesAutograd\)"
    with pytest.raises(UserError, match=named):
        prune_model(model, (3, 32, 32), target="params", goal=0.5)


def test_finetune_distils_the_child_from_its_parent(tiny_run, tmp_path):
    out = tmp_path / "child"
    result = prune_run(tiny_run.run.path, TINY_SHAPES, out, macs=0.6, finetune=1, latency_seconds=0.05, fold=True)
    info = json.loads((out / "run.json").read_text())
    assert info["stage"] == "prune" and info["parent"] == str(tiny_run.run.path.resolve())
    assert info["fold"]["folded"] > 0 and info["test"]["top1"] == result.top1  # the saved model is the folded one
    assert info["config"]["teacher"] == str(tiny_run.run.path.resolve()) and info["config"]["epochs"] == 1
    assert info["config"]["lr"] == pytest.approx(json.loads((tiny_run.run.path / "run.json").read_text())
                                                 ["config"]["lr"] / 10)  # fmt: skip
    model, spec = load_model(out)
    assert spec.folded and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "prune" and record["pruned_top1"] == result.pruned_top1 and record["top1"] == result.top1
    drift = record["drift"]  # explain's drift: parent and child explain the same test images
    assert drift["images"] == 32 and (out / drift["grid"]).is_file()
    # the record is explain's drift between the saved parent and child on the same 32 test images
    from convforge.explain.inputs import dataset_inputs
    from convforge.explain.metrics import explanation_drift

    parent, parent_spec = load_model(tiny_run.run.path)
    inputs = dataset_inputs(TINY_SHAPES, parent_spec, None, 32, torch.device("cpu"), False)
    expected = explanation_drift(parent, model, inputs.images, "gradcam", masks=inputs.masks)
    assert drift["rank_correlation"] == pytest.approx(expected.rank_correlation, rel=1e-4, abs=1e-5)
    assert drift["pointing_game_before"] == expected.pointing_game_before is not None  # shapes have object masks
    assert drift["pointing_game_after"] == expected.pointing_game_after
    from convforge.report import build_report

    html = build_report(out).read_text()
    section = html[html.index('<section id="compression">'):]
    for fragment in ("by the l2 criterion to a macs target of 0.6", "pruned + 1 epochs distilled", "Saved folded",
                     "Does the pruned model look at the same thing?", "mean rank correlation"):  # fmt: skip
        assert fragment in section, fragment


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--macs", "0.5", "--criterion", "l3"], "unknown criterion 'l3'"),
        (["--macs", "0.5", "--criterion", "lpr"], "Did you mean: lrp?"),
        (["--macs", "1.5"], "between 0 and 1"),
        (["--macs", "0"], "between 0 and 1"),
        (["--macs", "0.5", "--params", "0.5"], "give one target"),
        ([], "give one target"),
        (["--speedup", "1"], "more than 1, got 1"),
        (["--speedup", "2", "--batch", "0"], "--batch takes positive whole numbers"),
    ],
)
def test_bad_options_are_one_clear_message(tiny_run, tmp_path, args, fragment):
    result = invoke("prune", tiny_run.run.path, TINY_SHAPES, "--out", tmp_path / "child", *args)
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert not (tmp_path / "child").exists()


def test_a_run_without_weights_and_an_existing_output_are_refused(tiny_run, tmp_path):
    empty = shutil.copytree(tiny_run.run.path, tmp_path / "empty")
    (empty / "model.safetensors").unlink()
    result = invoke("prune", empty, TINY_SHAPES, "--macs", "0.5", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "holds no trained model yet" in result.output
    taken = tmp_path / "taken"
    (taken / "keep.txt").parent.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = invoke("prune", tiny_run.run.path, TINY_SHAPES, "--macs", "0.5", "--out", taken)
    assert result.exit_code == 2 and "already exists" in result.output
    assert (taken / "keep.txt").read_text() == "mine"
    result = invoke("prune", tiny_run.run.path, TINY_SHAPES, "--macs", "0.5", "--out", taken, "--force")
    assert result.exit_code == 2 and "not a run folder" in result.output  # --force replaces only run folders


def test_a_prune_that_dies_late_leaves_nothing_under_its_name_and_force_keeps_the_old_child(tiny_run, tmp_path,
                                                                                               monkeypatch):
    """The child is made in a hidden folder and renamed into place whole: a failure (or a kill) at the
    last step leaves no half-made child under --out; with --force the old child stays until the new
    one is complete."""
    from convforge.compress import prune_run as module

    out = tmp_path / "child"
    prune_run(tiny_run.run.path, TINY_SHAPES, out, macs=0.6, latency_seconds=0.02)
    before = (out / "run.json").read_text()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the last step: the drift study

    monkeypatch.setattr(module, "drift_into_run", killed)
    with pytest.raises(KeyboardInterrupt):
        prune_run(tiny_run.run.path, TINY_SHAPES, tmp_path / "new", macs=0.5, latency_seconds=0.02)
    with pytest.raises(KeyboardInterrupt):
        prune_run(tiny_run.run.path, TINY_SHAPES, out, macs=0.5, latency_seconds=0.02, force=True)
    assert not (tmp_path / "new").exists() and (out / "run.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child"]  # no temporary left either
    assert json.loads(before)["name"] == "child"
