"""The ``lightlayers`` command. Each subcommand lives in ``lightlayers.commands.<name>`` and is
imported only when used, so ``lightlayers --help`` stays fast.

One error policy for every subcommand (:func:`main`): bad input or an unusable environment
ends in one line on stderr that says what, where and how to fix it, with a documented exit
code; only ``--debug`` (or ``LIGHTLAYERS_DEBUG=1``) shows a Python traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

# name -> one-line help; the module lightlayers.commands.<name> defines
# ``add_arguments(parser)`` and ``main(args) -> int``.
COMMANDS = {
    "models": "list the registered models with their parameter counts",
    "data": "list dataset short names, or summarise a dataset",
    "run": "train a study (models x seeds) and record every number",
    "report": "write the table, figures and HTML page of a run folder",
    "weights": "list or fetch the transfer models' pretrained weights",
    "export": "export a trained model of a run folder as one ONNX file (optionally int8)",
    "predict": "classify image files, folders or archives with an exported model",
    "tune": "search each model's training settings with the same budget, on validation folds",
}

DESCRIPTION = """\
Compare image classifiers under tight data and hardware budgets: train a study (models x
seeds under one protocol) on an image dataset, record every number in a run folder, and
report the table, the figures and an HTML page.

  lightlayers models                       the models, with their parameter counts
  lightlayers data summary digits          what a dataset holds
  lightlayers run configs/cpu-demo.yaml    a one-minute study on the CPU
  lightlayers report runs/cpu-demo         its table, figures and report.html

`lightlayers COMMAND --help` describes each command."""

# Exit codes (documented in `lightlayers --help`); 143 is 128 + SIGTERM, as a shell reports
# a process that SIGTERM ended.
EXIT_OK, EXIT_TRIAL_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143

EPILOG = f"""exit codes:
  {EXIT_OK}    done (every trial of a study finished)
  {EXIT_TRIAL_FAILED}    some trial failed; the others are recorded (`lightlayers report` lists why)
  {EXIT_USAGE}    bad input or usage, or an unusable environment (read-only or full disk,
       missing permissions, a damaged results store): one line says what and how to fix it
  {EXIT_INTERNAL}    internal error (a bug): rerun with --debug and report the traceback
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); finished trials stay recorded
  {EXIT_TERMINATED}  stopped by SIGTERM (kill, timeout, a scheduler), handled as Ctrl-C: finished
       trials stay recorded, temporary files are removed, a rerun resumes

--debug before the command (lightlayers --debug run ...) or LIGHTLAYERS_DEBUG=1 shows the
Python traceback of any error."""

# Exceptions whose message is written for the user, by (module, class name). Looked up in
# sys.modules only: a module that was never imported cannot have raised its error, and
# importing it here would slow every error down.
_USER_ERRORS = (
    ("lightlayers.schema", "ConfigError"),
    ("lightlayers.data.errors", "DataError"),
    ("lightlayers.runfolder.errors", "RunFolderError"),
    ("lightlayers.report.load", "ReportError"),
    ("lightlayers.models.weights", "WeightsError"),
    ("lightlayers.deploy.errors", "DeployError"),
    ("lightlayers.outputs", "OutputError"),
)


class CliError(Exception):
    """An error whose message is meant for the user as is (no traceback)."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    from lightlayers.version import __version__

    parser = argparse.ArgumentParser(prog="lightlayers", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lightlayers {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also LIGHTLAYERS_DEBUG=1)")
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


def debug_wanted(argv: list[str]) -> bool:
    """``--debug`` before the subcommand, or LIGHTLAYERS_DEBUG set to anything but 0/empty."""
    env = os.environ.get("LIGHTLAYERS_DEBUG", "").strip().lower()
    if env not in ("", "0", "false", "no"):
        return True
    head = argv[:next((i for i, a in enumerate(argv) if a in COMMANDS), len(argv))]
    return "--debug" in head


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = debug_wanted(argv)
    command = next((a for a in argv if a in COMMANDS), None)
    prefix = f"lightlayers {command}" if command else "lightlayers"
    from lightlayers.signals import sigterm_as_interrupt, sigterm_received

    _private_cache_dirs()  # before any command imports matplotlib or torch
    with _plain_warnings(debug), sigterm_as_interrupt():
        try:
            # argparse reports usage errors itself (one line, exit 2) by raising SystemExit.
            args = build_parser(argv).parse_args(argv)
            return int(args._main(args) or 0)
        except KeyboardInterrupt:
            # By its flag, not the exception's type (lightlayers.signals.Terminated): a
            # library may have caught the interrupt and raised a plain one instead.
            if sigterm_received():
                print("interrupted (SIGTERM)", file=sys.stderr)
                return EXIT_TERMINATED
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # `lightlayers models | head`: the reader left; nothing left to say to it.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        except Exception as e:
            if sigterm_received():
                # A library turned the interrupt into an error of its own (the ONNX exporter
                # wraps whatever stops it): the command was still stopped by SIGTERM.
                print("interrupted (SIGTERM)", file=sys.stderr)
                return EXIT_TERMINATED
            code, message = explain(e, command)
            if debug:
                traceback.print_exc()
            print(f"{prefix}: {message}", file=sys.stderr)
            return code


def _private_cache_dirs() -> None:
    """Libraries' caches inside the lightlayers cache, unless the user chose their folders:
    matplotlib keeps its font cache and config in ~/.cache/matplotlib and ~/.config (the tool
    writes nothing in the home folder), and torch's compiler makes torchinductor_USER in the
    temp folder (which a command leaves as it found it). The cache's default is that of
    lightlayers.data.cache.cache_root, spelled out here so that no command waits for that
    import; the variables are read when those libraries are first imported."""
    root = Path(os.environ.get("LIGHTLAYERS_CACHE") or "~/.cache/lightlayers").expanduser()
    for var, name in (("MPLCONFIGDIR", "matplotlib"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        if not os.environ.get(var):
            os.environ[var] = str(root.absolute() / name)


def explain(e: BaseException, command: str | None = None) -> tuple[int, str]:
    """The exit code and the one-line message for an exception that ended a command."""
    import sqlite3

    user = tuple(getattr(sys.modules[m], n) for m, n in _USER_ERRORS if m in sys.modules)
    if isinstance(e, (CliError, *user)):
        return EXIT_USAGE, f"error: {_one_line(e)}"
    if isinstance(e, OSError):
        return EXIT_USAGE, f"error: {os_error_message(e, command)}"
    if isinstance(e, sqlite3.DatabaseError):
        # The store names its file itself (StoreError); this is any other SQLite file.
        return EXIT_USAGE, (f"error: a results store is damaged or unusable ({_one_line(e)}); "
                            "move its results.db away and rerun")
    if isinstance(e, MemoryError):
        return EXIT_USAGE, ("error: out of memory; use a smaller --size or --batch-size, or "
                            "fewer images")
    return EXIT_INTERNAL, (f"internal error: {type(e).__name__}: {_one_line(e)}; rerun with "
                           "--debug for the traceback and report it")


def os_error_message(e: OSError, command: str | None = None) -> str:
    """What went wrong with which file, and the fix, in one line."""
    path = e.filename if e.filename is not None else e.filename2
    where = _short(str(path)) if path is not None else "a file"
    fix = _fix(path, command)
    if e.errno == errno.EROFS:
        return f"cannot write {where}: read-only file system; {fix}"
    if e.errno in (errno.EACCES, errno.EPERM):
        if path is not None and os.path.exists(path) and not os.access(path, os.R_OK):
            return f"cannot read {where}: permission denied; check its permissions"
        return f"cannot write {where}: permission denied; {fix}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {where}; free some space or {fix}"
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and path is not None:
        return f"{where} (or a folder above it) is a file, not a folder; {fix}"
    if e.errno == errno.ENOENT:
        return f"{where} does not exist"
    return f"{where}: {e.strerror or _one_line(e)}"


def _short(text: str, limit: int = 160) -> str:
    """A path shown whole unless absurdly long (a 5,000-character name stays one short line)."""
    return text if len(text) <= limit else f"{text[:100]}...{text[-50:]}"


def _fix(path: str | bytes | os.PathLike[str] | None, command: str | None) -> str:
    """How to get past an unwritable ``path``, by what it belongs to."""
    if path is not None:
        p = Path(os.fsdecode(path)).absolute()
        # The defaults of lightlayers.data.cache.cache_root and torch.hub, spelled out here so
        # that an error does not wait for torch to import.
        for var, default in (("LIGHTLAYERS_CACHE", "~/.cache/lightlayers"),
                             ("TORCH_HOME", "~/.cache/torch")):
            root = Path(os.environ.get(var) or default).expanduser().absolute()
            if p.is_relative_to(root):
                return f"point {var} at a writable folder with room"
    if command == "run":
        return "choose another --out"
    if command == "report":
        return "pass --out with a writable folder"
    return "use a writable folder"


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def _plain_warnings(debug: bool) -> Iterator[None]:
    """Every warning, lightlayers' own or a library's, as one ``lightlayers: warning: ...``
    line (no source file, line number or source line: they say nothing to a user and make one
    warning three lines), and each text once per command (a study's trials would otherwise
    repeat a model's warning once each); under --debug as Python shows them. Only the format
    changes: filters, and tools that record warnings, see them as before."""
    if debug:
        yield
        return
    original = warnings.formatwarning
    shown: set[str] = set()

    def one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 line: str | None = None) -> str:
        text = plain_warning(message, category)
        if text in shown:
            return ""
        shown.add(text)
        return text

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = original


def plain_warning(message: Warning | str, category: type[Warning]) -> str:
    """The one line a warning is shown as. A library's category is named (which library warns
    matters when searching for it); lightlayers' own and plain UserWarnings are not."""
    text = " ".join(str(message).split()) or category.__name__
    own = category.__module__.startswith("lightlayers") or category in (UserWarning, Warning)
    return f"lightlayers: warning: {text if own else f'{category.__name__}: {text}'}\n"


def entry() -> NoReturn:
    """The ``lightlayers`` program: :func:`main`, then the process's exit.

    An interrupted command has already removed its temporary files and closed its stores
    (context managers, on the way out of :func:`main`). The interrupt may have landed inside a
    library, in the middle of an import or of building a native thread pool; tearing such a
    half-built state down at interpreter exit has aborted the process (SIGABRT) after the
    "interrupted" line was printed. So an interrupted process runs the exit handlers, flushes
    its output and ends there, with the exit code it reported."""
    code = main()
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        import atexit

        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    # `python -m lightlayers.cli`: run the imported module's entry, so that the CliError the
    # commands raise (lightlayers.cli.CliError) is the class main catches, not __main__'s copy.
    from lightlayers.cli import entry as _entry

    _entry()
