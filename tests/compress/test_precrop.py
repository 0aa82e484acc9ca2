"""PreCropping: SynFlow's scores keep their defining property, widths chosen at initialisation meet the
budget with layer-wise (not uniform) shares, and `convforge prune ARCH DATA --at-init` trains the
narrowed architecture from scratch into an ordinary run folder; its mistakes are one clear message."""

import copy
import json

import pytest
import torch
from torch import nn

from convforge.checkpoint import load_model
from convforge.compress.prune import prune_model
from convforge.compress.synflow import synflow_scores
from convforge.models import create_model
from tests.helpers import TINY_MODEL, invoke

SMALL_SHAPES = "shapes:size=32,classes=4,train=160,val=32,test=64"


def test_synflow_conserves_the_flow_through_every_layer():
    """Tanaka et al.'s conservation: in a bias-free ReLU network each layer's scores sum to R, the
    network's output summed for an all-ones input with absolute weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, bias=False),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 5, bias=False))  # fmt: skip
    scores = synflow_scores(model, (3, 16, 16))
    absolute = copy.deepcopy(model).double()
    with torch.no_grad():
        for param in absolute.parameters():
            param.abs_()
        total = float(absolute(torch.ones(1, 3, 16, 16, dtype=torch.float64)).sum())
    assert set(scores) == {"0.weight", "2.weight", "5.weight"}
    for score in scores.values():
        assert float(score.double().sum()) == pytest.approx(total, rel=1e-5)


def test_synflow_widths_meet_the_budget_and_differ_from_layer_to_layer():
    torch.manual_seed(0)
    model = create_model(TINY_MODEL, num_classes=4, channels=[16, 24, 32, 48], stem_width=8)
    result = prune_model(model, (3, 32, 32), criterion="synflow", target="macs", goal=0.5, round_to=None)
    assert result.reached and result.achieved <= 0.5
    full = create_model(TINY_MODEL, num_classes=4, channels=[16, 24, 32, 48], stem_width=8)
    kept = [m.out_channels / f.out_channels for m, f in zip(model.modules(), full.modules(), strict=True)
            if isinstance(m, nn.Conv2d)]  # fmt: skip
    assert max(kept) - min(kept) > 0.2, kept  # ranked across layers: not one share for all


@pytest.mark.parametrize("uniform", [False, True])
def test_at_init_trains_the_narrowed_architecture_into_a_run(tmp_path, uniform):
    out = tmp_path / "cropped"
    args = ["prune", TINY_MODEL, SMALL_SHAPES, "--at-init", "--macs", "0.5", "--epochs", "1", "--out", out, "--json"]
    answer = invoke(*args, *(["--uniform"] if uniform else []))
    assert answer.exit_code == 0, answer.output
    result = json.loads(answer.output)
    info = json.loads((out / "run.json").read_text())
    assert info["stage"] == "prune" and info["prune_config"]["at_init"] is True
    assert info["prune_config"]["widths"] == ("uniform" if uniform else "synflow") == result["widths"]
    assert info["config"]["epochs"] == 1 and result["pruning"]["achieved"] <= 0.5
    model, spec = load_model(out)  # an ordinary run: rebuilt at the recorded widths
    assert sum(p.numel() for p in model.parameters()) == result["pruning"]["after"]["params"]
    assert len(spec.classes) == 4
    from convforge.report import build_report

    assert f"Narrowed at initialisation ({result['widths']} widths, PreCropping)" in build_report(out).read_text()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--macs", "0.5"], "give --epochs N"),
        (["--speedup", "2", "--epochs", "1"], "--at-init"),
        (["--macs", "1.5", "--epochs", "1"], "between 0 and 1"),
    ],
)
def test_at_init_mistakes_are_one_clear_message(tmp_path, args, fragment):
    answer = invoke("prune", TINY_MODEL, SMALL_SHAPES, "--at-init", "--out", tmp_path / "c", *args)
    assert answer.exit_code == 2 and fragment in answer.output, answer.output
    assert not (tmp_path / "c").exists()
    unknown = invoke("prune", "resnet181", SMALL_SHAPES, "--at-init", "--macs", "0.5", "--epochs", "1",
                     "--out", tmp_path / "c")  # fmt: skip
    assert unknown.exit_code == 2 and "resnet18" in unknown.output, unknown.output
