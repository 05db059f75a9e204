"""What the tool leaves outside its outputs, and what its CSV files let a spreadsheet do.

Privacy: a study, its report, an int8 export and predictions with it write nothing in the home
folder (HOME an empty folder, XDG_* unset): the caches go to LIGHTLAYERS_CACHE and TORCH_HOME,
temporary files to the temp folder, which is left empty, and ONNX Runtime's telemetry (a
device id under ~/.cache/Microsoft, a session file in the temp folder) stays off.

CSV injection: class folders and image files named like spreadsheet formulas end up in
skipped_images.csv and in the predictions; no CSV the tool writes holds a text cell a
spreadsheet would evaluate.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import image_bytes
from hostile import LIGHTLAYERS, snapshot

from lightlayers import csvsafe

pytest.importorskip("onnxruntime", reason="install lightlayers[test]")

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)",
                    re.IGNORECASE)
FORMULA_CLASS = "=1+1"
FORMULA_IMAGE = '=HYPERLINK("x").png'
BAD_IMAGE = "@SUM(A1).png"  # not an image: listed in skipped_images.csv


# --- the helper --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "written"), [
    ("=1+1", "'=1+1"), ('=HYPERLINK("x")', "'=HYPERLINK(\"x\")"), ("+cmd", "'+cmd"),
    ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("-", "'-"),
    # numbers stay numbers, negative ones included, as text or as numbers
    ("-0.25", "-0.25"), ("+1", "+1"), ("-1e-05", "-1e-05"), ("-inf", "-inf"), ("nan", "nan"),
    (-0.25, -0.25), (3, 3), (None, None),
    # harmless text, and a formula character further in
    ("cat", "cat"), ("a=b", "a=b"), ("", ""),
])
def test_a_cell_a_spreadsheet_would_evaluate_is_text(value: object, written: object) -> None:
    assert csvsafe.cell(value) == written


def test_writers_neutralise_every_row() -> None:
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(["=a", -1.5, "-1.5"])
    w.writerows([["+b", "ok"]])
    d = csvsafe.DictWriter(buf, fieldnames=["x", "y"], lineterminator="\n")
    d.writerow({"x": "@c", "y": "-2"})
    d.writerows([{"x": "\td", "y": 0}])
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows == [["'=a", "-1.5", "-1.5"], ["'+b", "ok"], ["'@c", "-2"], ["'\td", "0"]]


def test_results_csv_error_and_names_are_text() -> None:
    from lightlayers.runfolder import results_csv_text

    text = results_csv_text([{"model": "=m", "seed": 0, "protocol": "seed",
                              "status": "failed", "accuracy": -0.5,
                              "error": "=cmd|' /C calc'!A0"}])
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["model"] == "'=m" and row["error"] == "'=cmd|' /C calc'!A0"
    assert row["accuracy"] == "-0.5"


# --- end to end: HOME untouched, every CSV safe ---------------------------------------------

def _formula_tree(root: Path) -> Path:
    """Two classes, one of them named like a formula; one image named like a formula and one
    file that is not an image."""
    for split, n in (("train", 14), ("test", 6)):
        for k, cls in enumerate((FORMULA_CLASS, "plain")):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"img{i}.png").write_bytes(image_bytes(1000 * k + 100 * len(split) + i))
    (root / "test" / FORMULA_CLASS / FORMULA_IMAGE).write_bytes(image_bytes(77))
    (root / "train" / "plain" / BAD_IMAGE).write_bytes(b"not an image at all")
    return root


def _private_env(tmp: Path) -> tuple[dict[str, str], Path, Path, Path]:
    home, tmpdir, cache = tmp / "home", tmp / "tmp", tmp / "cache"
    for p in (home, tmpdir, cache):
        p.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("XDG_") and k not in ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR",
                                                     "ORT_DISABLE_TELEMETRY",
                                                     "LIGHTLAYERS_DEBUG")}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), COLUMNS="80",
               LIGHTLAYERS_CACHE=str(cache / "lightlayers"), TORCH_HOME=str(cache / "torch"))
    return env, home, tmpdir, cache


def _cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*LIGHTLAYERS, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (argv, done.stderr[-2000:])
    return done


def _unsafe_cells(text: str) -> list[str]:
    return [c for row in csv.reader(io.StringIO(text)) for c in row
            if c.startswith(TRIGGERS) and not NUMBER.fullmatch(c)]


def test_a_whole_session_leaves_home_and_temp_alone_and_writes_safe_csv(tmp_path: Path) -> None:
    tree = _formula_tree(tmp_path / "tree")
    env, home, tmpdir, cache = _private_env(tmp_path)
    run, out = tmp_path / "run", tmp_path / "out"
    _cli(["run", "--data", str(tree), "--models", "paper-light-k1,paper-conv", "--seeds", "0,1",
          "--epochs", "1", "--size", "16", "--on-bad-image", "skip", "--quiet", "--out",
          str(run)], env, tmp_path)
    _cli(["report", str(run)], env, tmp_path)
    _cli(["export", str(run), "--model", "paper-conv", "--int8", "--calibration", "16", "--out",
          str(out / "m.onnx")], env, tmp_path)
    # Relative inputs, as a user types them: the path column starts with the file's name.
    _cli(["predict", str(out / "m.onnx"), FORMULA_IMAGE, "img0.png", "--out",
          str(out / "preds.csv"), "--quiet"], env, tree / "test" / FORMULA_CLASS)
    _cli(["predict", f"{run}:paper-light-k1", str(tree / "test"), "--out",
          str(out / "preds-run.csv"), "--quiet"], env, tmp_path)

    assert snapshot(home) == {".": "dir"}, sorted(snapshot(home))
    assert list(tmpdir.iterdir()) == []
    # The caches went where they were pointed.
    assert (cache / "lightlayers" / "matplotlib").is_dir()

    written = sorted([*run.rglob("*.csv"), *out.rglob("*.csv")])
    names = {p.name for p in written}
    assert {"results.csv", "skipped_images.csv", "table.csv", "comparisons.csv",
            "ensembles.csv", "preds.csv", "preds-run.csv"} <= names, names
    for p in written:
        assert _unsafe_cells(p.read_text()) == [], p

    skipped = list(csv.reader(io.StringIO((run / "skipped_images.csv").read_text())))
    assert any(c.endswith(BAD_IMAGE) for row in skipped[1:] for c in row[:1]), skipped
    preds = list(csv.DictReader(io.StringIO((out / "preds.csv").read_text())))
    assert [r["path"] for r in preds] == ["'" + FORMULA_IMAGE, "img0.png"]
    # The class named like a formula: a text cell, and its probabilities numbers.
    assert f"prob_{FORMULA_CLASS}" in preds[0]
    run_preds = list(csv.DictReader(io.StringIO((out / "preds-run.csv").read_text())))
    assert {r["predicted"] for r in run_preds} <= {"'" + FORMULA_CLASS, "plain"}
    for r in (*preds, *run_preds):
        probs = [float(r[f"prob_{c}"]) for c in (FORMULA_CLASS, "plain")]
        assert np.isclose(sum(probs), 1, atol=1e-4)
    # results.csv's numbers are numbers still.
    results = list(csv.DictReader(io.StringIO((run / "results.csv").read_text())))
    assert all(0 <= float(r["accuracy"]) <= 1 for r in results)


def test_onnxruntime_telemetry_is_off_where_the_tool_imports_it(tmp_path: Path) -> None:
    """Without the tool's setting, importing onnxruntime writes a device id into HOME (the
    check can fail); through lightlayers' import it does not."""
    env, home, tmpdir, _ = _private_env(tmp_path)
    code = "from lightlayers.deploy.errors import require; require('onnxruntime')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert snapshot(home) == {".": "dir"} and list(tmpdir.iterdir()) == []


def test_telemetry_events_are_disabled_once_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from lightlayers.deploy.errors import require

    calls: list[int] = []
    monkeypatch.setattr(onnxruntime, "disable_telemetry_events", lambda: calls.append(1))
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    require("onnxruntime")
    assert calls and os.environ["ORT_DISABLE_TELEMETRY"] == "1"
    # A user who turned it on keeps it.
    calls.clear()
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")
    require("onnxruntime")
    assert calls == []
