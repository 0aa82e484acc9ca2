"""Constants shared by tests: a tiny model and tiny shapes data that train in seconds."""

TINY_MODEL = "resnet10t"  # narrowed below: about 100k parameters
TINY_MODEL_KWARGS = {"channels": [16, 24, 32, 48], "stem_width": 8}
# Each class's shape filled with its own texture: a second cue the tiny model learns in seconds, so tests
# that check learning sit far above their bars on every CPU kind (measured: 79.7-82.7% top-1 over seeds
# 0-1 and with the kernels held to AVX2, in about 6 s; untextured shapes gave 15-31% and made bars of
# 15-20% a coin toss)
TINY_SHAPES = "shapes:size=32,train=3000,val=200,test=300,textured=1"
TINY_TRAINING = {"epochs": 6, "batch_size": 32, "lr": 1e-2, "crop": "none"}


def invoke(*args):
    """Run the CLI in-process with string arguments; exceptions other than exit codes propagate."""
    from typer.testing import CliRunner

    from convforge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_close_scaled(actual, expected, rtol: float = 1e-5) -> None:
    """`actual` equals `expected` within `rtol` of the largest |expected|, elementwise.

    Logits of random models can be in the millions; an absolute tolerance then depends on summation
    order (CPU kind, thread count, load). Scaling by the largest value compares what float32 can hold.
    """
    import torch

    expected = torch.as_tensor(expected).detach()
    actual = torch.as_tensor(actual).detach()
    scale = max(float(expected.abs().max()), 1e-30) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=rtol * scale)
