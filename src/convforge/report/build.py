"""`build_report(run)`: render every section that has something to show into one report.html.

The sections read records a run folder holds (metrics.jsonl, run.json), written by any version of
convforge or edited by hand. A record that lacks or garbles what a section needs costs that section
only: it is drawn as a notice naming the problem, the others are drawn, and a warning says which.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from convforge.files import atomic_write_bytes
from convforge.report import compression  # noqa: F401 - registers its section
from convforge.report.sections import SECTIONS
from convforge.runs import REPORT_FILE, Run

_TEMPLATES = Path(__file__).parent / "templates"
log = logging.getLogger(__name__)
# what reading a record with a missing key, a wrong type or a bad value raises, in a section or its template
_RECORD_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, jinja2.UndefinedError)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.2f}%"
    environment.filters["num"] = lambda v, digits=4: "-" if v is None else f"{v:.{digits}f}"
    return environment


_NOTICE = ("<p class=\"notice\">This section could not be drawn: a record of this run lacks or garbles what it "
           "needs (<code>{{ problem }}</code>). Run the command that records it again (eval, explain, robust, "
           "bench...), or remove the record from metrics.jsonl.</p>")


def build_report(run_path: str | os.PathLike) -> Path:
    """Write <run>/report.html (self-contained: every picture embedded) and return its path."""
    run = Run.open(run_path)
    environment = _environment()
    rendered = []
    for section in sorted(SECTIONS.values(), key=lambda s: s.order):
        try:
            context = section.build(run)
            if context is None:
                continue
            body = environment.get_template(section.template).render(run=run, **context)
        except _RECORD_ERRORS as exc:
            problem = f"{type(exc).__name__}: {exc}"
            log.warning("the report's %s section could not be drawn from %s's records (%s); the other sections "
                        "were", section.title, run.path, problem)  # fmt: skip
            body = environment.from_string(_NOTICE).render(problem=problem)
        rendered.append({"name": section.name, "title": section.title, "body": body})
    html = environment.get_template("report.html.j2").render(
        run=run,
        sections=rendered,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path = run.path / REPORT_FILE
    atomic_write_bytes(path, html.encode())
    return path
