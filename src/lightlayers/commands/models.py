from __future__ import annotations

import argparse
import json
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'study-*'")
    p.add_argument("--num-classes", type=_positive_int, default=None,
                   help="count the parameters for this many classes (default: each model's)")
    p.add_argument("--json", action="store_true",
                   help="a JSON list instead of the table: per model its counts, description "
                        "and registry defaults (reads the transfer models' torchvision metadata)")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def model_row(name: str, num_classes: int | None = None) -> dict[str, Any]:
    """Everything the registry knows of ``name``, with its parameter counts (no pretrained
    weights; Keras convention, see :func:`lightlayers.count_params`) for ``num_classes``."""
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


def main(args: argparse.Namespace) -> int:
    from lightlayers.models import list_models, model_description, model_params

    names = list_models(args.pattern)
    if args.json:
        print(json.dumps([model_row(n, args.num_classes) for n in names], indent=2))
        return 0
    # Counts and descriptions only: neither builds a model's weights nor imports torchvision.
    print(f"{'model':28s} {'total':>12s} {'trainable':>12s}  description")
    for name in names:
        c = model_params(name, args.num_classes)
        print(f"{name:28s} {c.total:12,d} {c.trainable:12,d}  {model_description(name)}")
    return 0
