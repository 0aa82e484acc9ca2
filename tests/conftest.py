"""Shared fixtures: an isolated cache, the shared real datasets, tiny data and a tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL, TINY_MODEL_KWARGS, TINY_SHAPES, TINY_TRAINING

# The CLI's tables take the width COLUMNS gives, else a wide plain one without a terminal: pytest-xdist's
# workers get COLUMNS=80, so the tests that read the tables' text see the same width run alone or in parallel
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test session decodes into its own cache; nothing touches ~/.cache."""
    path = tmp_path_factory.mktemp("convforge-cache")
    previous = os.environ.get("CONVFORGE_CACHE")
    os.environ["CONVFORGE_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("CONVFORGE_CACHE", None)
    else:
        os.environ["CONVFORGE_CACHE"] = previous


def datasets_root() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    return Path(os.environ.get("CONVFORGE_DATASETS", default))


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    root = datasets_root()
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set CONVFORGE_DATASETS)")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny model trained for a few seconds on tiny shapes: a real run folder for read-only tests."""
    from convforge import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    config = TrainConfig(
        data=TINY_SHAPES, model=TINY_MODEL, model_kwargs=dict(TINY_MODEL_KWARGS), **TINY_TRAINING
    )
    return train(config, out)


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A private copy of the tiny trained run, for commands that write into the run folder."""
    import shutil

    return shutil.copytree(tiny_run.run.path, tmp_path / "run")
