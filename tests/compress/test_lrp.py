"""The lrp criterion: convforge's graph canonizer folds BatchNorm exactly and makes residual additions
explicit, LRP then conserves relevance from the logit down to the input, it agrees with zennit's own
canonizers where those apply (torchvision's ResNet), and pruning by relevance says what it treats
approximately or cannot trace."""

import sys

import pytest
import torch
from torch import nn

from convforge.compress.lrp import canonize, channel_relevance, norm_rules
from convforge.compress.prune import prune_model
from convforge.errors import ConfigError
from convforge.models import create_model

zennit = pytest.importorskip("zennit")


def _with_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine parameters away from their initial values, so folding matters."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval().double()


def _epsilon_composite(sum_rule=None):
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, BatchNorm, Convolution

    first = [(Sum, sum_rule)] if sum_rule is not None else []
    return LayerMapComposite(first + norm_rules() + [
        (Activation, Pass()), (AvgPool, Norm()), (BatchNorm, Pass()),
        (Convolution, Epsilon(1e-12)), (nn.Linear, Epsilon(1e-12)),
    ])  # fmt: skip


def _input_relevance(module: nn.Module, images: torch.Tensor, labels: torch.Tensor, composite, canonizers=None):
    if canonizers is not None:
        composite.canonizers = canonizers
    with composite.context(module) as modified:
        inputs = images.clone().requires_grad_(True)
        logits = modified(inputs)
        chosen = torch.zeros_like(logits).scatter_(1, labels[:, None], 1.0)
        logits.backward(gradient=(logits * chosen).detach())
    return inputs.grad.sum(dim=(1, 2, 3)), logits.gather(1, labels[:, None]).flatten().detach()


@pytest.mark.parametrize(("name", "folded", "sums"), [("resnet18", 20, 8), ("mobilenetv2_100", 52, 10)])
def test_relevance_is_conserved_from_the_logit_to_the_input(name, folded, sums):
    """LRP's conservation: with biases zeroed and BatchNorm folded, the epsilon rule's input relevance
    sums to the explained logit (MobileNetV2's linear-bottleneck residuals included)."""
    model = _with_statistics(create_model(name, num_classes=10))
    images, labels = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3, 5, 9])
    canonized = canonize(model, images[:1])
    assert (len(canonized.folded), canonized.sums, canonized.approximate) == (folded, sums, [])
    with torch.no_grad():
        torch.testing.assert_close(canonized.module(images), model(images), rtol=1e-12, atol=1e-12)  # folding is exact
        for module in canonized.module.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.bias.zero_()
    relevance, logits = _input_relevance(canonized.module, images, labels, _epsilon_composite())
    assert logits.abs().min() > 1e-3
    torch.testing.assert_close(relevance, logits, rtol=1e-4, atol=1e-6)


def test_the_graph_canonizer_agrees_with_zennits_resnet_canonizer():
    """On torchvision's ResNet, which zennit's own canonizers know, both give the same relevance."""
    torchvision = pytest.importorskip("torchvision")
    from zennit.rules import Norm
    from zennit.torchvision import ResNetCanonizer

    model = _with_statistics(torchvision.models.resnet18(num_classes=10))
    for module in model.modules():  # zennit leaves a merged BatchNorm dividing by sqrt(1 + eps), not exactly 1
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
    images, labels = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 2, 7])
    ours, logits = _input_relevance(canonize(model, images[:1]).module, images, labels, _epsilon_composite(Norm()))
    theirs, _ = _input_relevance(model, images, labels, _epsilon_composite(Norm()), [ResNetCanonizer()])
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(ours, torch.zeros_like(ours))


def test_channel_relevance_covers_every_convolution_and_names_approximations():
    model = create_model("efficientnet_b0", num_classes=4).eval()
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    relevance, canonized = channel_relevance(model, images, labels)
    convolutions = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {n: len(v) for n, v in relevance.items()} == convolutions
    for values in relevance.values():
        assert (values >= 0).all() and float(values.sum()) == pytest.approx(1.0, rel=1e-5)
    assert "blocks.1.0.se (SqueezeExcite) (a product of two tensors)" in canonized.approximate


def test_lrp_prunes_to_a_target_and_says_what_it_approximates():
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", num_classes=4)
    batch = (torch.randn(8, 3, 32, 32), torch.arange(8) % 4)
    result = prune_model(model, (3, 32, 32), criterion="lrp", target="macs", goal=0.6, data_batch=batch)
    assert result.reached and result.achieved <= 0.6 and model(batch[0]).shape == (8, 4)
    assert result.notes and result.notes[0].startswith("LRP treats these as gradients, not by an exact rule: blocks")


class _Branching(nn.Module):
    """Control flow on a value: torch.fx cannot trace it, Torch-Pruning (which runs the model) can."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:
            x = x.relu()
        return self.head(x.mean(dim=(2, 3)))


def test_a_model_lrp_cannot_trace_falls_back_on_taylor_and_says_so():
    batch = (torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0]))
    result = prune_model(_Branching(), (3, 16, 16), criterion="lrp", target="params", goal=0.8, round_to=None,
                         data_batch=batch)  # fmt: skip
    assert result.reached
    assert result.notes == [result.notes[0]] and "LRP cannot trace _Branching (TraceError" in result.notes[0]
    assert result.notes[0].endswith("pruned by the taylor criterion instead")


def test_lrp_without_zennit_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "zennit", None)
    with pytest.raises(ConfigError, match=r"the lrp criterion needs zennit .* pip install 'convforge\[lrp\]'"):
        prune_model(_Branching(), (3, 16, 16), criterion="lrp", data_batch=(torch.zeros(1, 3, 16, 16), torch.zeros(1)))
