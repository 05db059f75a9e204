"""The test-split ledger: each trial scored on a test split is counted by its settings, across
run folders; ``lightlayers data ledger`` and the report say how many; a cache that cannot be
written only warns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightlayers.cli import main
from lightlayers.ledger import ledger_path, record_score, split_uses

RUN = ["run", "--data", "digits", "--models", "paper-light-k1", "--epochs", "1", "--size", "8",
       "--quiet"]


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    # A ledger of this test's own: counts from other tests' studies must not leak in.
    cache = tmp_path / "cache"
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(cache))
    return cache


def _ledger_json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    capsys.readouterr()
    assert main(["data", "ledger", "digits", "--size", "8", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_distinct_settings_are_counted_across_run_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*RUN, "--no-report", "--out", str(tmp_path / "a")]) == 0
    assert main([*RUN, "--no-report", "--lr", "0.01", "--out", str(tmp_path / "b")]) == 0
    r = _ledger_json(capsys)
    assert (r["settings"], r["scores"]) == (2, 2)
    assert r["test_images"] > 0 and r["first"] <= r["last"]
    assert [row["model"] for row in r["settings_scored"]] == ["paper-light-k1"] * 2

    # The same settings again, in a new folder and with the report on: still 2 settings.
    assert main([*RUN, "--out", str(tmp_path / "c")]) == 0
    r = _ledger_json(capsys)
    assert (r["settings"], r["scores"]) == (2, 3)
    # digits has no test split of its own: another split seed carves another one, counted apart.
    other = _ledger_json(capsys, "--seed", "3")
    assert other["test_fingerprint"] != r["test_fingerprint"] and other["scores"] == 0

    capsys.readouterr()
    assert main(["data", "ledger", "digits", "--size", "8"]) == 0
    out = capsys.readouterr().out
    assert "scored under 2 distinct setting(s), 3 score(s)" in out
    assert main(["data", "ledger"]) == 0
    assert "digits" in capsys.readouterr().out

    # The report says so beside the table: HTML, Markdown and the console.
    report = tmp_path / "c" / "report"
    sentence = "The test split of this data has been scored under 2 distinct setting(s)"
    html = (report / "report.html").read_text()
    assert "id='test-ledger'" in html and sentence in html
    assert "Partial results" not in html
    assert sentence in (report / "table.md").read_text()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "a"), "--format", "csv,md"]) == 0
    assert sentence in capsys.readouterr().out


def test_a_test_split_never_scored(capsys: pytest.CaptureFixture[str]) -> None:
    r = _ledger_json(capsys)
    assert (r["settings"], r["scores"], r["settings_scored"]) == (0, 0, [])
    assert main(["data", "ledger", "digits", "--size", "8"]) == 0
    assert "never scored" in capsys.readouterr().out


def test_an_unwritable_ledger_warns_once_and_the_study_goes_on(tmp_path: Path) -> None:
    import lightlayers.ledger as ledger

    ledger._warned.clear()
    # A folder where the ledger file belongs: it cannot be opened, as in a read-only cache
    # (which root, running these tests in CI containers, could still write).
    ledger_path().mkdir(parents=True)
    # Two trials, one warning; the study records both and ends well.
    with pytest.warns(UserWarning, match="cannot be written") as caught:
        assert main([*RUN, "--seeds", "0,1", "--no-report", "--out", str(tmp_path / "r")]) == 0
    assert sum("ledger" in str(w.message) for w in caught) == 1
    warned: list[str] = []
    assert not record_score("t", {"a": 1}, "d", "m", 0, "seed", "run", warned.append)
    assert warned == []  # warned once per process already
    with pytest.raises(ledger.LedgerError, match="cannot read the test-split ledger"):
        split_uses()
    assert main(["data", "ledger"]) == 2  # one line, exit 2 (the CLI's bad-input code)


def test_an_exports_own_test_check_is_one_more_score_under_the_trials_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*RUN, "--no-report", "--out", str(tmp_path / "a")]) == 0
    assert (_ledger_json(capsys)["settings"], _ledger_json(capsys)["scores"]) == (1, 1)
    assert main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "m.onnx")]) == 0
    r = _ledger_json(capsys)
    # The export looked at the test split once more; the trial's settings are the same ones.
    assert (r["settings"], r["scores"]) == (1, 2)
