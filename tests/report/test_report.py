"""The report is one self-contained file built from the run folder alone."""

from __future__ import annotations

import re
import shutil

from convforge.report import SECTIONS, build_report


def test_report_has_every_section_and_embeds_its_pictures(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.run.path, copy)
    shutil.rmtree(copy / "checkpoints")  # the report needs no model, only the run's files
    (copy / "model.safetensors").unlink()
    path = build_report(copy)
    html = path.read_text()
    for name in ("summary", "training", "evaluation", "predictions"):
        assert f'id="{name}"' in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) >= 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in html and "https://" not in html
    assert "resnet10t" in html and f"{100 * tiny_run.test.top1:.2f}%" in html


def test_a_section_is_one_function_and_one_template():
    for section in SECTIONS.values():
        assert section.template == f"sections/{section.name}.html.j2"
        assert callable(section.build)


def test_sections_without_data_are_left_out(tmp_path):
    from convforge.runs import Run

    run = Run.create(tmp_path / "bare", command="c", stage="train", config={})
    html = build_report(run.path).read_text()
    assert 'id="summary"' in html and 'id="training"' not in html
