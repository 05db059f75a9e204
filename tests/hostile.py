"""The hostile-input suite's harness: each case plants files (some of them the user's own, some
of them traps), runs the real ``lightlayers`` command in a subprocess and checks what a user
would: the exit code, one line on stderr with no traceback, and that every file the case
protects is byte-for-byte (and link-for-link) what it was.

Not a conftest: the ``test_hostile_*`` modules import it and add their rows to a table.

A row::

    Case("report-deletes-user-figure", setup=plant_figure, code=2, message=r"not made by")

``setup(tmp: Path, run: Path | None) -> Planted`` builds everything under ``tmp`` (``run`` is a
fresh copy of a finished digits run folder when the case asks for one with ``needs_run``) and
returns the argv after ``lightlayers`` plus the paths whose content must not change.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LIGHTLAYERS = [sys.executable, "-m", "lightlayers.cli"]
# A finished study every case that needs a run folder gets a private copy of: two models, two
# seeds, one epoch on scikit-learn's digits (about 7 s, once per test session).
RUN_ARGS = ["run", "--data", "digits", "--models", "paper-light-k1,paper-conv", "--seeds",
            "0,1", "--epochs", "1", "--protocol", "seed", "--quiet", "--no-report"]


@dataclass
class Planted:
    argv: list[str]
    protect: Sequence[Path] = ()  # files or folders whose every byte and link must stay
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Case:
    id: str
    setup: Callable[[Path, Path | None], Planted]
    code: int | tuple[int, ...] = 2
    message: str | None = None  # a regex the one stderr line must match (re.search)
    needs_run: bool = False
    timeout: float = 120
    # Outcomes that must print nothing on stderr but a summary are checked by ``check`` only.
    one_line: bool = True
    check: Callable[[Path, subprocess.CompletedProcess[str]], None] | None = None


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (or ``root`` itself when it is a file or a link): a file as its
    SHA-256, a link as its target, a folder as such. Links are never followed."""
    out: dict[str, str] = {}

    def one(p: Path, rel: str) -> None:
        if p.name.endswith(("results.db-shm", "results.db-wal")) and not p.is_symlink():
            return  # SQLite's shared memory and log of a store that was only read
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = "link:" + os.readlink(p)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = "dir"
            for child in sorted(p.iterdir()):
                one(child, f"{rel}/{child.name}")
        elif stat.S_ISREG(st.st_mode):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = f"special:{stat.S_IFMT(st.st_mode)}"

    if root.is_symlink() or root.exists():
        one(root, ".")
    return out


def run_cli(argv: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "80", **(env or {})}
    full_env.pop("LIGHTLAYERS_DEBUG", None)
    return subprocess.run([*LIGHTLAYERS, *argv], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished digits study, made once per session; cases copy it (see :func:`fresh_run`)."""
    base = tmp_path_factory.getbasetemp() / "hostile-run"
    if not (base / "results.db").is_file():
        done = run_cli([*RUN_ARGS, "--out", str(base)])
        assert done.returncode == 0, done.stderr
    return base


def fresh_run(template: Path, where: Path) -> Path:
    """A private copy of the finished run folder (links copied as links)."""
    dst = where / "run"
    shutil.copytree(template, dst, symlinks=True)
    return dst


def run_case(case: Case, tmp: Path, template: Path | None) -> subprocess.CompletedProcess[str]:
    """Plant, snapshot, run and check one case; returns the finished process for extra checks."""
    run = fresh_run(template, tmp) if case.needs_run and template is not None else None
    planted = case.setup(tmp, run)
    before = {str(p): snapshot(p) for p in planted.protect}
    done = run_cli(planted.argv, cwd=planted.cwd or tmp, env=planted.env,
                   timeout=case.timeout)
    codes = case.code if isinstance(case.code, tuple) else (case.code,)
    assert done.returncode in codes, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    if case.one_line:
        lines = [s for s in done.stderr.splitlines() if s.strip()]
        assert len(lines) == 1, done.stderr[-2000:]
        if case.message is not None:
            import re

            assert re.search(case.message, lines[0]), lines[0]
    after = {str(p): snapshot(p) for p in planted.protect}
    for p in planted.protect:
        assert after[str(p)] == before[str(p)], f"{p} changed"
    if case.check is not None:
        case.check(tmp, done)
    return done
