"""What a user sees in the terminal: the printed table fits 80 columns, piped output is plain,
each failure and warning is one line, and the small traps (unknown model patterns, --set keys,
sizes, intervals from two seeds) are said plainly."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
from hostile import run_cli

from lightlayers.cli import plain_warning
from lightlayers.metrics.registry import fmt_size, get_metric
from lightlayers.report.stats import summarize
from lightlayers.report.table import clipped

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
SOURCE_PATH = re.compile(r"\.py:\d+|/site-packages/")


@pytest.fixture
def run(hostile_run: Path, tmp_path: Path) -> Path:
    """A private copy of the finished 2-model x 2-seed digits run."""
    dst = tmp_path / "run"
    shutil.copytree(hostile_run, dst, symlinks=True)
    return dst


def _table_lines(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Model "))
    end = next(i for i in range(start + 2, len(lines)) if not lines[i].startswith("paper-"))
    return lines[start:end]


def test_report_fits_80_columns_plain_when_piped(run):
    done = run_cli(["report", str(run), "--format", "csv"])
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert not ANSI.search(out) and "┃" not in out and "│" not in out  # plain text in a pipe
    assert max(len(line) for line in out.splitlines()) <= 80, out
    table = _table_lines(out)
    assert table[0].split() == ["Model", "Params", "Acc", "BalAcc", "AUC", "Sens", "Spec",
                                "ECE", "Seeds", "Coll."]
    rows = table[2:]
    assert [r.split()[0] for r in rows] == ["paper-light-k1", "paper-conv"]  # one line each
    for r in rows:
        assert "…" not in r and len(r.split()) >= 10
        assert all(re.fullmatch(r"\d\.\d{3}", c) for c in r.split()[2:8]), r


def test_a_step_that_takes_seconds_says_so(run, capsys, monkeypatch):
    import time

    from lightlayers.report import write as W

    W.write_report(run, formats=("csv",), console=False, progress=True)
    assert capsys.readouterr().err == ""  # quick steps stay quiet
    monkeypatch.setattr(W, "STEP_DELAY_S", 0.0)
    slow = W.load_run
    monkeypatch.setattr(W, "load_run", lambda d: (time.sleep(0.3), slow(d))[1])
    W.write_report(run, formats=("csv",), console=False, progress=True)
    assert f"report: reading {run} ..." in capsys.readouterr().err


def test_columns_all_and_a_list(run):
    done = run_cli(["report", str(run), "--format", "csv", "--columns", "all"])
    assert done.returncode == 0, done.stderr
    header = _table_lines(done.stdout)[0]
    for name in ("Total params", "Size", "Total time (s)", "Balanced accuracy", "F1", "MACs"):
        assert name in header
    assert " kB" in done.stdout and " ± " in done.stdout
    done = run_cli(["report", str(run), "--format", "csv", "--columns", "accuracy,auc,seeds"])
    assert _table_lines(done.stdout)[0].split() == ["Model", "Accuracy", "AUC", "Seeds"]
    done = run_cli(["report", str(run), "--format", "csv", "--columns", "acc,sens"])
    assert _table_lines(done.stdout)[0].split() == ["Model", "Accuracy", "Sensitivity"]
    done = run_cli(["report", str(run), "--format", "csv", "--columns", "acuracy"])
    assert done.returncode == 2
    assert "unknown column 'acuracy'; did you mean accuracy" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_run_refuses_a_mistyped_column_before_training(tmp_path):
    done = run_cli(["run", "--data", "digits", "--columns", "acuracy",
                    "--out", str(tmp_path / "r")])
    assert done.returncode == 2 and "unknown column 'acuracy'" in done.stderr
    assert not (tmp_path / "r").exists()


def test_console_csv_is_one_csv_on_stdout(run):
    done = run_cli(["report", str(run), "--format", "csv", "--console", "csv"])
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["model"] for r in rows] == ["paper-light-k1", "paper-conv"]
    assert "accuracy_mean" in rows[0] and "balanced_accuracy_ci95_high" in rows[0]
    assert "settings:" in done.stderr  # the notes went to stderr


def test_intervals_from_two_seeds_are_marked_and_clipped_alike(run):
    done = run_cli(["report", str(run), "--format", "csv,md,html", "--json"])
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    table = {r["model"]: r for r in csv.DictReader((run / "report" / "table.csv").open())}
    printed = run_cli(["report", str(run), "--format", "csv"]).stdout
    assert "paper-conv, 2 seeds (n=2: interval wide)" in printed
    assert "n < 3" in (run / "report" / "table.md").read_text()
    html = (run / "report" / "report.html").read_text()
    assert "id='few-seeds'>With 2 seeds (n &lt; 3) the 95% intervals are wide" in html
    assert "over 2 seeds, too few for a narrow one" in html  # the summary's intervals too
    for model in data["models"]:
        for key, name in (("accuracy", "accuracy"), ("auc", "AUC")):
            st = model["metrics"][key]
            row = table[model["model"]]
            assert 0 <= st["ci_low"] <= st["ci_high"] <= 1
            assert (float(row[f"{key}_ci95_low"]), float(row[f"{key}_ci95_high"])) == (
                st["ci_low"], st["ci_high"])
            assert re.search(rf"{name}\s+\S+ ± \S+\s+\[{st['ci_low']:.4f}, "
                             rf"{st['ci_high']:.4f}\]", printed)


def test_clipping_is_done_once_for_scores_only():
    wide = summarize([0.2, 0.99])
    assert wide.ci_low < 0 and wide.ci_high > 1
    s = clipped(wide, get_metric("accuracy"))
    assert (s.ci_low, s.ci_high) == (0.0, 1.0)
    assert clipped(wide, get_metric("total_time_s")) == wide  # a time is not a fraction
    assert dataclasses.replace(s, ci_low=wide.ci_low, ci_high=wide.ci_high) == wide


def test_sizes_below_one_megabyte_are_in_kilobytes(run):
    assert fmt_size(0.0183) == "18.3 kB"
    assert fmt_size(2.5) == "2.50 MB" and fmt_size(95.3) == "95.3 MB"
    done = run_cli(["report", str(run), "--format", "csv,md"])
    assert done.returncode == 0, done.stderr
    md = (run / "report" / "table.md").read_text()
    assert "| Size |" in md and re.search(r"\| \d+\.\d kB \|", md)
    rows = list(csv.DictReader((run / "report" / "table.csv").open()))
    assert float(rows[0]["size_mb_mean"]) < 1  # the CSV keeps the number in MB


def test_each_failure_is_printed_once(tmp_path):
    done = run_cli(["run", "--data", "digits", "--models", "paper-light-k1", "--seeds", "0",
                    "--epochs", "1", "--lr", "1e12", "--protocol", "seed",
                    "--out", str(tmp_path / "r")])
    text = " ".join((done.stdout + done.stderr).split())  # notes wrap at 80 columns
    assert done.returncode == 1 and text.count("non-finite training loss") == 1, text
    done = run_cli(["report", str(tmp_path / "r"), "--format", "csv"])
    assert " ".join((done.stdout + done.stderr).split()).count("non-finite training loss") == 1


def _one_line_warnings(done) -> None:
    bad = [line for line in done.stderr.splitlines() if SOURCE_PATH.search(line)]
    assert not bad, done.stderr
    assert "Traceback" not in done.stderr


def test_warnings_are_one_line_in_every_command(tmp_path):
    from PIL import Image

    out = tmp_path / "conv"
    done = run_cli(["run", "--data", "digits", "--models", "study-conv", "--size", "8",
                    "--seeds", "0,1", "--epochs", "1", "--quiet", "--out", str(out)])
    assert done.returncode in (0, 1), done.stderr
    _one_line_warnings(done)
    # study-conv pads 8 px images: said once, not once per trial.
    padding = [ln for ln in done.stderr.splitlines()
               if ln.startswith("lightlayers: warning: ") and "zero-padding" in ln]
    assert len(padding) == 1, done.stderr
    assert "UserWarning" not in done.stderr
    done = run_cli(["report", str(out), "--format", "csv"])
    _one_line_warnings(done)
    onnx = tmp_path / "m.onnx"
    done = run_cli(["export", str(out), "--out", str(onnx)])
    _one_line_warnings(done)
    if done.returncode == 0:
        images = tmp_path / "images"
        images.mkdir()
        for i in range(2):
            Image.new("L", (8, 8), 40 * i).save(images / f"{i}.png")
        done = run_cli(["predict", str(onnx), str(images)])
        _one_line_warnings(done)


def test_library_warnings_are_one_line_too():
    line = plain_warning("a\n  b", DeprecationWarning)
    assert line == "lightlayers: warning: DeprecationWarning: a b\n"
    assert plain_warning("input is small", UserWarning) == (
        "lightlayers: warning: input is small\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # filters still see the warning as it is
        with pytest.raises(UserWarning):
            warnings.warn("x", UserWarning, stacklevel=1)


def test_models_without_a_match_is_an_error_with_close_names():
    done = run_cli(["models", "paper-convv"])
    assert done.returncode == 2
    assert done.stdout == ""
    assert "no model matches 'paper-convv'; close matches: paper-conv" in done.stderr
    assert run_cli(["models", "nosuch"]).returncode == 2
    assert run_cli(["models", "paper-*"]).returncode == 0


def test_run_help_lists_every_set_key_with_its_default():
    from lightlayers.config import Protocol
    from lightlayers.data.augment import AugmentConfig

    done = run_cli(["run", "--help"])
    assert done.returncode == 0
    keys = [f.name for f in dataclasses.fields(Protocol) if f.name not in ("name", "augment")]
    keys += [f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)]
    listed = done.stdout[done.stdout.index("--set KEY=VALUE keys"):]
    entries = {m[0]: " ".join(m[1].split())
               for m in re.findall(r"^  (\S+)\s+(.+?)(?=^  \S|^$)", listed, re.M | re.S)}
    assert list(entries) == keys
    for key in keys:
        assert "default " in entries[key] and len(entries[key]) > 20, key
    assert "bn_momentum" in listed and "0.1 (improved)" in listed
    assert "default: improved" in " ".join(done.stdout.split())


def test_progress_fits_80_columns_on_a_terminal():
    from rich.console import Console

    from lightlayers.progress import ProgressReporter

    buf = io.StringIO()
    reporter = ProgressReporter(3, console=Console(file=buf, force_terminal=True, width=80))
    for seed in range(3):
        reporter.start_trial(f"transfer-inception_v3 seed {seed}", 20)
        for epoch in range(1, 3):
            reporter.epoch({"epoch": epoch, "train_loss": 4.7e23, "train_acc": 0.5,
                            "val_loss": 1112208460592.3357, "val_acc": 0.098, "time_s": 1.0},
                           20)
            reporter._progress.refresh()
        reporter.end_trial(f"  done transfer-inception_v3 seed {seed}: acc 0.9")
        reporter._progress.refresh()
    reporter.close()
    lines = [x for x in re.split(r"[\r\n]", ANSI.sub("", buf.getvalue())) if x.strip()]
    assert max(len(x) for x in lines) <= 80, lines
    assert any(x.startswith("trials ") and "ETA" in x and "elapsed" in x for x in lines), lines
    assert any("1/20" in x and "val_acc 0.098" in x for x in lines), lines
    assert not any(re.search(r"\d…", x) for x in lines), lines


def test_progress_in_a_pipe_counts_trials():
    import contextlib

    from lightlayers.progress import ProgressReporter

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        reporter = ProgressReporter(2, tty=False)
        for seed in range(2):
            reporter.start_trial(f"m seed {seed}", 1)
            reporter.end_trial(f"  done m seed {seed}")
        reporter.close()
    assert "1/2 trials done" in err.getvalue() and "ETA" in err.getvalue()


def test_report_json_draws_no_figure(run):
    shutil.rmtree(run / "report", ignore_errors=True)
    done = run_cli(["report", str(run), "--json"])
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [m["model"] for m in data["models"]] == ["paper-light-k1", "paper-conv"]
    report = run / "report"
    assert (report / "table.csv").is_file() and (report / "table.md").is_file()
    assert not (report / "figures").exists() and not (report / "report.html").exists()
    assert "drawing the figures" not in done.stderr
