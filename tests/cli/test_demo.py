"""`convforge demo`: the whole path in one command, reaching 95% on held-out shapes.

The shapes data defeats a linear classifier on pixels (10.45%, tests/data/test_shapes.py); the
demo's small CNN must reach at least 95% on the same 2,000 held-out images.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from convforge.cli import app

runner = CliRunner()


def test_demo_reaches_95_percent_and_says_what_next(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    test = json.loads((out / "run.json").read_text())["test"]
    assert test["split"] == "test" and test["images"] == 2000
    assert test["top1"] >= 0.95
    assert f"report      {out / 'report.html'}" in result.output
    assert "What to try next" in result.output and f"convforge predict {out}" in result.output
    assert (out / "report.html").is_file()
