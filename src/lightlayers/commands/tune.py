"""``lightlayers tune``: search each model's training settings with the same budget, on
validation folds only; ``lightlayers tune DIR`` shows a tuning folder's best settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from lightlayers.commands._json import json_safe

# Study settings a tuning has no use for (it trains one seed, records no test number) or that
# belong to `lightlayers run`.
_NOT_HERE = {"report", "deployment", "seeds", "tuned"}
DEFAULT_OUT = "runs/tune"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightlayers.config import StudyConfig
    from lightlayers.schema import add_flags
    from lightlayers.tune import TuneOptions

    p.add_argument("config", nargs="?",
                   help="study YAML file (its `search:` narrows or widens the ranges), or a "
                        "tuning folder to show")
    from lightlayers.executors import EXECUTORS, load_plugins

    taken = set(_NOT_HERE)
    names = add_flags(p, StudyConfig, taken=taken)
    load_plugins()
    for info in EXECUTORS.values():
        if info.options is not None:
            group = p.add_argument_group(f"executor {info.name}", info.help)
            names += add_flags(group, info.options, taken=taken)
    for action in p._actions:
        if action.dest == "out":
            action.help = f"tuning folder (default: {DEFAULT_OUT})"
        if action.dest == "executor":
            action.help = ("where tuning trials run: local (one after another, pruned) or ray "
                           "(Ray tasks, as many at once as fit; not pruned)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one protocol setting before tuning (repeatable)")
    group = p.add_argument_group("tuning")
    tune_names = add_flags(group, TuneOptions)
    p.set_defaults(_setting_names=names, _tune_names=tune_names)
    p.add_argument("--decide", action="store_true",
                   help="after the search, decide each model's EMA, test-time augmentation, "
                        "longer training and threshold on the same folds (each kept only where "
                        "it beats the tuned settings on every fold; lightlayers run --tuned "
                        "then uses them)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object at the end: the folder and, per model, its "
                        "trials and best settings")


def main(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.config import ConfigError, StudyConfig, load_config, parse_overrides
    from lightlayers.data import DataError
    from lightlayers.outputs import OutputError
    from lightlayers.runfolder.store import StoreError
    from lightlayers.schema import build, flag_values
    from lightlayers.tune import TuneOptions, run_tune
    from lightlayers.tuned import summary_table, tune_summary

    try:
        values = flag_values(args, args._setting_names)
        tune_values = flag_values(args, args._tune_names)
        given = values or tune_values or args.overrides
        if args.config is not None and Path(args.config).is_dir():
            if args.decide:
                raise ConfigError(f"{args.config} is a folder: decisions are made by the "
                                  "tuning's own command; rerun it (the same YAML file or "
                                  "flags, and --out) with --decide")
            if given:
                raise ConfigError(f"{args.config} is a folder: `lightlayers tune DIR` shows a "
                                  "tuning folder and takes no settings; pass a YAML file or "
                                  "flags to tune")
            summary = tune_summary(Path(args.config).expanduser().absolute())
        else:
            overrides = parse_overrides(args.overrides)
            cfg = load_config(args.config, protocol_overrides=overrides or None, **values)
            if "out" not in values and cfg.out == StudyConfig().out:
                # Neither the flag nor the YAML named one: not the run folder's default.
                cfg = dataclasses.replace(cfg, out=DEFAULT_OUT)
            opts = build(TuneOptions, tune_values, "tune")
            outcome = run_tune(cfg, opts, progress=not args.quiet and not args.json,
                               decide=args.decide)
            summary = tune_summary(outcome.folder)
    except (ConfigError, DataError, StoreError, OutputError) as e:
        raise CliError(str(e)) from e
    if args.json:
        out = {"folder": summary["folder"],
               "models": [{"model": m["model"], "trials": m["trials"],
                           "complete": m["complete"], "pruned": m["pruned"],
                           "best": None if m["best"] is None else
                           {"params": m["best"]["params"], "value": m["best"]["value"]},
                           "decided": None if m["decisions"] is None else
                           m["decisions"]["settings"]}
                          for m in summary["models"]]}
        print(json.dumps(json_safe(out), indent=2, allow_nan=False))
    else:
        print(summary_table(summary))
    return 0 if all(m["best"] is not None for m in summary["models"]) else 1
