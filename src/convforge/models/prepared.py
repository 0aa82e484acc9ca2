"""`model_prepared`: a model set up for a read-only pass (explanations, attacks), then put back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters that do not require grad for the call (input gradients only); flags come back after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def model_prepared(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the call; the caller's mode and flags come back after.

    Eval mode makes every sample independent of the rest of its batch (batch norm uses its running
    statistics), and frozen parameters keep the backward pass from computing weight gradients."""
    training = model.training
    model.eval()
    try:
        with frozen_parameters(model):
            yield
    finally:
        model.train(training)
