"""``lightlayers report RUN_DIR``: the table, figures and HTML page of a run folder."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightlayers.report.write import FORMATS

    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by `lightlayers run`")
    p.add_argument("--format", dest="formats", default=",".join(FORMATS),
                   help=f"comma-separated outputs (default: all of {','.join(FORMATS)})")
    p.add_argument("--quiet", action="store_true", help="do not print the table")


def main(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.report import ReportError, write_report

    try:
        result = write_report(args.run_dir, formats=args.formats, console=not args.quiet)
    except ReportError as e:
        raise CliError(str(e)) from e
    where = result.html or result.out_dir
    print(f"report: {len(result.files)} files in {result.out_dir}"
          + (f"; open {where}" if result.html else ""), file=sys.stderr)
    return 0
