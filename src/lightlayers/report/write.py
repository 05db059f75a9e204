"""``write_report``: read a run folder's store, write the table, figures and HTML page."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightlayers.outputs import OutputFolder
from lightlayers.report.compare import Comparison
from lightlayers.report.curves import LearningCurve
from lightlayers.report.ensemble import Ensemble
from lightlayers.report.load import ReportError, RunData, load_run
from lightlayers.report.table import (
    Row,
    build_rows,
    console_columns,
    failure_notes,
    partial_notes,
    print_table,
    settings_sentence,
    table_csv,
    table_markdown,
)

FORMATS = ("html", "md", "csv", "png", "svg")
FIGURE_FORMATS = ("png", "svg")


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote and what it found."""

    out_dir: Path  # RUN_DIR/report
    files: tuple[Path, ...]  # every file written, sorted
    html: Path | None
    rows: tuple[Row, ...]  # one per model (and protocol)
    notes: tuple[str, ...]  # partial results, skipped figures
    failed: tuple[dict[str, Any], ...]  # failed trials, as the store returns them
    # Every pair of models: differences with 95% intervals (report.compare); empty when
    # neither csv nor html was asked for.
    comparisons: tuple[Comparison, ...] = ()
    # Per model with two or more seeds: its seeds' averaged predictions (report.ensemble).
    ensembles: tuple[Ensemble, ...] = ()
    # A study with training sizes: the learning curve (report.curves); else None.
    curve: LearningCurve | None = None
    # Replicates of the paired bootstrap behind ``comparisons`` (0: none drawn).
    bootstrap_replicates: int = 0
    # The folder's files were drawn from the same results and options: kept, not redrawn.
    reused: bool = False


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = [f.strip().lower() for f in items if f.strip()]
    unknown = sorted(set(chosen) - set(FORMATS))
    if unknown or not chosen:
        raise ReportError(f"unknown report format(s) {unknown or chosen}; "
                          f"choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in chosen)


def skipped_notes(run: RunData) -> list[str]:
    """Undecodable image files the study left out (``on_bad_image: skip``): a reader must see
    that the numbers are over fewer images than the source holds."""
    skipped = (run.meta.get("data") or {}).get("skipped") or []
    if not skipped:
        return []
    files = [s.get("file", "?") if isinstance(s, dict) else str(s) for s in skipped]
    shown = ", ".join(files[:5]) + (f" (and {len(files) - 5} more)" if len(files) > 5 else "")
    return [f"{len(files)} undecodable image file(s) were skipped (listed in "
            f"skipped_images.csv): {shown}"]


def precision_notes(run: RunData) -> list[str]:
    """What ``amp: auto`` chose per model (lightlayers.precision): numbers trained in bf16 and
    in float32 are not the same numbers, so the page says which these are."""
    out = []
    for g in run.groups:
        chosen = [str(p["chosen"]) for t in g.done
                  if isinstance(p := ((t.get("extra") or {}).get("speed") or {})
                                .get("precision"), dict) and p.get("chosen")]
        if chosen:
            counts = ", ".join(f"{c} ({chosen.count(c)} of {len(g.done)} seeds)"
                               for c in dict.fromkeys(chosen))
            out.append(f"{g.label}: amp auto trained in {counts}")
    return out


def ledger_notes(run: RunData) -> list[str]:
    """How many distinct settings the test split of the run's data has been scored under
    (lightlayers.ledger, read from the cache, not the run folder: it counts every folder)."""
    from lightlayers.ledger import ledger_sentence

    sentence = ledger_sentence(run.meta.get("data_fingerprint"))
    return [sentence] if sentence else []


def pooled_notes(run: RunData) -> list[str]:
    """Where a pooled report's trials come from (report.pool), so a reader can find them."""
    if not run.sources:
        return []
    seeds = "; ".join(f"{g.label}: seeds {', '.join(map(str, g.seeds))}" for g in run.groups)
    return [f"pooled from {len(run.sources)} run folders of one study "
            f"({', '.join(map(str, run.sources))}); {seeds}"]


def pooled_results_csv(run: RunData) -> str:
    """A pooled report's ``results.csv``: one row per trial, the columns of a run folder's
    ``results.csv`` plus the folder each trial ran in."""
    from lightlayers.runfolder.results_csv import results_csv_text

    # A study with training sizes: every size's trials, not only the tables' size.
    done = run.curve or [t for g in run.groups for t in g.done]
    trials = done + run.failed + run.unfinished
    return results_csv_text(trials, extra_columns=("run_dir",))


def write_report(
    run_dir: str | Path | RunData,
    formats: str | Sequence[str] = FORMATS,
    console: bool = True,
    out_dir: str | Path | None = None,
    *,
    columns: str | None = None,
    console_style: str = "table",
    failures_shown: bool = False,
    progress: bool = False,
    reach: str | None = None,
    cam_min_side: int | None = None,
    reuse: bool = False,
) -> ReportResult:
    """Write ``RUN_DIR/report/`` (or ``out_dir``): ``table.csv``, ``comparisons.csv`` (every
    pair of models: differences with 95% intervals), ``ensembles.csv`` (models with two or
    more seeds: their seeds' averaged predictions), ``table.md``, ``figures/*.png|svg`` and
    ``report.html`` (those of ``formats``), and print the table when ``console``: the
    ``columns`` of :func:`lightlayers.report.table.console_columns`, as plain text or, with
    ``console_style`` "csv", as CSV. ``failures_shown``: the caller printed each failed trial
    already (``lightlayers run``'s progress), so the console leaves them out. ``progress``: one
    line on stderr for each step that takes seconds (reading, bootstrap, figures). ``reach``:
    a study with training sizes also gets ``learning_curve.csv``, its figures and a section
    of the page; ``reach`` (``METRIC[:X,...]``, :func:`lightlayers.report.curves.parse_reach`)
    chooses the score and levels of its "smallest training set" table.
    ``cam_min_side``: the Grad-CAM figures' smallest map side (default 7). ``reuse``: a run
    folder's report drawn from the same trials and options (report.source) is kept as it is.

    Safe on a partial run: failed and unfinished trials are listed, models with fewer seeds
    marked. Raises :class:`ReportError` when the folder holds no results. Re-running on an
    unchanged folder writes byte-identical files. ``run_dir`` may also be a
    :class:`RunData` already read, e.g. several folders pooled by
    :func:`lightlayers.report.pool.pool_runs`; the pooled report adds ``results.csv`` (one row
    per trial and the folder it ran in).

    Example:
        >>> result = write_report("runs/study", formats=("html", "csv"))
        >>> result.html
        PosixPath('runs/study/report/report.html')
    """
    fmts = parse_formats(formats)
    say = Steps(progress)
    if console and console_style not in CONSOLE_STYLES:
        raise ReportError(f"unknown console style {console_style!r}; choose "
                          f"{' or '.join(CONSOLE_STYLES)}")
    if not isinstance(run_dir, RunData):
        say(f"reading {run_dir}")
    try:
        run = run_dir if isinstance(run_dir, RunData) else load_run(run_dir)
    finally:
        say(None)
    rows = build_rows(run)
    from lightlayers.report.curves import parse_reach

    parse_reach(reach)  # a mistyped --reach fails before anything is written
    if console:
        console_columns(columns, rows)  # a mistyped column fails before anything is written
    notes = (pooled_notes(run) + partial_notes(run) + skipped_notes(run) + ledger_notes(run)
             + precision_notes(run) + [settings_sentence(run.meta)])
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    from lightlayers.deploy.graph import CAM_MIN_SIDE
    from lightlayers.report import source

    # The default spelled out or left out draws the same report.
    cam_min_side = CAM_MIN_SIDE if cam_min_side is None else cam_min_side
    want = None if run.sources else source.digest(
        run, fmts, {"cam_min_side": cam_min_side, "reach": reach})
    prior = source.unchanged(out, want) if reuse and want else None
    if prior is not None:
        html = out / "report.html"
        result = ReportResult(out, tuple(sorted(out / f for f in prior["files"])),
                              html if "report.html" in prior["files"] else None, tuple(rows),
                              tuple(str(n) for n in prior.get("notes", [])),
                              tuple(run.failed), reused=True)
    else:
        with report_folder(run, out, out_dir is None) as folder:
            try:
                result = _write(run, rows, notes, fmts, folder, say, cam_min_side, reach=reach)
            finally:
                say(None)
            if want:
                files = sorted(p.relative_to(folder.path).as_posix() for p in result.files)
                folder.write(source.SOURCE_FILE, json.dumps(
                    {"digest": want, "files": files, "notes": list(result.notes)}, indent=1))
    if console:
        where = f"{len(run.sources)} run folders pooled" if run.sources else str(run.run_dir)
        shown = [n for n in result.notes if not (failures_shown and n in failure_notes(run))]
        print_table(list(result.rows), shown, f"{where}: {len(rows)} model(s)",
                    columns_spec=columns, style=console_style)
    return result


CONSOLE_STYLES = ("table", "csv")


# A step that ends sooner says nothing: a quick report, or a quick error, stays quiet.
STEP_DELAY_S = 1.5


class Steps:
    """``say(text)``: the step ``text`` begins (and the one before ends); ``say(None)``: the
    last one ended. A step still running after :data:`STEP_DELAY_S` gets one line on stderr,
    so that a report never sits silent for seconds."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._timer: threading.Timer | None = None

    def __call__(self, text: str | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.enabled and text:
            self._timer = threading.Timer(STEP_DELAY_S, _announce, (text,))
            self._timer.daemon = True
            self._timer.start()


def _announce(text: str) -> None:
    print(f"report: {text} ...", file=sys.stderr, flush=True)


def report_folder(run: RunData, out: Path, default: bool) -> OutputFolder:
    """The folder a report goes to, owned (lightlayers.outputs): a run folder's own
    ``report/``, or a new, empty or earlier report folder given with ``--out`` that is none of
    the run folders read and lies inside none of them."""
    if not run.sources and Path(out).absolute() == Path(run.run_dir).absolute() / "report":
        default = True  # --out RUN/report is the default spelled out
    inputs = () if default else (run.sources or (run.run_dir,))
    return OutputFolder(out, "report", inputs=inputs,
                        adopt=_adopt_run_report if default else None,
                        what="report folder" if default else "report folder (--out)")


def _adopt_run_report(folder: Path) -> set[str] | None:
    """``RUN/report`` written before report folders carried a manifest: the files a report
    writes are adopted by name (figures included: the run folder is this tool's); anything
    else in it stays untouched."""
    from lightlayers.runfolder.layout import is_run_folder

    if folder.name != "report" or not is_run_folder(folder.parent):
        return None
    names = {n for n in _REPORT_FILES
             if (folder / n).is_file() and not (folder / n).is_symlink()}
    figures = folder / "figures"
    if figures.is_dir() and not figures.is_symlink():
        names |= {f"figures/{p.name}" for p in figures.iterdir()
                  if p.suffix[1:] in FIGURE_FORMATS and p.is_file() and not p.is_symlink()}
    return names


_REPORT_FILES = ("table.csv", "table.md", "comparisons.csv", "ensembles.csv", "report.html",
                 "results.csv", "learning_curve.csv")


def _write(run: RunData, rows: list[Row], notes: list[str], fmts: tuple[str, ...],
           folder: OutputFolder, say: Callable[[str | None], None],
           cam_min_side: int | None = None,
           reach: str | None = None) -> ReportResult:
    out = folder.path
    written: list[Path] = []

    def put(path: Path, data: bytes | str) -> None:
        written.append(folder.write(path.relative_to(out).as_posix(), data))

    comparisons: list[Comparison] = []
    n_boot = 0
    if {"csv", "html"} & set(fmts):
        from lightlayers.report.compare import comparisons_csv, pairwise

        say("bootstrap intervals of the differences between models")
        comparisons, compare_notes, n_boot = pairwise(run)
        notes += compare_notes
    page_comparisons = list(comparisons)
    if "html" in fmts and comparisons:
        # The page's summary also names the models tied on balanced accuracy; comparisons.csv
        # keeps its two scores.
        page_comparisons += pairwise(run, n_boot, which=("balanced_accuracy",))[0]
    from lightlayers.report.ensemble import ensembles, ensembles_csv

    seed_ensembles, ensemble_notes = ensembles(run)
    notes += ensemble_notes
    curve = None
    if run.curve:
        from lightlayers.report.curves import learning_curve

        say("the learning curve")
        curve = learning_curve(run, reach)
    if "csv" in fmts:
        put(out / "table.csv", table_csv(rows))
        if curve is not None:
            from lightlayers.report.curves import curve_csv

            put(out / "learning_curve.csv", curve_csv(curve))
        put(out / "comparisons.csv", comparisons_csv(comparisons, n_boot))
        if seed_ensembles:
            put(out / "ensembles.csv", ensembles_csv(seed_ensembles))
    figure_notes: list[str] = []
    html_path = None
    if {"png", "svg", "html"} & set(fmts):
        from lightlayers.report import figures as F

        say("drawing the figures")
        specs, figure_notes = F.build_figures(run, rows, seed_ensembles, cam_min_side)
        if curve is not None:
            from lightlayers.report.curves import curve_figures

            specs += curve_figures(curve)
        fig_dir = out / "figures"
        png: dict[str, bytes] = {}
        for spec in specs:
            for fmt in FIGURE_FORMATS:
                if fmt in fmts or (fmt == "png" and "html" in fmts):
                    data = F.render(spec.figure, fmt)
                    if fmt == "png":
                        png[spec.name] = data
                    if fmt in fmts:
                        put(fig_dir / f"{spec.name}.{fmt}", data)
        # Figures of an earlier report that this one no longer draws (e.g. renamed models)
        # would otherwise sit next to the current ones looking current; only figures this
        # tool wrote are removed.
        for fmt in FIGURE_FORMATS:
            if fmt in fmts:
                current = {f"figures/{s.name}.{fmt}" for s in specs}
                for old in list(folder.owned("figures/", (f".{fmt}",))):
                    if old not in current:
                        folder.remove(old)
        if "html" in fmts:
            from lightlayers.report.html import page

            html_path = out / "report.html"
            section = ""
            if curve is not None:
                from lightlayers.report.curves import curve_html

                section = curve_html(curve, [s for s in specs if s.section == "curve"], png,
                                     "svg" in fmts)
            put(html_path, page(run, rows, notes + figure_notes, specs, png, "svg" in fmts,
                                page_comparisons, n_boot, seed_ensembles,
                                curve_section=section))
    all_notes = notes + figure_notes
    if "md" in fmts:
        put(out / "table.md", table_markdown(rows, all_notes))
    if "csv" in fmts and run.sources:
        put(out / "results.csv", pooled_results_csv(run))
    return ReportResult(out, tuple(sorted(written)), html_path, tuple(rows), tuple(all_notes),
                        tuple(run.failed), tuple(comparisons), tuple(seed_ensembles),
                        curve=curve, bootstrap_replicates=n_boot)
