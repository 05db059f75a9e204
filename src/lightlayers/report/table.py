"""The comparison table: one row per model, metrics as mean ± std over seeds.

Written as ``table.csv`` (mean, std, 95% CI, n per metric: for further analysis) and
``table.md`` (formatted, with notes on partial results), and printed with rich.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightlayers import csvsafe
from lightlayers.metrics import DIAGNOSIS
from lightlayers.metrics.registry import Metric, chart_metrics, ci_metrics, table_metrics
from lightlayers.report.load import Group, RunData
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
        Row(g, {m.name: summarize(t.get(m.name) for t in g.done) for m in _summarized()},
            sum(1 for t in g.done if t.get("collapsed")), group_diagnoses(g))
        for g in run.groups
    ]


def _summarized() -> tuple[Metric, ...]:
    """The metrics a row summarizes: the table's columns, then any other metric with a chart
    or an interval line."""
    return tuple({m.name: m for m in (*columns(), *chart_metrics(), *ci_metrics())}.values())


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
    return (f"settings: tuned (budget {src.get('budget')}, {src.get('folds')} folds, "
            f"{src.get('objective')}) from {src.get('folder')}")


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
    for t in run.failed:
        error = (t.get("error") or "no error recorded").strip().splitlines() or [""]
        notes.append(f"failed: {t['model']} seed {t['seed']} ({t['protocol']}): {error[-1]}")
    if run.unfinished:
        notes.append(f"{len(run.unfinished)} trial(s) not finished yet (pending or running): "
                     + ", ".join(f"{t['model']} seed {t['seed']}" for t in run.unfinished))
    return notes


# --- files --------------------------------------------------------------------------------
CSV_STATS = ("mean", "std", "ci95_low", "ci95_high", "n")


def table_csv(rows: list[Row]) -> str:
    header = ["model", "protocol", "seeds", "n_seeds", "incomplete", "collapsed_runs"]
    cols = columns(rows)
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
    """Per model with two or more seeds: mean ± std and the 95% t-interval of the key scores.

    The interval is clipped to [0, 1], where these scores live: with 2 or 3 seeds the raw
    t-interval can be wider than that (table.csv keeps it unclipped).
    """
    lines = []
    for r in rows:
        parts = []
        for key, name in ci_keys():
            st = r.stats[key]
            if st.n >= 2 and st.std is not None:
                low, high = max(0.0, st.ci_low or 0.0), min(1.0, st.ci_high or 1.0)
                parts.append(f"{name} {st.mean:.4f} ± {st.std:.4f} [{low:.4f}, {high:.4f}]")
        if parts:
            lines.append(f"{r.label} ({len(r.group.done)} seeds): " + "; ".join(parts))
    return lines


def print_table(rows: list[Row], notes: list[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cols = columns(rows)
    cells = [r.cells(cols=cols) for r in rows]
    heads = headers(rows)
    console = Console()
    if not console.is_terminal:
        # rich assumes 80 columns when piped, which folds a 15-column table beyond reading:
        # give it the width it needs (cell, padding and border per column).
        widest = [max(len(c) for c in col) for col in zip(heads, *cells, strict=True)]
        console = Console(width=max(80, sum(widest) + 3 * len(widest) + 1))
    table = Table(title=Text(title), title_justify="left")
    for i, h in enumerate(heads):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in cells:
        # Text, not markup: a label such as "model [improved]" is not a style tag.
        table.add_row(*(Text(c) for c in row))
    console.print(table)
    summary = ci_lines(rows)
    if summary:
        console.print("Across seeds: mean ± sample std [95% confidence interval, Student t, "
                      "within 0-1]",
                      markup=False, highlight=False)
        for line in summary:
            console.print(f"  {line}", markup=False, highlight=False)
    diagnoses = diagnosis_lines(rows)
    if diagnoses:
        console.print(f"{DIAGNOSED} Diagnosis of collapsed or near-chance trials:", markup=False,
                      highlight=False)
        for line in diagnoses:
            console.print(f"  {line}", markup=False, highlight=False)
    for n in notes:
        console.print(f"  {n}", markup=False, highlight=False)
