"""``lightlayers report RUN_DIR [RUN_DIR ...]``: the table, figures and HTML page of a run folder,
or of several folders of one study pooled."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lightlayers.commands._args import positive_int
from lightlayers.commands._json import json_safe


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightlayers.report.write import FORMATS

    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+",
                   help="run folder written by `lightlayers run`; several folders of one study "
                        "(the same data, settings and protocol, other seeds) are pooled into "
                        "one report, written to --out")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder the report is written to (default: RUN_DIR/report; required "
                        "when pooling several folders)")
    p.add_argument("--format", dest="formats", default=None,
                   help=f"comma-separated outputs (default: all of {','.join(FORMATS)}; with "
                        "--json csv,md, which draw no figures)")
    add_console_arguments(p)
    p.add_argument("--cam-min-side", type=positive_int, default=None, metavar="N",
                   help="Grad-CAM figures draw the last layer whose map is at least N x N "
                        "over the image, else say so in one line (default: 7)")
    p.add_argument("--reach", metavar="METRIC[:X,...]", default=None,
                   help="a study with training sizes: the score (accuracy, balanced_accuracy, "
                        "auc) and levels of the table 'smallest training set at which each "
                        "model reaches X' (default: accuracy at 90%%, 95%% and 99%% of the "
                        "best mean)")
    p.add_argument("--quiet", action="store_true",
                   help="do not print the table or the progress lines")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object to stdout instead of the table: per model its "
                        "seeds, collapsed runs and each metric's mean, std, 95%% CI and n; the "
                        "files written; the notes")


def add_console_arguments(p: argparse.ArgumentParser) -> None:
    """--columns and --console: what the table printed to the terminal shows (report and run
    share them). Not --format, which names the files a report writes."""
    from lightlayers.report.table import CONSOLE_DEFAULT

    p.add_argument("--columns", metavar="all|NAME,...", default=None,
                   help="columns of the printed table (default: "
                        f"{', '.join(CONSOLE_DEFAULT)}: means over seeds, fitting 80 columns); "
                        "all: every column of table.md with ± std; or a comma list of metric "
                        "names (e.g. accuracy,auc,total_time_s,seeds)")
    p.add_argument("--console", choices=("table", "csv"), default="table",
                   help="how the table is printed to stdout: table (plain text, also when "
                        "piped) or csv (the chosen columns' mean, std, 95%% CI and n; notes go "
                        "to stderr); the files written are chosen by --format")


def main(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.report import ReportError, write_report

    if len(args.run_dirs) > 1 and args.out is None:
        raise CliError(f"pooling {len(args.run_dirs)} run folders writes a report of its own: "
                       "pass --out DIR")
    try:
        if not args.quiet and not args.json:
            from lightlayers.report.table import console_columns

            console_columns(args.columns, [])  # a mistyped column, before any work
        if len(args.run_dirs) > 1:
            from lightlayers.report.pool import pool_runs
            from lightlayers.report.write import Steps

            say = Steps(not args.quiet)
            say(f"reading {len(args.run_dirs)} run folders")
            try:
                run: Any = pool_runs(args.run_dirs)
            finally:
                say(None)
        else:
            run = args.run_dirs[0]
        from lightlayers.report.write import FORMATS

        formats = args.formats or ("csv,md" if args.json else ",".join(FORMATS))
        result = write_report(run, formats=formats, out_dir=args.out,
                              console=not args.quiet and not args.json, columns=args.columns,
                              console_style=args.console, progress=not args.quiet,
                              cam_min_side=args.cam_min_side,
                              reach=args.reach)
    except ReportError as e:
        raise CliError(str(e)) from e
    where = result.html or result.out_dir
    print(f"report: {len(result.files)} files in {result.out_dir}"
          + (f"; open {where}" if result.html else ""), file=sys.stderr)
    if args.json:
        print(json.dumps(json_safe(report_object(result)), indent=2, allow_nan=False))
    return 0


def report_object(result: Any) -> dict[str, Any]:
    """What ``report --json`` prints: the table's numbers, unformatted; a study with
    training sizes adds its learning curve (report.curves)."""
    from dataclasses import asdict

    from lightlayers.report.curves import curve_object

    models = []
    for row in result.rows:
        g = row.group
        models.append({
            "label": g.label, "model": g.model, "protocol": g.protocol, "seeds": g.seeds,
            "missing_seeds": g.missing_seeds, "incomplete": g.incomplete,
            "collapsed_runs": row.collapsed, "diagnoses": list(row.diagnoses),
            "metrics": {k: {f: v for f, v in asdict(s).items() if f in _STATS}
                        for k, s in row.stats.items()},
        })
    return {"report_dir": str(result.out_dir), "html": str(result.html) if result.html else None,
            "files": [str(f) for f in result.files], "models": models,
            "notes": list(result.notes),
            "comparisons": [{**asdict(c), "interval_excludes_zero": c.real}
                            for c in result.comparisons],
            "bootstrap_replicates": result.bootstrap_replicates,
            "ensembles": [{"model": e.group.model, "protocol": e.group.protocol,
                           "seeds": list(e.seeds), "params_total": e.params_total,
                           "size_mb": e.size_mb, "threshold": e.threshold,
                           "member_mean_accuracy": e.member_accuracy, "metrics": e.metrics}
                          for e in result.ensembles],
            "learning_curve": None if result.curve is None else curve_object(result.curve),
            "failed": [{"model": t["model"], "seed": t["seed"], "protocol": t["protocol"],
                        "error": t.get("error")} for t in result.failed]}


_STATS = ("mean", "std", "ci_low", "ci_high", "n")
