"""The HTML report of a run: one self-contained file built from the run folder's files only."""

from convforge.report.build import build_report
from convforge.report.sections import SECTIONS, Section, section

__all__ = ["SECTIONS", "Section", "build_report", "section"]
