"""The hostile suite's harness itself: a wrong exit code and a changed file are both caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import Case, Planted, run_case


def _missing_config(tmp: Path, run: Path | None) -> Planted:
    mine = tmp / "mine.txt"
    mine.write_text("the user's")
    return Planted(["run", str(tmp / "nosuch.yaml")], protect=[mine])


def test_harness_checks_the_exit_code_and_the_line(tmp_path: Path) -> None:
    run_case(Case("missing-config", _missing_config, code=2, message="nosuch.yaml"),
             tmp_path, None)
    with pytest.raises(AssertionError):
        run_case(Case("missing-config", _missing_config, code=0), tmp_path, None)
    with pytest.raises(AssertionError):
        run_case(Case("missing-config", _missing_config, message="no such words"),
                 tmp_path, None)


def test_harness_sees_a_changed_folder(tmp_path: Path) -> None:
    def into(tmp: Path, run: Path | None) -> Planted:
        out = tmp / "out"
        out.mkdir(exist_ok=True)
        return Planted(["run", "--data", "digits", "--models", "paper-conv", "--epochs", "1",
                        "--quiet", "--no-report", "--out", str(out)], protect=[out])

    with pytest.raises(AssertionError, match="changed"):
        run_case(Case("writes-a-run", into, code=0, one_line=False), tmp_path, None)
