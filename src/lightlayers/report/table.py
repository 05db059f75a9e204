"""The comparison table: one row per model, metrics as mean ± std over seeds.

Written as ``table.csv`` (mean, std, 95% CI, n per metric: for further analysis) and
``table.md`` (formatted, with notes on partial results), and printed with rich.
"""

from __future__ import annotations

import difflib
import io
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TextIO

from lightlayers import csvsafe
from lightlayers.metrics import DIAGNOSIS
from lightlayers.metrics.registry import (
    Metric,
    chart_metrics,
    ci_metrics,
    get_metric,
    table_metrics,
    trial_metrics,
)
from lightlayers.report.load import Group, ReportError, RunData, sized_model
from lightlayers.report.stats import Summary, summarize


def columns(rows: Sequence[Row] | None = None) -> tuple[Metric, ...]:
    """The table's metric columns: the registry's metrics with a ``header``, in their order
    (the study's columns first, DESIGN.md §1, then what we add). Given ``rows``, an
    ``optional`` metric that none of them recorded (deployment numbers of a study that did
    not measure them) is left out."""
    cols = table_metrics()
    if rows is None:
        return cols
    return tuple(c for c in cols
                 if not c.optional or any(r.stats[c.name].mean is not None for r in rows))


def headers(rows: Sequence[Row] | None = None) -> tuple[str, ...]:
    return ("Model", *(str(c.header) for c in columns(rows)), "Seeds", "Collapsed runs")


def ci_keys() -> tuple[tuple[str, str], ...]:
    """(metric, name in the text) of the scores with a 95% interval line."""
    return tuple((m.name, str(m.ci)) for m in ci_metrics())



MISSING = "—"
DIAGNOSED = "†"  # after a collapsed-runs count whose trials have a diagnosis below the table


@dataclass(frozen=True)
class Row:
    group: Group
    stats: dict[str, Summary]
    collapsed: int
    # Why some trials collapsed or stayed near chance, one line per distinct diagnosis.
    diagnoses: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.group.label

    def cells(self, marker: str = "*", cols: Sequence[Metric] | None = None) -> list[str]:
        """Formatted cells in :func:`headers` order (of ``cols``, default every column); an
        incomplete model's name gets ``marker``."""
        name = self.label + (marker if self.group.incomplete else "")
        cells = [name]
        for c in columns() if cols is None else cols:
            cells.append(format_cell(self.stats[c.name], c))
        cells += [str(len(self.group.done)),
                  str(self.collapsed) + (f" {DIAGNOSED}" if self.diagnoses else "")]
        return cells


def format_cell(s: Summary, col: Metric) -> str:
    if s.mean is None:
        return MISSING
    text = col.fmt(s.mean)
    if s.std is not None and (col.spread or s.std > 0):
        text += f" ± {col.fmt(s.std)}"
    return text


def build_rows(run: RunData) -> list[Row]:
    return [
        Row(g, {m.name: clipped(summarize(t.get(m.name) for t in g.done), m)
                for m in _summarized()},
            sum(1 for t in g.done if t.get("collapsed")), group_diagnoses(g))
        for g in run.groups
    ]


def clipped(s: Summary, m: Metric) -> Summary:
    """``s`` with its 95% interval clipped to [0, 1] when ``m`` is a score of the test
    predictions (a fraction): with 2 or 3 seeds the raw t-interval can reach past 1, which no
    score can. Clipped here, once, so table.csv, table.md, the page, the console and --json
    all give the same interval."""
    if m.compute is None or m.type is not float or s.ci_low is None or s.ci_high is None:
        return s
    return replace(s, ci_low=min(1.0, max(0.0, s.ci_low)), ci_high=max(0.0, min(1.0, s.ci_high)))


# Fewer seeds than this give a t-interval too wide to say much (t = 12.7 at 2 seeds).
FEW_SEEDS = 3


def _summarized() -> tuple[Metric, ...]:
    """The metrics a row summarizes: the table's columns, then any other metric with a chart,
    an interval line or a column of the console's table."""
    console = tuple(get_metric(k) for k in CONSOLE_DEFAULT
                    if k in _metric_names() and k not in ("seeds", "collapsed"))
    return tuple({m.name: m for m in (*columns(), *chart_metrics(), *ci_metrics(),
                                      *console)}.values())


def _metric_names() -> set[str]:
    return {m.name for m in trial_metrics()}


def group_diagnoses(g: Group) -> tuple[str, ...]:
    """``"<model> seeds 0, 1 (collapsed): <diagnosis>"`` per distinct diagnosis recorded with
    the group's trials (``train.fit`` notes starting with ``diagnosis: ``)."""
    seeds: dict[str, list[tuple[int, bool]]] = {}
    for t in g.done:
        for note in (t.get("extra") or {}).get("notes") or []:
            if isinstance(note, str) and note.startswith(DIAGNOSIS):
                seeds.setdefault(note[len(DIAGNOSIS):], []).append(
                    (t["seed"], bool(t.get("collapsed"))))
    lines = []
    for text, runs in seeds.items():
        which = ", ".join(str(s) for s, _ in runs)
        collapsed = sum(c for _, c in runs)
        flag = (" (collapsed)" if collapsed == len(runs)
                else f" ({collapsed} collapsed)" if collapsed else "")
        lines.append(f"{g.label} seed{'s' if len(runs) > 1 else ''} {which}{flag}: {text}")
    return tuple(lines)


def diagnosis_lines(rows: list[Row]) -> list[str]:
    return [d for r in rows for d in r.diagnoses]


def settings_sentence(meta: dict[str, Any]) -> str:
    """Where the models' training settings came from: the protocol's one recipe for every
    model, or each model's best from `lightlayers tune` (the same search for every model)."""
    src = meta.get("settings_source") or {}
    if src.get("kind") != "tuned":
        return "settings: fixed recipe"
    decided = ("; EMA, TTA, epochs and threshold decided on the same folds"
               if src.get("decisions_made") else "")
    return (f"settings: tuned (budget {src.get('budget')}, {src.get('folds')} folds, "
            f"{src.get('objective')}{decided}) from {src.get('folder')}")


def partial_notes(run: RunData) -> list[str]:
    """Plain sentences on what is missing: incomplete models, failed and unfinished trials."""
    notes = []
    for g in run.groups:
        if not g.incomplete:
            continue
        missing = ", ".join(str(s) for s in g.missing_seeds) or "none planned"
        planned = max(run.max_seeds, len(g.planned_seeds))
        notes.append(f"{g.label}: {len(g.done)} of {planned} seeds finished "
                     f"(missing seeds: {missing})")
    notes += failure_notes(run)
    if run.unfinished:
        notes.append(f"{len(run.unfinished)} trial(s) not finished yet (pending or running): "
                     + ", ".join(f"{sized_model(t)} seed {t['seed']}" for t in run.unfinished))
    return notes


def failure_notes(run: RunData) -> list[str]:
    """One sentence per failed trial: which, and the last line of its error."""
    notes = []
    for t in run.failed:
        error = (t.get("error") or "no error recorded").strip().splitlines() or [""]
        notes.append(f"failed: {sized_model(t)} seed {t['seed']} ({t['protocol']}): "
                     f"{error[-1]}")
    return notes


# --- files --------------------------------------------------------------------------------
CSV_STATS = ("mean", "std", "ci95_low", "ci95_high", "n")


def table_csv(rows: list[Row], cols: Sequence[Metric] | None = None) -> str:
    """``table.csv``: per model its seeds and, per metric of ``cols`` (default: the table's
    columns), mean, std, 95% interval and n, unrounded."""
    header = ["model", "protocol", "seeds", "n_seeds", "incomplete", "collapsed_runs"]
    cols = columns(rows) if cols is None else cols
    for c in cols:
        header += [f"{c.name}_{s}" for s in CSV_STATS]
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        g = r.group
        line: list[Any] = [g.model, g.protocol, " ".join(str(s) for s in g.seeds),
                           len(g.done), int(g.incomplete), r.collapsed]
        for c in cols:
            s = r.stats[c.name]
            line += [_num(s.mean), _num(s.std), _num(s.ci_low), _num(s.ci_high), s.n]
        w.writerow(line)
    return buf.getvalue()


def _num(v: float | None) -> str:
    # repr of a float round-trips exactly: the CSV holds the numbers, not a rounding of them.
    return "" if v is None else repr(float(v))


def table_markdown(rows: list[Row], notes: list[str]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    heads, cols = headers(rows), columns(rows)
    out = [line(list(heads)),
           "| " + " | ".join(["---"] + ["---:"] * (len(heads) - 1)) + " |"]
    out += [line(r.cells(cols=cols)) for r in rows]
    out.append("")
    out.append("Metrics are mean ± sample standard deviation over seeds (95% CI in table.csv). "
               "Accuracy etc. on the test split; times are wall clock.")
    few = sorted({len(r.group.done) for r in rows if 2 <= len(r.group.done) < FEW_SEEDS})
    if few:
        out.append("")
        out.append(f"With {' or '.join(map(str, few))} seeds (n < {FEW_SEEDS}) the 95% intervals "
                   "in table.csv are wide: the t quantile alone is 12.7 at n=2. Intervals of "
                   "scores are clipped to [0, 1].")
    if any(r.group.incomplete for r in rows):
        out.append("")
        out.append("\\* fewer finished seeds than planned or than the other models.")
    if diagnosis_lines(rows):
        out.append("")
        out.append(f"{DIAGNOSED} Diagnosis of collapsed or near-chance trials:")
        out.append("")
        out += [f"- {d}" for d in diagnosis_lines(rows)]
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def ci_lines(rows: list[Row]) -> list[str]:
    """Per model with two or more seeds: a line naming it and its seeds (marked when fewer
    than 3: the interval is wide), then one line per key score with mean ± std and the 95%
    t-interval (clipped to [0, 1] by :func:`clipped`). Every line fits 80 columns."""
    lines = []
    for r in rows:
        parts = []
        for key, name in ci_keys():
            st = r.stats[key]
            if st.n >= 2 and st.std is not None and st.ci_low is not None \
                    and st.ci_high is not None:
                parts.append(f"    {name:<12s} {st.mean:.4f} ± {st.std:.4f}  "
                             f"[{st.ci_low:.4f}, {st.ci_high:.4f}]")
        if parts:
            n = len(r.group.done)
            wide = f" (n={n}: interval wide)" if n < FEW_SEEDS else ""
            lines.append(f"  {r.label}, {n} seeds{wide}")
            lines += parts
    return lines


# --- console ------------------------------------------------------------------------------
# The console's default columns: what a reader compares models by, under short headers, so
# that the table fits an 80-column terminal. Every other column: --columns all or a list.
CONSOLE_HEADERS = {"params_total": "Params", "accuracy": "Acc", "balanced_accuracy": "BalAcc",
                   "auc": "AUC", "sensitivity": "Sens", "specificity": "Spec", "ece": "ECE",
                   "seeds": "Seeds", "collapsed": "Coll."}
CONSOLE_DEFAULT = tuple(CONSOLE_HEADERS)
CONSOLE_LEGEND = ("Params total parameters; Acc accuracy; BalAcc balanced accuracy; Sens "
                  "sensitivity; Spec specificity; ECE expected calibration error (lower is "
                  "better); Coll. collapsed runs. Scores are means over seeds on the test "
                  "split; `--columns all` shows every column with ± std.")
CONSOLE_WIDTH = 80


@dataclass(frozen=True)
class ConsoleColumn:
    key: str
    header: str
    cell: Callable[[Row], str]


def console_keys(rows: Sequence[Row]) -> tuple[str, ...]:
    """What ``--columns`` accepts besides ``all``: the summarized metrics, seeds, collapsed."""
    names = [m.name for m in _summarized()
             if (any(m.name in r.stats for r in rows) or not rows) and m.name != "collapsed"]
    return (*names, "seeds", "collapsed")


def console_columns(spec: str | None, rows: Sequence[Row]) -> list[ConsoleColumn]:
    """The columns ``--columns SPEC`` asks for: None or "default" the compact default set
    (means, 3 decimals), "all" every table column plus balanced accuracy, or a comma list of
    :func:`console_keys`; the last two show mean ± std as table.md does."""
    text = (spec or "default").strip().lower()
    if text == "default":
        return [_compact(k) for k in CONSOLE_DEFAULT]
    if text == "all":
        metrics = list(columns(rows))
        if not any(m.name == "balanced_accuracy" for m in metrics):
            at = next((i + 1 for i, m in enumerate(metrics) if m.name == "accuracy"),
                      len(metrics))
            metrics.insert(at, get_metric("balanced_accuracy"))
        keys = [m.name for m in metrics] + ["seeds", "collapsed"]
    else:
        # The default table's short headers name their columns too (acc, sens, coll).
        alias = {h.lower().rstrip("."): k for k, h in CONSOLE_HEADERS.items()}
        keys = [alias.get(k.strip(), k.strip()) for k in text.split(",") if k.strip()]
        valid = console_keys(rows)
        for k in keys:
            if k not in valid:
                close = difflib.get_close_matches(k, valid, n=3)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ReportError(f"--columns: unknown column {k!r}; {hint}choose all, default "
                                  f"or a comma list of {', '.join(valid)}")
        if not keys:
            raise ReportError("--columns: give all, default or a comma list of column names")
    return [_full(k) for k in keys]


def _compact(key: str) -> ConsoleColumn:
    if key in ("seeds", "collapsed"):
        return _full(key, CONSOLE_HEADERS[key])
    metric = get_metric(key)

    def cell(r: Row) -> str:
        mean = r.stats[key].mean
        if mean is None:
            return MISSING
        return _count(mean) if metric.type is int else f"{mean:.3f}"

    return ConsoleColumn(key, CONSOLE_HEADERS[key], cell)


def _full(key: str, header: str | None = None) -> ConsoleColumn:
    if key == "seeds":
        return ConsoleColumn(key, header or "Seeds", lambda r: str(len(r.group.done)))
    if key == "collapsed":
        return ConsoleColumn(key, header or "Collapsed runs",
                             lambda r: str(r.collapsed) + (f" {DIAGNOSED}" if r.diagnoses
                                                           else ""))
    m = get_metric(key)
    label = m.label.removeprefix("Test ")
    return ConsoleColumn(key, header or m.header or label[:1].upper() + label[1:] or key,
                         lambda r: format_cell(r.stats[key], m))


def _count(v: float) -> str:
    """A count in at most 6 characters: 18,818; 235.1k; 21.8M."""
    if v < 100_000:
        return f"{v:,.0f}"
    if v < 1_000_000:
        return f"{v / 1e3:.1f}k"
    return f"{v / 1e6:.1f}M"


def plain_table(heads: Sequence[str], body: Sequence[Sequence[str]],
                width: int = CONSOLE_WIDTH) -> list[str]:
    """Fixed-width text lines: first column left-aligned, the others right-aligned, a dashed
    line under the headers. Cells are never cut or wrapped (a number cut to "0.9…" misleads);
    the gap between columns narrows to one space when two would pass ``width``."""
    widths = [max(len(c) for c in col) for col in zip(heads, *body, strict=True)]
    gap = "  " if sum(widths) + 2 * (len(widths) - 1) <= width else " "

    def line(cells: Sequence[str]) -> str:
        return gap.join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(heads), line(["-" * w for w in widths]), *(line(b) for b in body)]


def print_table(rows: list[Row], notes: list[str], title: str, *, columns_spec: str | None = None,
                style: str = "table", stream: TextIO | None = None,
                notes_stream: TextIO | None = None) -> None:
    """The table on the console: ``style`` "table", plain fixed-width text (the same on a
    terminal and in a pipe), or "csv", table.csv's rows of the chosen columns (the notes then
    go to ``notes_stream``, stderr by default, so that stdout stays one CSV)."""
    out = stream or sys.stdout
    cols = console_columns(columns_spec, rows)
    if style == "csv":
        metrics = [get_metric(c.key) for c in cols if c.key not in ("seeds", "collapsed")]
        out.write(table_csv(rows, metrics))
        out = notes_stream or sys.stderr
    else:
        body = [[r.label + ("*" if r.group.incomplete else "")] + [c.cell(r) for c in cols]
                for r in rows]
        print(title, file=out)
        for line in plain_table(["Model", *(c.header for c in cols)], body):
            print(line, file=out)
        if (columns_spec or "default").strip().lower() == "default":
            for line in textwrap.wrap(CONSOLE_LEGEND, CONSOLE_WIDTH):
                print(line, file=out)
        if any(r.group.incomplete for r in rows):
            print("* fewer finished seeds than planned or than the other models", file=out)
    summary = ci_lines(rows)
    if summary:
        print("Across seeds: mean ± sample std [95% Student-t interval, clipped to 0..1]",
              file=out)
        for line in summary:
            print(line, file=out)
    diagnoses = diagnosis_lines(rows)
    if diagnoses:
        print(f"{DIAGNOSED} Diagnosis of collapsed or near-chance trials:", file=out)
        for d in diagnoses:
            print(_wrapped(d), file=out)
    for n in notes:
        print(_wrapped(n), file=out)


def _wrapped(text: str) -> str:
    """A note as lines of at most 80 columns, indented under its first."""
    return "\n".join(textwrap.wrap(text, CONSOLE_WIDTH, initial_indent="  ",
                                   subsequent_indent="    ", break_long_words=False,
                                   break_on_hyphens=False))
