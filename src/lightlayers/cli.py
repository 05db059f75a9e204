"""The ``lightlayers`` command. Each subcommand lives in ``lightlayers.commands.<name>`` and is
imported only when used, so ``lightlayers --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line help; the module lightlayers.commands.<name> defines
# ``add_arguments(parser)`` and ``main(args) -> int``.
COMMANDS = {
    "models": "list the registered models with their parameter counts",
    "data": "list dataset short names, or summarise a dataset",
    "run": "train a study (models x seeds) and record every number",
    "report": "write the table, figures and HTML page of a run folder",
    "weights": "list or fetch the transfer models' pretrained weights",
}


class CliError(Exception):
    """An error whose message is meant for the user as is (no traceback)."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from lightlayers import __version__

    parser = argparse.ArgumentParser(prog="lightlayers", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"lightlayers {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported.
        if name == wanted:
            module = importlib.import_module(f"lightlayers.commands.{name}")
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except CliError as e:
        print(f"lightlayers {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
