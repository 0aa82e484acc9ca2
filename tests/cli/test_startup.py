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
    """`import convforge` imports no torch; every exported name still resolves; a name shared by a function
    and a submodule works as both, in any order: `convforge.train(...)` calls the engine,
    `import convforge.train.engine as e` and `import convforge.train as t` give modules (the function once
    hid the subpackage), and `convforge.train.evaluate` is callable as the function and holds its module's
    names. The zoo registers in timm's registry once convforge.models is imported, as the README says."""
    code = (
        "import sys, inspect, convforge; assert 'torch' not in sys.modules; "
        "[getattr(convforge, name) for name in convforge.__all__]; "
        "import convforge.train.engine as engine; import convforge.train as package; "
        "from convforge import train; assert train is package and train.__wrapped__ is engine.train; "
        "assert 'config' in inspect.signature(train).parameters and package.TrainConfig is convforge.TrainConfig; "
        "import convforge.train.evaluate as module; from convforge.train import evaluate; "
        "assert evaluate is module and callable(module) and module.calibration and convforge.evaluate is "
        "module.evaluate; import timm, convforge.models; timm.create_model('unireplknet_a', num_classes=2); "
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
