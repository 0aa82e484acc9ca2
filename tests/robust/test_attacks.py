"""Attacks: agreement with torchattacks, the epsilon ball, monotonicity, a closed form, bad input."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from convforge.checkpoint import load_model
from convforge.data import load_dataset
from convforge.data.transforms import pixel_transform
from convforge.errors import ConfigError, UserError
from convforge.models.prepared import model_prepared
from convforge.robust.attacks import (
    PixelSpaceModel,
    apgd,
    apgd_checkpoints,
    attack_settings,
    fgsm,
    parse_epsilon,
    pgd,
    run_attack,
    target_classes,
)
from convforge.robust.evaluate import accuracy
from tests.helpers import TINY_SHAPES

pytestmark = pytest.mark.xdist_group("attacks")  # its module fixtures are built once, on one worker

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def reference_setup():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6) % 10
    return model, images, labels


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The tiny trained shapes model on [0, 1] pixels, with 128 held-out images it mostly gets right."""
    model, spec = load_model(tiny_run.run.path)
    test = load_dataset(TINY_SHAPES).test
    images = pixel_transform(torch.from_numpy(test.gather(torch.arange(128).numpy())), spec.preprocessing)
    labels = torch.from_numpy(test.labels[:128])
    pixel_model = PixelSpaceModel(model, spec.preprocessing.mean, spec.preprocessing.std)
    with model_prepared(model):
        yield pixel_model, images, labels


def test_fgsm_and_pgd_equal_torchattacks(reference_setup):
    import torchattacks  # installed by `make install` (without its stale pins)
    model, images, labels = reference_setup
    # torchattacks gets the same pixel-space model: its own set_normalization_used expects normalised
    # inputs and returns normalised images, the trap this module's PixelSpaceModel removes.
    ours_model = PixelSpaceModel(model, MEAN, STD)
    # the wrapper itself in eval mode: torchattacks puts back the mode it finds on the module it gets
    with model_prepared(ours_model):
        reference = torchattacks.FGSM(ours_model, eps=8 / 255)
        ours = fgsm(ours_model, images, labels, 8 / 255)
        assert (ours - reference(images, labels)).abs().max() <= 1e-6
        assert (ours - images).abs().max() > 7 / 255  # it did move

        reference = torchattacks.PGD(ours_model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
        ours = pgd(ours_model, images, labels, 8 / 255, steps=10, step_size=2 / 255, random_start=False,
                   early_stop=False)  # fmt: skip
        assert (ours - reference(images, labels)).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd-l2", "apgd", "apgd-l2"])
def test_perturbation_stays_in_the_ball_and_the_pixel_range(tiny, name):
    model, images, labels = tiny
    eps = 0.5 if name.endswith("l2") else 8 / 255
    settings = attack_settings(name, eps, steps=5, restarts=2 if name == "pgd" else 1)
    adversarial = run_attack(model, images[:32], labels[:32], settings, generator=torch.Generator().manual_seed(0))
    delta = (adversarial - images[:32]).flatten(1)
    if name.endswith("l2"):
        assert delta.norm(dim=1).max() <= eps + 1e-5
    else:
        assert delta.abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert accuracy(model, adversarial, labels[:32]) <= accuracy(model, images[:32], labels[:32])


def test_robust_accuracy_does_not_rise_with_epsilon_or_steps(tiny):
    model, images, labels = tiny
    by_eps = [accuracy(model, pgd(model, images, labels, eps, steps=5, random_start=False), labels)
              for eps in (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)]  # fmt: skip
    assert by_eps == sorted(by_eps, reverse=True), by_eps
    assert by_eps[-1] < by_eps[0] - 0.2  # the attack is real
    # with a fixed step size and early stop, more steps can only add successes
    by_steps = [accuracy(model, pgd(model, images, labels, 2 / 255, steps=k, step_size=0.5 / 255,
                                    random_start=False), labels) for k in (1, 3, 10)]  # fmt: skip
    assert by_steps == sorted(by_steps, reverse=True), by_steps


def test_apgd_is_at_least_as_strong_as_pgd(tiny):
    model, images, labels = tiny
    generator = torch.Generator().manual_seed(0)
    pgd_accuracy = accuracy(model, pgd(model, images, labels, 2 / 255, steps=20, generator=generator), labels)
    apgd_accuracy = accuracy(model, apgd(model, images, labels, 2 / 255, steps=20, generator=generator), labels)
    assert apgd_accuracy <= pgd_accuracy + 1 / 64


def test_apgd_checkpoints_follow_the_paper():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_targeted_attack_reaches_its_targets(tiny):
    model, images, labels = tiny
    with torch.no_grad():
        logits = model(images)
    targets = target_classes(logits, labels, generator=torch.Generator().manual_seed(0))
    assert (targets != labels).all()
    adversarial = pgd(model, images, labels, 16 / 255, steps=20, targets=targets)
    with torch.no_grad():
        hit = (model(adversarial).argmax(1) == targets).float().mean().item()
    assert hit > 0.5
    assert (target_classes(logits, labels, "least-likely") == logits.argmin(1)).float().mean() > 0.9


def test_a_pgd_step_on_a_linear_model_matches_its_closed_form():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).double()
    model = PixelSpaceModel(linear, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).double()
    x = torch.rand(7, 3, 4, 4, dtype=torch.float64)
    y = torch.arange(7) % 5
    weight, bias = linear[1].weight.detach(), linear[1].bias.detach()
    probabilities = torch.softmax(x.flatten(1) @ weight.T + bias, dim=1)
    gradient = ((probabilities - F.one_hot(y, 5).double()) @ weight).view_as(x)  # d CE / d x
    eps, step = 0.05, 0.02
    expected = (x + (x + step * gradient.sign()).sub(x).clamp(-eps, eps)).clamp(0, 1)
    got = pgd(model, x, y, eps, steps=1, step_size=step, random_start=False, early_stop=False)
    assert torch.equal(got, expected)
    unit = gradient / gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    got_l2 = pgd(model, x, y, 1.0, norm="l2", steps=1, step_size=0.3, random_start=False, early_stop=False)
    assert torch.allclose(got_l2, (x + 0.3 * unit).clamp(0, 1), atol=1e-12)


def test_epsilon_parsing():
    assert parse_epsilon("8/255") == pytest.approx(8 / 255)
    assert parse_epsilon("0.031") == pytest.approx(0.031)
    assert parse_epsilon(" 0 ") == 0
    with pytest.raises(ConfigError, match="non-negative"):
        parse_epsilon("-2/255")
    with pytest.raises(ConfigError, match="write 8/255"):
        parse_epsilon("8")
    with pytest.raises(ConfigError, match="like 8/255 or 0.031"):
        parse_epsilon("eight")
    with pytest.raises(ConfigError, match="like 8/255 or 0.031"):
        parse_epsilon("8/0")
    assert parse_epsilon("3", norm="l2") == 3.0  # L2 budgets may exceed 1


def test_bad_models_and_images_get_clear_messages(reference_setup):
    model, images, labels = reference_setup
    feature_map = PixelSpaceModel(nn.Conv2d(3, 4, 3), MEAN, STD)
    with pytest.raises(UserError, match=r"\(batch, classes\) logits.*\(6, 4, 30, 30\)"):
        pgd(feature_map, images, labels, 8 / 255)
    ours = PixelSpaceModel(model.eval(), MEAN, STD)
    with pytest.raises(UserError, match="divide uint8 pixels by 255"):
        pgd(ours, (images * 255).to(torch.uint8), labels, 8 / 255)
    normalized = (images - 0.5) / 0.25
    with pytest.raises(UserError, match="before normalising"):
        fgsm(ours, normalized, labels, 8 / 255)
    with pytest.raises(ConfigError, match="whole image cube"):
        pgd(ours, images, labels, 1000.0, norm="l2")
    with pytest.raises(ConfigError, match="unknown attack 'pdg'.*Did you mean: pgd"):
        attack_settings("pdg", 0.1)
