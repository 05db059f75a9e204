"""Rerunning a finished study keeps its report when nothing it was drawn from changed."""

from __future__ import annotations

import json
import os

from lightlayers.cli import main as cli
from lightlayers.report.source import SOURCE_FILE

RUN = ["run", "--data", "digits", "--models", "paper-light-k1", "--seeds", "0", "--epochs",
       "1", "--threads", "1", "--quiet"]


def _mtimes(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


def test_a_finished_folders_rerun_keeps_an_unchanged_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli([*RUN, "--out", str(out)]) == 0
    report = out / "report"
    record = json.loads((report / SOURCE_FILE).read_text())
    assert "report.html" in record["files"] and any(
        f.startswith("figures/") for f in record["files"])
    before = _mtimes(report)
    capsys.readouterr()
    assert cli([*RUN, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "(unchanged: drawn from these same results)" in err
    assert _mtimes(report) == before  # nothing redrawn

    # A file of the report gone: it is drawn again.
    figure = next(report.glob("figures/*.png"))
    os.remove(figure)
    assert cli([*RUN, "--out", str(out)]) == 0
    assert "unchanged" not in capsys.readouterr().err
    assert figure.is_file()

    # Another option that shapes the files: drawn again.
    before = _mtimes(report)
    assert cli([*RUN, "--out", str(out), "--cam-min-side", "3"]) == 0
    assert "unchanged" not in capsys.readouterr().err
    assert _mtimes(report)["report.html"] != before["report.html"]


def test_report_command_always_draws(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli([*RUN, "--out", str(out), "--no-report"]) == 0
    assert cli(["report", str(out), "--quiet"]) == 0
    html = out / "report" / "report.html"
    first = html.stat().st_mtime_ns
    assert cli(["report", str(out), "--quiet"]) == 0
    assert html.stat().st_mtime_ns != first
