"""The one atomic writer (convforge.files): whole or nothing, and no second copy of it in src/."""

import ast
import os
from pathlib import Path

import pytest

from convforge.files import atomic_write_bytes, atomic_write_json

SOURCE = Path(__file__).resolve().parents[1] / "src" / "convforge"


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    atomic_write_json(target, {"version": 1})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b'{"version": 2}')
    assert target.read_text() == '{\n  "version": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_it_creates_the_folder_and_replaces_the_file(tmp_path):
    target = tmp_path / "artifacts" / "robust" / "robustness.md"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["robustness.md"]


def _calls(path: Path) -> set[str]:
    """Dotted names of the functions a module calls: `os.replace`, `tempfile.mkstemp`, `tmp.replace`..."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            names.add(f"{owner.id if isinstance(owner, ast.Name) else '?'}.{node.func.attr}")
    return names


# Renaming a file into place is the atomic writer's job. data/cache.py renames whole folders (a
# decode-cache entry), and runs.py fsyncs the lines it appends to metrics.jsonl: neither writes a file.
RENAMERS = {"files.py": {"os.replace", "tempfile.mkstemp", "os.fsync", "os.rename", "tempfile.mkdtemp"},
            "data/cache.py": {"os.rename", "tempfile.mkdtemp"}, "runs.py": {"os.fsync"}}  # fmt: skip


def test_no_other_module_renames_files_into_place():
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        used = {n for n in _calls(path) if n in {"os.replace", "os.rename", "tempfile.mkstemp", "tempfile.mkdtemp",
                                                  "os.fsync", "tmp.replace", "os.link"}}  # fmt: skip
        if used:
            found[path.relative_to(SOURCE).as_posix()] = used
    assert found == RENAMERS


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    """A killed write leaves a hidden `.NAME.~PID~.*.tmp` (or a `.partial` folder); the next run that
    opens the folder removes those whose process is gone, never a live writer's or anything else."""
    import subprocess
    import sys

    from convforge.files import remove_stale_temporaries
    from convforge.runs import Run

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(dead.stdout)
    run = Run.create(tmp_path / "run", command="c", stage="train", config={})
    (run.path / f".model.json.~{gone}~.x1.tmp").write_text("half")
    (run.path / "artifacts").mkdir()
    (run.path / "artifacts" / f".model.onnx.~{gone}~.x2.tmp").write_text("half")
    (run.path / f".shards.~{gone}~.x3.partial").mkdir()
    live = run.path / f".model.json.~{os.getpid()}~.x4.tmp"
    live.write_text("being written")
    (run.path / ".hidden-of-the-user").write_text("mine")
    Run.open(run.path)
    left = sorted(p.name for p in run.path.iterdir()) + sorted(p.name for p in (run.path / "artifacts").iterdir())
    assert left == [".hidden-of-the-user", live.name, "artifacts", "run.json"]
    assert remove_stale_temporaries(tmp_path / "nowhere") == 0
