"""The report of a run folder: comparison table (console, CSV, Markdown), figures (PNG, SVG)
and one self-contained HTML page, all read from the results store only.

Example:
    >>> from lightlayers.report import write_report
    >>> write_report("runs/study").html
    PosixPath('runs/study/report/report.html')
"""

from lightlayers.report.load import ReportError
from lightlayers.report.write import FORMATS, ReportResult, write_report

__all__ = ["FORMATS", "ReportError", "ReportResult", "write_report"]
