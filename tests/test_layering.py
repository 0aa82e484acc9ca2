"""The import structure of docs/DESIGN.md, read from the source with `ast`: each part imports only the
parts below it, and no command module of the CLI imports another.

Imports under `if TYPE_CHECKING:` are left out: they cost nothing at run time and only name types.
"""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "convforge"

# bottom to top; a part may import its own layer's parts and any below
LAYERS = [
    {"errors", "_lazy", "_version", "device", "files", "tensorfile", "threads"},
    {"data", "measure"},
    {"models"},
    {"runs", "run_samples"},
    {"checkpoint"},
    {"train"},
    {"explain", "robust", "compress", "deploy", "report"},  # capabilities: libraries first, above training
    {"cli", "__main__", "__init__"},
]
# the one documented import that points up: adversarial training attacks with robust.attacks
UPWARD_ALLOWED = {("train", "convforge.robust.attacks")}
# parts that must not use the training package although it sits below them: they work on any saved
# model or run folder, whoever trained it
INDEPENDENT_OF_TRAINING = {"report", "deploy", "runs", "run_samples"}
CLI_HELPERS = {"__init__", "app", "common", "tables"}  # every other module in cli/ is one command


def _part(module: str) -> str:
    """`convforge.data.spec` -> `data`; `convforge.runs` -> `runs`; `convforge` -> `__init__`."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name == "convforge" or name.startswith("convforge.")]


def _modules() -> list[tuple[str, Path]]:
    return [
        (".".join(("convforge", *path.relative_to(SOURCE).with_suffix("").parts)), path)
        for path in sorted(SOURCE.rglob("*.py"))
    ]


def _layer(part: str) -> int:
    for index, layer in enumerate(LAYERS):
        if part in layer:
            return index
    raise AssertionError(f"{part!r} is in no layer of tests/test_layering.py; place it (and in docs/DESIGN.md)")


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_only_point_down(module, path):
    part = _part(module)
    own = _layer(part)
    upward = [
        name for name in _imports(path) if _layer(_part(name)) > own and (part, name) not in UPWARD_ALLOWED
    ]
    assert upward == [], f"{module} imports from a higher layer: {upward}"
    if part in INDEPENDENT_OF_TRAINING:
        assert not [name for name in _imports(path) if _part(name) == "train"], f"{module} imports train/"


def test_no_cli_command_imports_another():
    commands = {p.stem for p in (SOURCE / "cli").glob("*.py")} - CLI_HELPERS
    for command in sorted(commands):
        imported = {name.split(".")[2] for name in _imports(SOURCE / "cli" / f"{command}.py")
                    if name.startswith("convforge.cli.")}  # fmt: skip
        assert imported <= CLI_HELPERS, f"cli/{command}.py imports command module(s) {imported - CLI_HELPERS}"


def test_benchmarks_and_library_do_not_reach_into_the_cli():
    users = [*SOURCE.rglob("*.py"), *(SOURCE.parents[1] / "benchmarks").glob("*.py")]
    offenders = [
        str(path) for path in users
        if "cli" not in path.relative_to(SOURCE.parents[1]).parts[:3] and path.name != "__main__.py"
        and any(name.startswith("convforge.cli") for name in _imports(path))
    ]  # fmt: skip
    assert offenders == []
