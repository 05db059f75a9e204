"""``lightlayers data``: list the dataset short names, summarise a dataset, or show how often
its test split has been scored (the test-split ledger)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DATA_SETTINGS = ("size", "in_chans", "resize", "val_fraction", "on_bad_image",
                 "allow_missing_classes")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightlayers.config import StudyConfig
    from lightlayers.schema import add_flags

    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lst = sub.add_parser("list", help="the dataset short names", description="the short names")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")

    s = sub.add_parser(
        "summary",
        help="splits, classes, counts, size, duplicates, cache",
        description="Load SOURCE (decoding and caching it on first use) and describe it.",
    )
    s.add_argument("source", help="a path (folder, .tar.gz/.tgz/.zip, .npz, IDX folder, CSV "
                   "manifest: labels.csv or labels.csv#label=COLUMN,...) or name")
    s.add_argument("--resplit", type=float, default=None, metavar="F", help="pool and re-split")
    s.add_argument("--seed", type=int, default=0, metavar="N")
    s.add_argument("--patient-pattern", default=None, metavar="REGEX")
    s.add_argument("--no-patient-grouping", action="store_true")
    # The settings a study decodes its data with: the same declarations, rules and defaults.
    add_flags(s, StudyConfig, DATA_SETTINGS)
    s.add_argument("--json", action="store_true", help="print one JSON object to stdout")

    led = sub.add_parser(
        "ledger",
        help="how many distinct settings were scored on a test split, and when",
        description="Every trial a study scores on a test split is counted in the test-split "
        "ledger ($LIGHTLAYERS_CACHE/test_ledger.sqlite). Show the settings scored on SOURCE's "
        "test split, or, without SOURCE, every test split in the ledger.",
    )
    led.add_argument("source", nargs="?", default=None,
                     help="a path or name, as for `data summary` (default: every test split)")
    led.add_argument("--resplit", type=float, default=None, metavar="F", help="pool and re-split")
    led.add_argument("--seed", type=int, default=0, metavar="N")
    add_flags(led, StudyConfig, DATA_SETTINGS)
    led.add_argument("--json", action="store_true", help="print one JSON object to stdout")


def main(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        return _list(args)
    if args.data_command == "ledger":
        return _ledger(args)
    return _summary(args)


def _list(args: argparse.Namespace) -> int:
    from lightlayers.data.registry import list_named_sources

    rows = list_named_sources()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "kind": r.kind,
                        "description": r.description,
                        "url": r.url,
                        "md5": r.md5,
                        "classes": list(r.classes),
                        "license": r.license,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dataset short names (a path to your own data works too)")
    for col in ("name", "what", "license"):
        table.add_column(col, no_wrap=col == "name")
    for r in rows:
        table.add_row(r.name, r.description, r.license)
    console = Console()
    console.print(table)
    for r in rows:
        if r.url:
            console.print(f"{r.name}: {r.url} MD5 {r.md5}", soft_wrap=True, markup=False)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.config import ConfigError
    from lightlayers.data import DataError, load_dataset
    from lightlayers.data.splits import DEFAULT_PATIENT_PATTERN

    pattern = (
        None if args.no_patient_grouping else (args.patient_pattern or DEFAULT_PATIENT_PATTERN)
    )
    try:
        opts = settings(args)
        ds = load_dataset(args.source, seed=args.seed, resplit=args.resplit,
                          patient_pattern=pattern, **opts)
    except (DataError, ConfigError) as e:
        raise CliError(str(e)) from e
    summary = ds.summary()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
        return 0
    _print_summary(summary)
    return 0


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The decode settings given as flags, checked by their declarations' rules, the others
    at their declared defaults."""
    from lightlayers.config import StudyConfig
    from lightlayers.schema import check_value

    defaults = StudyConfig()
    return {name: (getattr(defaults, name) if getattr(args, name) is None
                   else check_value(StudyConfig, name, getattr(args, name), ""))
            for name in DATA_SETTINGS}


def _print_summary(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    c, h, w = s["image_size"]
    table = Table(title=f"{s['name']}: {c}x{h}x{w}, {len(s['classes'])} classes")
    # One row per class keeps the table narrow however many classes there are.
    splits = list(s["splits"])
    table.add_column("class")
    for split in (*splits, "total"):
        table.add_column(split, justify="right")
    for name in s["classes"]:
        row = [s["splits"][split][name] for split in splits]
        table.add_row(name, *(f"{n:,}" for n in (*row, sum(row))))
    totals = [sum(s["splits"][split].values()) for split in splits]
    table.add_row("total", *(f"{n:,}" for n in (*totals, sum(totals))), style="bold")
    console.print(table)
    dups = ", ".join(f"{k} {v}" for k, v in s["duplicates"].items())
    console.print(f"duplicates across splits: {dups}")
    within = ", ".join(f"{k} {v}" for k, v in s["duplicates_within"].items())
    console.print(f"duplicates within splits: {within}")
    p = s["patient_grouping"]
    if p:
        for line in _patient_lines(p):
            console.print(line, soft_wrap=True, markup=False, highlight=False)
    else:
        console.print("patient grouping: none")
    if s["positive_class"] is not None:
        console.print(f"positive class: {s['classes'][s['positive_class']]}")
    for split, names in s["missing_classes"].items():
        console.print(f"no images in {split}: {', '.join(names)}", soft_wrap=True, markup=False)
    if s["skipped"]:
        console.print(f"skipped {len(s['skipped'])} unreadable image(s):")
        for row in s["skipped"]:
            console.print(
                f"  {row['file']}: {row['reason']}", soft_wrap=True, markup=False, highlight=False
            )
    console.print(f"cache: {s['cache']}", soft_wrap=True, highlight=False)
    for note in s["notes"]:
        console.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)


def _patient_lines(p: dict[str, Any]) -> list[str]:
    """Patients per split and class, and per pair of splits the patients found in both: 0 by
    construction where this library carved the pair apart, as published elsewhere."""
    lines = [f"patient grouping: {p['pattern']}, {p['patients']:,} patients on "
             f"{p['images_with_id']:,} images"]
    per_split = p.get("per_split") or {}
    if per_split:
        lines.append("patients per split: " + "; ".join(
            f"{split} " + ", ".join(f"{c} {n:,}" for c, n in per_class.items())
            for split, per_class in per_split.items()))
    carved = set(p.get("carved_pairs") or ())
    groups = [(" (carved apart)", [k for k in p["overlap"] if k in carved]),
              (" (not carved: as the source splits them)",
               [k for k in p["overlap"] if k not in carved])]
    lines.append("patients in two splits: " + "; ".join(
        ", ".join(f"{k} {p['overlap'][k]:,}" for k in keys) + why for why, keys in groups if keys))
    return lines


def _ledger(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.config import ConfigError
    from lightlayers.data import DataError, load_dataset
    from lightlayers.ledger import (
        LedgerError,
        ledger_path,
        settings_used,
        split_uses,
        test_fingerprint,
    )

    try:
        if args.source is None:
            uses = split_uses()
            if args.json:
                rows = [u.__dict__ for u in uses]
                json.dump({"ledger": str(ledger_path()), "test_splits": rows}, sys.stdout,
                          indent=2)
                print()
                return 0
            _print_uses(uses)
            return 0
        from lightlayers.fingerprint import data_fingerprint

        ds = load_dataset(args.source, seed=args.seed, resplit=args.resplit, **settings(args))
        test = test_fingerprint(data_fingerprint(ds))
        assert test is not None  # a loaded dataset always has a test split
        uses = split_uses(test)
        used = settings_used(test)
    except (DataError, ConfigError, LedgerError) as e:
        raise CliError(str(e)) from e
    u = uses[0] if uses else None
    record = {"ledger": str(ledger_path()), "data": ds.name, "source": ds.source,
              "test_fingerprint": test, "test_images": len(ds.splits["test"]),
              "settings": u.settings if u else 0, "scores": u.scores if u else 0,
              "first": u.first if u else None, "last": u.last if u else None,
              "settings_scored": used}
    if args.json:
        json.dump(record, sys.stdout, indent=2)
        print()
        return 0
    _print_ledger(record)
    return 0


def _print_ledger(r: dict[str, Any]) -> None:
    from rich.table import Table

    console = _wide_console()
    head = f"test split of {r['data']} ({r['test_images']:,} images, {r['test_fingerprint']})"
    if not r["scores"]:
        console.print(f"{head}: never scored (ledger {r['ledger']})", soft_wrap=True,
                      markup=False, highlight=False)
        return
    console.print(f"{head}: scored under {r['settings']} distinct setting(s), {r['scores']} "
                  f"score(s), first {_when(r['first'])}, last {_when(r['last'])}", soft_wrap=True,
                  markup=False, highlight=False)
    table = Table(title="settings scored on this test split")
    for col in ("settings", "model", "seed", "protocol", "scores", "first", "last", "run"):
        table.add_column(col)
    for row in r["settings_scored"]:
        table.add_row(row["settings"][:12], row["model"], str(row["seed"]), row["protocol"],
                      str(row["scores"]), _when(row["first"]), _when(row["last"]), row["run"])
    console.print(table)


def _print_uses(uses: list[Any]) -> None:
    from rich.table import Table

    from lightlayers.ledger import ledger_path

    console = _wide_console()
    if not uses:
        console.print(f"no test split scored yet (ledger {ledger_path()})", soft_wrap=True,
                      markup=False, highlight=False)
        return
    table = Table(title=f"test splits scored ({ledger_path()})")
    for col in ("data", "test split", "distinct settings", "scores", "first", "last"):
        table.add_column(col)
    for u in uses:
        table.add_row(u.data, u.test, str(u.settings), str(u.scores), _when(u.first),
                      _when(u.last))
    console.print(table)


def _when(iso: str) -> str:
    """A ledger time (ISO, UTC) to the minute."""
    return iso[:16].replace("T", " ") + " UTC"


def _wide_console() -> Any:
    """rich assumes 80 columns when piped, which cuts run folders and hashes: not here."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)
