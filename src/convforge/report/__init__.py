"""The HTML report of a run: one self-contained file built from the run folder's files only."""

from convforge._lazy import lazy_exports

_EXPORTS = {
    "SECTIONS": "convforge.report.sections",
    "Section": "convforge.report.sections",
    "section": "convforge.report.sections",
    "build_report": "convforge.report.build",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
