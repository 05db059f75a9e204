"""``lightlayers models``: the registered models with their parameter counts.

The table for each model's default classes is read from :mod:`._models_table`, written from
the registry by ``python -m lightlayers.commands.models``: listing then imports neither torch
nor torchvision, whose imports took longer than everything else. tests/test_cli_models.py
fails when the stored table differs from what the registry gives. ``--num-classes`` and
``--json`` ask the registry itself, building each model on PyTorch's meta device (shapes
only, no weights).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path
from typing import Any

from lightlayers.commands._args import positive_int

TABLE_FILE = Path(__file__).with_name("_models_table.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'study-*'")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="count the parameters for this many classes (default: each model's)")
    p.add_argument("--json", action="store_true",
                   help="a JSON list instead of the table: per model its counts, description "
                        "and registry defaults")



def table_rows(pattern: str | None = None, num_classes: int | None = None
               ) -> list[tuple[str, int, int, str]]:
    """(name, total, trainable, description) per registered model, from the registry:
    counts of ``create_model(name, num_classes)`` without pretrained weights, Keras
    convention (:func:`lightlayers.count_params`)."""
    from lightlayers.models import list_models, model_info, model_params

    rows = []
    for name in list_models(pattern):
        c = model_params(name, num_classes)
        rows.append((name, c.total, c.trainable, model_info(name).description))
    return rows


def model_row(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """Everything the registry knows of ``name``, with its parameter counts for
    ``num_classes`` (default: the model's own)."""
    from dataclasses import asdict

    from lightlayers.models import model_info, model_options, model_params

    info = model_info(name)
    counts = model_params(name, num_classes)
    preprocess = info.extra.get("preprocess")
    return {
        "name": name, "params_total": counts.total, "params_trainable": counts.trainable,
        "description": info.description, "family": info.family,
        "num_classes": info.num_classes if num_classes is None else num_classes,
        "in_chans": info.in_chans, "input_size": info.input_size,
        "min_input_size": info.min_input_size, "k": info.k,
        "takes_weights": bool(info.extra.get("takes_weights")), "options": model_options(name),
        "preprocess": asdict(preprocess) if preprocess is not None else None,
        "reference": info.reference,
    }


def stored_rows(pattern: str | None = None) -> list[tuple[str, int, int, str]]:
    """The stored table (each model's default classes), filtered like ``list_models``."""
    from lightlayers.commands._models_table import TABLE

    return [r for r in TABLE if pattern is None or fnmatch.fnmatchcase(r[0], pattern)]


def table_source(rows: list[tuple[str, int, int, str]]) -> str:
    """The text of ``_models_table.py`` holding ``rows``."""
    lines = [
        '"""The `lightlayers models` table for each model\'s default classes (see',
        "lightlayers.commands.models). Written by `python -m lightlayers.commands.models`; do not",
        'edit."""',
        "",
        "# name, total and trainable parameters (Keras convention, no pretrained weights),",
        "# description",
        "TABLE: tuple[tuple[str, int, int, str], ...] = (",
        *(f"    ({name!r}, {total}, {trainable},\n     {description!r}),"
          for name, total, trainable, description in rows),
        ")",
        "",
    ]
    return "\n".join(lines)


def no_match(pattern: str) -> str:
    """The error for a pattern that names no model, with the closest names."""
    import difflib

    from lightlayers.commands._models_table import TABLE

    names = [r[0] for r in TABLE]
    close = difflib.get_close_matches(pattern.strip("*?"), names, n=3, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "`lightlayers models` lists them all"
    return f"no model matches {pattern!r}; {hint} (patterns are fnmatch, e.g. 'study-*')"


def main(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError

    if args.pattern is not None and not stored_rows(args.pattern):
        raise CliError(no_match(args.pattern))
    if args.json:
        from lightlayers.models import list_models

        rows = [model_row(n, args.num_classes) for n in list_models(args.pattern)]
        print(json.dumps(rows, indent=2))
        return 0
    if args.num_classes is None:
        table = stored_rows(args.pattern)
    else:
        table = table_rows(args.pattern, args.num_classes)
    print(f"{'model':28s} {'total':>12s} {'trainable':>12s}  description")
    for name, total, trainable, description in table:
        print(f"{name:28s} {total:12,d} {trainable:12,d}  {description}")
    return 0


if __name__ == "__main__":
    TABLE_FILE.write_text(table_source(table_rows()))
    print(f"wrote {TABLE_FILE}")
