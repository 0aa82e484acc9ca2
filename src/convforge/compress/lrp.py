"""LRP relevance of every convolution's output channels: the `lrp` pruning criterion of "Pruning by
Explaining" (Yeom et al., Pattern Recognition 2021; official code: github.com/seulkiyeom/LRP_pruning).

The relevance comes from zennit (the LRP library of the paper's group; an optional extra, LGPL, so
never a core dependency). What zennit lacks for timm and convforge models, convforge writes as one
graph canonizer instead of one canonizer per block class: the model is traced with torch.fx (a copy,
in float32) and rewritten so that LRP's rules see what they expect:
- a BatchNorm whose input is a convolution's output alone is folded into that convolution and left as
  the identity (zennit's canonizers find conv -> BN pairs by module order only, which misses timm's
  BatchNormAct2d: none of timm MobileNetV2's BNs merge);
- every addition of two tensors of one shape (residual connections of every block kind) goes through
  zennit's `Sum` module (zennit's ResNet canonizer recognises torchvision's blocks only), and relevance
  is split in proportion to each addend's magnitude (`abs_norm_rule`). zennit's Norm rule splits in
  proportion to the signed addends, which conserves only in exact arithmetic when they can cancel:
  after MobileNetV2's linear bottlenecks, positions where the two nearly cancel send relevance of
  1e6 with opposite signs down both paths, and the input sum misses the logit by 10x in float64;
- LayerNorm and GroupNorm (ConvNeXt) pass relevance through unchanged per channel, treating their
  statistics as constants as Ali et al. (ICML 2022) do for LayerNorm.
What is left approximate is said (`Canonized.approximate`): a BatchNorm with no convolution right
before it and products of two tensors (squeeze-excitation gates, GRN, gnConv), through which relevance
flows as a gradient. Property tested: with biases zeroed and BatchNorm folded, the relevance summed at
the input equals the explained logit under the epsilon rule (tests/compress/test_lrp.py).

As in the paper's code: the relevance of the true class's logit (logit x one-hot) is propagated for a
reference set of training images, the absolute relevance at each convolution's output is summed over
images and positions, normalised to sum 1 per layer, and channels are ranked globally.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
from torch import nn

from convforge.errors import ConfigError
from convforge.models.fold import NormLeafTracer, fuse_into_conv, is_conv_node

ADDITIONS = {operator.add, operator.iadd, torch.add}
PRODUCTS = {operator.mul, operator.imul, torch.mul}
CHUNK = 32  # images per LRP pass: bounds the memory of the kept activations


@dataclass
class Canonized:
    module: torch.fx.GraphModule  # a copy, traced and rewritten; module names are the model's
    folded: list[str] = field(default_factory=list)  # BatchNorms folded into the convolution before them
    sums: int = 0  # additions routed through a Sum
    approximate: list[str] = field(default_factory=list)  # what LRP treats as a gradient, by name


def require_zennit():
    try:
        import zennit
    except ImportError:
        raise ConfigError(
            "the lrp criterion needs zennit (LGPL, an optional extra): pip install 'convforge[lrp]'"
        ) from None
    return zennit


def canonize(model: nn.Module, example: torch.Tensor) -> Canonized:
    """A traced copy of `model` (in `example`'s floating dtype) in eval mode with BatchNorms folded and
    residual additions made explicit (see the module docstring). Raises ConfigError naming what could not be traced."""
    from torch.fx.passes.shape_prop import ShapeProp
    from zennit.layer import Sum

    dtype = example.dtype if example.is_floating_point() else torch.float32
    root = copy.deepcopy(model).to(dtype).eval()
    try:
        graph = NormLeafTracer().trace(root)
    except Exception as exc:  # noqa: BLE001 - tracing failures come as many types
        raise ConfigError(f"LRP cannot trace {type(model).__name__} ({type(exc).__name__}: {str(exc)[:200]})") from None
    traced = torch.fx.GraphModule(root, graph)
    ShapeProp(traced).propagate(example.to(dtype))
    canonized = Canonized(traced)
    modules = dict(traced.named_modules())
    computed: set[torch.fx.Node] = set()  # nodes whose value depends on the input image
    for node in list(traced.graph.nodes):
        if node.op == "placeholder" or any(arg in computed for arg in node.all_input_nodes):
            computed.add(node)
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            conv = node.args[0]
            if is_conv_node(conv, modules) and len(conv.users) == 1:
                _fold(modules[conv.target], modules[node.target])
                canonized.folded.append(node.target)
            else:
                canonized.approximate.append(f"{node.target} (BatchNorm without a convolution before it)")
        elif _is_tensor_op(node, ADDITIONS, "add"):
            a, b = node.args
            if _shape(a) is not None and _shape(a) == _shape(b):
                name = f"lrp_sum_{canonized.sums}"
                traced.add_submodule(name, Sum())
                with traced.graph.inserting_before(node):
                    stacked = traced.graph.call_function(torch.stack, ((a, b),), {"dim": -1})
                    summed = traced.graph.call_module(name, (stacked,))
                summed.meta = node.meta  # its shape, for an addition that reads it next
                node.replace_all_uses_with(summed)
                traced.graph.erase_node(node)
                computed.add(summed)
                canonized.sums += 1
        elif _is_tensor_op(node, PRODUCTS, "mul") and all(arg in computed for arg in node.args):
            canonized.approximate.append(f"{_owner(node)} (a product of two tensors)")
    traced.graph.lint()
    traced.recompile()
    return canonized


def channel_relevance(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, composite=None
) -> tuple[dict[str, torch.Tensor], Canonized]:
    """{convolution name: relevance of each output channel, summing to 1 per layer} for the true-class
    logits of `images` (normalised NCHW) and `labels`, and the canonized model that computed it.
    `composite` is a zennit composite; by default EpsilonPlusFlat with convforge's norm rules."""
    require_zennit()
    images = images.float()
    canonized = canonize(model, images[:1])
    graph_module = canonized.module
    composite = composite if composite is not None else default_composite()
    totals: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output):
            if output.requires_grad:
                output.register_hook(lambda grad: _add(totals, name, grad.abs().sum(dim=(0, 2, 3))))
        return hook

    convolutions = [(n, m) for n, m in graph_module.named_modules() if isinstance(m, nn.Conv2d)]
    with composite.context(graph_module) as modified:
        handles = [module.register_forward_hook(keep(name)) for name, module in convolutions]
        try:
            for start in range(0, len(images), CHUNK):
                batch = images[start:start + CHUNK].clone().requires_grad_(True)
                with torch.enable_grad():
                    logits = modified(batch)
                    chosen = torch.zeros_like(logits).scatter_(1, labels[start:start + CHUNK, None], 1.0)
                    logits.backward(gradient=(logits * chosen).detach())
        finally:
            for handle in handles:
                handle.remove()
    return {name: total / total.sum().clamp_min(1e-30) for name, total in totals.items()}, canonized


def default_composite():
    """zennit's EpsilonPlusFlat (the composite zennit recommends for CNNs) with norms passed through."""
    from zennit.composites import EpsilonPlusFlat

    return EpsilonPlusFlat(layer_map=norm_rules())


def norm_rules() -> list:
    """convforge's rules for what zennit's composites leave out or split unstably (module docstring)."""
    from zennit.layer import Sum
    from zennit.rules import Pass

    return [((nn.LayerNorm, nn.GroupNorm), Pass()), (Sum, abs_norm_rule())]


def abs_norm_rule():
    """Relevance split over addends in proportion to |addend|: conservative and bounded for any signs."""
    from zennit.core import BasicHook, Stabilizer
    from zennit.rules import NoMod

    stabilize = Stabilizer.ensure(1e-12)
    return BasicHook(
        input_modifiers=[torch.abs], param_modifiers=[NoMod(param_keys=[])], output_modifiers=[lambda output: output],
        gradient_mapper=lambda out_grad, outputs: out_grad / stabilize(outputs[0]),
        reducer=lambda inputs, gradients: inputs[0] * gradients[0],
    )  # fmt: skip


def relevance_importance():
    """A Torch-Pruning importance that scores each group's channels by the LRP relevance of the
    convolutions whose outputs the group removes; `refresh(model, images, labels)` before each step."""
    import torch_pruning as tp

    out_channels = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels)

    class RelevanceImportance(tp.importance.Importance):
        def __init__(self):
            self.scores: dict[int, torch.Tensor] = {}  # id(conv) -> channel relevance
            self.approximate: list[str] = []

        def refresh(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
            relevance, canonized = channel_relevance(model, images, labels)
            modules = dict(model.named_modules())
            self.scores = {id(modules[name]): values for name, values in relevance.items()}
            self.approximate = canonized.approximate

        @torch.no_grad()
        def __call__(self, group):
            total = None
            for i, (dep, idxs) in enumerate(group):
                score = self.scores.get(id(dep.layer))
                if score is None or dep.pruning_fn not in out_channels:
                    continue
                root = torch.as_tensor(group[i].root_idxs)
                part = torch.zeros(len(idxs)).index_add_(0, root, score[torch.as_tensor(idxs)])
                total = part if total is None else total + part
            return total

    return RelevanceImportance()


def _is_tensor_op(node: torch.fx.Node, functions: set, method: str) -> bool:
    if len(node.args) != 2 or node.kwargs:
        return False
    return (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in (method, f"{method}_")
    )


def _owner(node: torch.fx.Node) -> str:
    """The innermost module whose forward computed `node`, as `name (Class)`."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    name, kind = list(stack.values())[-1]
    return f"{name} ({getattr(kind, '__name__', kind)})"


def _shape(arg) -> torch.Size | None:
    meta = arg.meta.get("tensor_meta") if isinstance(arg, torch.fx.Node) else None
    return getattr(meta, "shape", None)


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """conv then norm becomes conv' then a norm that computes the identity (in eval mode): the graph keeps
    its node, which timm's BatchNormAct2d needs for its activation."""
    fuse_into_conv(conv, norm)
    norm.running_mean.zero_()
    norm.running_var.fill_(1.0)
    norm.eps = 0.0
    if norm.affine:
        norm.weight.fill_(1.0)
        norm.bias.zero_()


def _add(totals: dict[str, torch.Tensor], name: str, values: torch.Tensor) -> None:
    totals[name] = totals[name] + values if name in totals else values.detach().clone()
