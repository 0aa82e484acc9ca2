"""`convforge robust`: the report card in the run folder and its report; bad input as clear messages."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TINY_SHAPES, invoke


def robust_records(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "robust"]


def test_robust_writes_table_curves_record_and_report_section(tiny_run_copy):
    run = tiny_run_copy
    args = ["robust", run, TINY_SHAPES, "--n", "64", "--attacks", "fgsm,pgd", "--eps", "2/255,0.031",
            "--corruptions", "gaussian_noise,jpeg", "--severities", "1-2", "--bias"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (record,) = robust_records(run)
    assert record["images"] == 64 and record["split"] == "test"
    rows = {(r["name"], round(r["eps"], 4)): r for r in record["attacks"]}
    assert set(rows) == {(a, e) for a in ("fgsm", "pgd") for e in (0.0, 0.0078, 0.031)}
    assert rows[("pgd", 0.031)]["steps"] == 10 and rows[("pgd", 0.031)]["random_start"] is True
    assert rows[("pgd", 0.0)]["robust_accuracy"] == record["clean_accuracy"]
    assert rows[("pgd", 0.031)]["robust_accuracy"] <= rows[("fgsm", 0.0)]["robust_accuracy"]
    assert set(record["corruptions"]["accuracy"]) == {"gaussian_noise", "jpeg_compression"}
    assert record["corruptions"]["preset"] == "cifar"
    assert record["bias"]["images"] == 64
    for relative in record["files"].values():
        assert (run / relative).is_file()
    assert "Robustness" in (run / "report.html").read_text()
    assert "accuracy under attack" in result.output and "shape bias" in result.output

    # the run is its own baseline: every corruption error is exactly 100% (same seed, same images)
    result = invoke("robust", run, TINY_SHAPES, "--n", "64", "--attacks", "none", "--corruptions",
                    "gaussian_noise,jpeg", "--severities", "1-2", "--baseline", run)  # fmt: skip
    assert result.exit_code == 0, result.output
    errors = robust_records(run)[-1]["corruption_errors"]
    assert errors["mce"] == pytest.approx(1.0) and set(errors["corruption_error"].values()) == {1.0}
    assert "mCE against" in result.output


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--eps", "-1/255"], ["epsilon must be a non-negative number"]),
        (["--eps", "8"], ["whole pixel range", "write 8/255"]),
        (["--eps", "lots"], ["cannot read epsilon 'lots'", "8/255 or 0.031"]),
        (["--attacks", "pgdd"], ["unknown attack 'pgdd'", "Did you mean: pgd"]),
        (["--corruptions", "gausian_noise"], ["unknown corruption 'gausian_noise'", "Did you mean: gaussian_noise"]),
        (["--severities", "0-5"], ["severities run from 1 to 5"]),
        (["--severities", "6"], ["severities run from 1 to 5"]),
        (["--baseline", "{tmp}/nowhere"], ["nowhere"]),
    ],
)
def test_bad_input_is_one_clear_message(tiny_run_copy, tmp_path, args, fragments):
    run = tiny_run_copy
    result = invoke("robust", run, TINY_SHAPES, "--n", "8", *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
