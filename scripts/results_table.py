"""The README's results table: both protocols side by side, from the reports' table.csv files.

    python scripts/results_table.py results/seed/table.csv results/improved/table.csv

Prints Markdown: per model, parameters and, for each protocol, accuracy, AUC, sensitivity and
specificity as mean ± std over seeds, with the number of collapsed runs.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def scores() -> list[tuple[str, str]]:
    """(metric, column name) of each score shown: the registry's metrics with a 95% interval
    line in the report (lightlayers.metrics.registry), under their short names."""
    from lightlayers.metrics.registry import ci_metrics

    return [(m.name, m.short or m.ci or m.name) for m in ci_metrics()]


def read(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: run `lightlayers report RUN_DIR` first")
    with open(path, newline="") as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def cell(row: dict[str, str] | None, key: str) -> str:
    if row is None or not row.get(f"{key}_mean"):
        return "—"
    mean, std = float(row[f"{key}_mean"]), row.get(f"{key}_std")
    return f"{mean:.3f} ± {float(std):.3f}" if std else f"{mean:.3f}"


def table(tables: dict[str, dict[str, dict[str, str]]]) -> str:
    models = list(dict.fromkeys(m for t in tables.values() for m in t))
    shown = scores()
    header = ["model", "params"]
    for proto in tables:
        header += [f"{name} ({proto})" for _, name in shown] + [f"collapsed ({proto})"]
    lines = ["| " + " | ".join(header) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in header[2:]) + " |"]
    for m in models:
        rows = {p: t.get(m) for p, t in tables.items()}
        any_row = next(r for r in rows.values() if r is not None)
        cells = [m, f"{int(float(any_row['params_total_mean'])):,}"]
        for r in rows.values():
            cells += [cell(r, k) for k, _ in shown]
            cells.append("—" if r is None else f"{r['collapsed_runs']}/{r['n_seeds']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+", type=Path,
                   help="table.csv files; the protocol is read from each file's rows")
    args = p.parse_args()
    tables: dict[str, dict[str, dict[str, str]]] = {}
    for path in args.tables:
        rows = read(path)
        label = " / ".join(sorted({r["protocol"] for r in rows.values()}))
        if label in tables:
            raise SystemExit(f"{path}: a second table for protocol {label!r}; give one per "
                             "protocol")
        tables[label] = rows
    print(table(tables), end="")


if __name__ == "__main__":
    main()
