"""``lightlayers run``: train a study and record it (flags override the YAML).

The flags are made from the settings' declarations (:class:`lightlayers.config.StudyConfig`
and each registered executor's options), so a setting is declared in one place only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lightlayers.commands._json import json_safe

# Settings declared in StudyConfig that have a flag of another spelling here.
_SPECIAL = {"report"}

# The protocol a command line without one trains with. Not the published study's (`seed`,
# StudyConfig's default and what the shipped study configs pin): its Keras BatchNorm momentum
# leaves validation at chance for the first epochs, a trap for a first short run.
CLI_PROTOCOL = "improved"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lightlayers.config import StudyConfig
    from lightlayers.executors import EXECUTORS, load_plugins
    from lightlayers.schema import add_flags

    p.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the key list's lines
    p.epilog = set_keys_help()
    p.add_argument("config", nargs="?", help="study YAML file (configs/*.yaml); flags override it")
    taken = set(_SPECIAL)
    names = add_flags(p, StudyConfig, taken=taken)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one protocol setting, e.g. --set class_weighting=false or "
                        "--set augment.rotate_deg=0 (repeatable; every KEY is listed below)")
    load_plugins()
    for info in EXECUTORS.values():
        if info.options is None:
            continue
        group = p.add_argument_group(f"executor {info.name}", info.help)
        names += add_flags(group, info.options, taken=taken)
    p.set_defaults(_setting_names=names)
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    from lightlayers.commands.report import add_console_arguments

    add_console_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object to stdout at the end: the run folder, the counts "
                        "and each trial's status and metrics (progress still goes to stderr)")
    executors = ", ".join(f"{i.name}: {i.help}" for i in EXECUTORS.values())
    for action in p._actions:  # the executor's choices are the registry's, listed in its help
        if action.dest == "executor":
            action.help = f"where trials run; {executors}"
        if action.dest == "protocol":
            action.help = (f"{(action.help or '').partition(' (default')[0]} (default: "
                           f"{CLI_PROTOCOL}, "
                           "unless the YAML or --tuned says otherwise)")


def set_keys_help() -> str:
    """The keys ``--set`` takes, with each protocol's default and the help, made from the
    declarations of :class:`lightlayers.config.Protocol` and its augmentation's dataclass."""
    import dataclasses
    import re
    import textwrap

    from lightlayers.config import IMPROVED, Protocol
    from lightlayers.data.augment import AugmentConfig

    seed = Protocol()

    def default(a: Any, b: Any) -> str:
        def text(v: Any) -> str:
            return "none" if v is None else str(v).lower() if isinstance(v, bool) else f"{v:g}" \
                if isinstance(v, float) else str(v)

        return (f"default {text(a)}" if a == b
                else f"default {text(a)} (seed), {text(b)} (improved)")

    entries: list[tuple[str, str]] = []
    for f in dataclasses.fields(Protocol):
        if f.name in ("name", "augment"):
            continue
        entries.append((f.name, f"{f.metadata.get('help', '')}; "
                                f"{default(getattr(seed, f.name), getattr(IMPROVED, f.name))}"))
    # The augmentation's settings are documented in its docstring's Args section.
    doc = dict(re.findall(r"^\s+(\w+): (.+?)(?=\n\s+\w+: |\n\s*\n|$)",
                          AugmentConfig.__doc__ or "", re.M | re.S))
    for f in dataclasses.fields(AugmentConfig):
        what = " ".join(doc.get(f.name, "").split()).rstrip(".")
        pair = getattr(seed.augment, f.name), getattr(IMPROVED.augment, f.name)
        entries.append((f"augment.{f.name}", f"{what}; {default(*pair)}"))
    lines = ["--set KEY=VALUE keys (protocol settings; VALUE is read as YAML):"]
    for key, text in entries:
        lines += textwrap.wrap(text, 78, initial_indent=f"  {key:<22s}",
                               subsequent_indent=" " * 24)
    lines += ["", "--protocol defaults to improved; the study configs in configs/ pin "
              "`protocol: seed`", "to reproduce the published study."]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from lightlayers.cli import CliError
    from lightlayers.config import ConfigError, load_config, parse_overrides
    from lightlayers.data import DataError
    from lightlayers.report.load import ReportError
    from lightlayers.runfolder.store import StoreError
    from lightlayers.schema import flag_values
    from lightlayers.study import run_study

    try:
        if not args.quiet and not args.json and not args.no_report:
            from lightlayers.report.table import console_columns

            console_columns(args.columns, [])  # a mistyped column, before hours of training
        overrides = parse_overrides(args.overrides)
        values = flag_values(args, args._setting_names)
        if "protocol" not in values and "tuned" not in values \
                and not _yaml_sets(args.config, ("protocol", "tuned")):
            values["protocol"] = CLI_PROTOCOL
        if args.no_report:
            values["report"] = False
        cfg = load_config(args.config, protocol_overrides=overrides or None, **values)
        outcome = run_study(cfg, progress=not args.quiet and not args.json)
    except (ConfigError, DataError, StoreError, ReportError) as e:
        raise CliError(str(e)) from e
    c = outcome.counts
    print(f"{outcome.out_dir}: {c['done']} done, {c['failed']} failed "
          f"({outcome.ran} run now, {outcome.skipped} already done)", file=sys.stderr)
    report: str | None = None
    if cfg.report and c["done"]:
        from lightlayers.report import ReportError, write_report

        try:
            shown = not args.quiet and not args.json
            # The progress printed each failed trial as it failed: the table does not repeat it.
            result = write_report(outcome.out_dir, console=shown, columns=args.columns,
                                  console_style=args.console, failures_shown=shown,
                                  progress=shown, cam_min_side=cfg.cam_min_side,
                                  reuse=outcome.ran == 0)
        except ReportError as e:
            # The trials are recorded already; a report problem must not hide that.
            print(f"lightlayers run: the report could not be written: {e}; the results are in "
                  f"{outcome.out_dir / 'results.db'}", file=sys.stderr)
        else:
            report = str(result.html)
            print(f"report: {result.html}" + (" (unchanged: drawn from these same results)"
                                              if result.reused else ""), file=sys.stderr)
            if cfg.log and outcome.ran:  # the trackers got this run's trials: the report too
                from lightlayers.trackers import log_report

                log_report(cfg.log, cfg.to_dict(), outcome.out_dir, result.out_dir)
    code = 1 if c["failed"] else 0
    if args.json:
        print(json.dumps(json_safe(result_object(outcome, report, code)), indent=2,
                         allow_nan=False))
    return code


def _yaml_sets(path: str | None, keys: tuple[str, ...]) -> bool:
    """Whether the study YAML at ``path`` gives any of ``keys`` (read with the same limits as
    load_config, which reports any problem with the file)."""
    if path is None:
        return False
    from lightlayers.yamlio import read_yaml_file

    try:
        loaded = read_yaml_file(Path(path))
    except Exception:
        return False  # load_config reads it again and says what is wrong with it
    return isinstance(loaded, dict) and any(k in loaded for k in keys)


def result_object(outcome: Any, report: str | None, exit_code: int) -> dict[str, Any]:
    """What ``run --json`` prints: enough for a script to act without opening results.db."""
    from lightlayers.metrics.registry import trial_metrics
    from lightlayers.runfolder.store import ResultsStore

    names = [m.name for m in trial_metrics()]
    with ResultsStore(outcome.out_dir / "results.db", create=False) as store:
        stored = store.trials()
    trials = [{"model": t["model"], "seed": t["seed"], "protocol": t["protocol"],
               "status": t["status"], "attempts": t["attempts"], "error": t["error"],
               "checkpoint": t.get("checkpoint"),
               "metrics": {n: t.get(n) for n in names if t.get(n) is not None}}
              for t in stored]
    sizes = [(t.get("config") or {}).get("train_size") for t in stored]
    if any(sizes):  # a study with training sizes: which size each trial trained on
        trials = [{**t, "train_size": size or "all"}
                  for t, size in zip(trials, sizes, strict=True)]
    chosen = [(((t.get("extra") or {}).get("speed") or {}).get("precision") or {}).get("chosen")
              for t in stored]
    if any(chosen):  # amp: auto: the precision and layout each trial trained in
        trials = [{**t, "precision": c} for t, c in zip(trials, chosen, strict=True)]
    return {"run_dir": str(outcome.out_dir), "exit_code": exit_code, "counts": outcome.counts,
            "ran": outcome.ran, "skipped": outcome.skipped, "report": report, "trials": trials}

