"""The CLI starts fast: `--help`, `CMD --help` and a usage error import no heavy library, and work
without the optional extras (benchmarks/cli_startup.py measures the time)."""

import json
import subprocess
import sys

import pytest

COMMANDS = ["demo", "eval", "explain", "models", "predict", "report", "robust", "train"]
HEAVY = ["torch", "torchvision", "timm", "numpy", "PIL", "matplotlib", "safetensors"]
OPTIONAL = ["torch_pruning", "fastapi", "uvicorn", "onnx", "onnxruntime", "onnxscript", "prometheus_client"]

# Runs the CLI in a fresh interpreter, optionally with the optional extras made unimportable, and prints
# the exit code and which heavy modules ended up imported.
_PROBE = """
import importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Block())
from convforge.cli import app
try:
    app(sys.argv[2:], prog_name="convforge")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
""".replace("HEAVY", repr(HEAVY))


def _probe(args: list[str], blocked: list[str] = ()) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(blocked)), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["--version"], *[[c, "--help"] for c in COMMANDS]])
def test_help_imports_no_heavy_library(args):
    result = _probe(args)
    assert result == {"code": 0, "heavy": []}


def test_a_usage_error_imports_no_heavy_library():
    result = _probe(["train", "--no-such-option"])
    assert result == {"code": 2, "heavy": []}


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]])
def test_help_works_without_the_optional_extras(args):
    assert _probe(args, blocked=OPTIONAL)["code"] == 0


def test_the_package_face_is_lazy_and_complete():
    """`import convforge` imports no torch; every exported name still resolves, and `convforge.train`
    stays the function even after the `convforge.train` subpackage was imported."""
    code = (
        "import sys, convforge; assert 'torch' not in sys.modules; "
        "[getattr(convforge, name) for name in convforge.__all__]; "
        "import convforge.train.engine; from convforge.train.engine import train as engine_train; "
        "from convforge import train; assert train is engine_train and convforge.train is engine_train; "
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
