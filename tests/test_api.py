"""The Python API (lightlayers.run_study, open_run, Run, Trial) on real studies of the digits,
and docs/python.md, whose code blocks run here as written."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lightlayers as L
from lightlayers.config import ConfigError
from lightlayers.metrics.registry import trial_metrics
from lightlayers.runfolder.store import ResultsStore

DOCS = Path(__file__).resolve().parents[1] / "docs" / "python.md"
TINY = {"data": "digits", "epochs": 1, "size": 8, "threads": 1, "report": False}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> L.Run:
    """Two models, two seeds; paper-conv with an absurd learning rate, so its trials fail with
    a non-finite loss while paper-light-k2's finish."""
    out = tmp_path_factory.mktemp("api") / "mixed"
    return L.run_study(models=["paper-light-k2", "paper-conv"], seeds=[0, 1], out=str(out),
                       model_protocols={"paper-conv": {"lr": 1e38}}, **TINY)


def test_docs_code_blocks_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", DOCS.read_text(), re.M | re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOCS}:block{i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "'done': 4" in out and "paper-conv" in out
    df = namespace["df"]
    assert len(df) == 4  # type: ignore[arg-type]
    assert (tmp_path / "runs" / "digits-demo" / "results.db").is_file()


def test_trials_are_typed_records(mixed_run: L.Run) -> None:
    trials = mixed_run.trials()
    assert [(t.model, t.seed, t.status) for t in trials] == [
        ("paper-light-k2", 0, "done"), ("paper-light-k2", 1, "done"),
        ("paper-conv", 0, "failed"), ("paper-conv", 1, "failed")]
    done, failed = trials[0], trials[2]
    assert dataclasses.is_dataclass(done) and done.protocol == "improved"
    assert 0 <= done.metrics["accuracy"] <= 1 and done.metrics["params_total"] == 4392
    assert done.history[0]["epoch"] == 1 and "val_loss" in done.history[0]
    assert done.checkpoint is not None and done.checkpoint.is_file()
    assert done.checkpoint.is_absolute() and done.checkpoint.suffix == ".safetensors"
    p = done.predictions
    assert p is not None and p.classes == tuple(str(i) for i in range(10))
    assert p.probs.shape == (len(p.labels), 10)
    assert np.allclose(p.probs.sum(axis=1), 1, atol=1e-4)
    assert np.isclose((p.predicted == p.labels).mean(), done.metrics["accuracy"])
    assert np.asarray(done.confusion).sum() == len(p.labels)
    assert done.settings["epochs"] == 1 and done.settings["size"] == 8
    # The failed trial: its error, no numbers of the test split, no weights.
    assert "non-finite training loss" in (failed.error or "") and failed.attempts == 1
    assert "accuracy" not in failed.metrics
    assert failed.predictions is None and failed.checkpoint is None
    assert failed.settings["model_protocols"] == {"paper-conv": {"lr": 1e38}}


def test_filters(mixed_run: L.Run) -> None:
    assert [t.model for t in mixed_run.trials(status="failed")] == ["paper-conv"] * 2
    assert len(mixed_run.trials(status=["done", "failed"])) == 4
    assert [t.seed for t in mixed_run.trials(model="paper-light-k2")] == [0, 1]
    assert mixed_run.trials(status="pending") == []
    with pytest.raises(L.RunError, match="'finished' is not one of pending, running, done"):
        mixed_run.trials(status="finished")


def test_table_has_one_row_per_trial_with_the_same_keys(mixed_run: L.Run) -> None:
    rows = mixed_run.table()
    assert len(rows) == 4 and len({tuple(r) for r in rows}) == 1
    keys = list(rows[0])
    registered = [m.name for m in trial_metrics()]
    assert keys[:4] == ["model", "seed", "protocol", "status"]
    assert keys[4:4 + len(registered)] == registered  # results.csv's order
    assert keys[-4:] == ["attempts", "error", "epochs", "checkpoint"]
    done, failed = rows[0], rows[2]
    assert done["epochs"] == 1 and done["error"] is None and Path(done["checkpoint"]).is_file()
    assert failed["accuracy"] is None and failed["checkpoint"] is None
    assert "non-finite" in failed["error"]
    # The same numbers as results.csv and the store.
    with ResultsStore(mixed_run.path / "results.db", create=False, readonly=True) as store:
        assert [r["accuracy"] for r in rows] == [t["accuracy"] for t in store.trials()]
    assert [r["model"] for r in mixed_run.table(status="done")] == ["paper-light-k2"] * 2


def test_to_pandas_is_tidy(mixed_run: L.Run) -> None:
    df = mixed_run.to_pandas()
    assert df.shape[0] == 4 and list(df.columns) == list(mixed_run.table()[0])
    assert df["accuracy"].dtype == "float64" and df["accuracy"].isna().tolist() == [
        False, False, True, True]
    assert str(df["params_total"].dtype) == "Int64" and str(df["collapsed"].dtype) == "boolean"
    assert df["seed"].dtype == "int64"
    assert df.groupby("model", sort=False)["status"].first().to_dict() == {
        "paper-light-k2": "done", "paper-conv": "failed"}
    empty = mixed_run.to_pandas(status="running")
    assert empty.shape == (0, df.shape[1]) and list(empty.columns) == list(df.columns)


def test_to_pandas_without_pandas_names_the_extra(mixed_run: L.Run,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # as when it is not installed
    with pytest.raises(ImportError) as e:
        mixed_run.to_pandas()
    assert str(e.value) == ("Run.to_pandas() needs pandas: pip install 'lightlayers[pandas]'")
    assert len(mixed_run.table()) == 4  # the rows need nothing more


def test_open_run_refuses_what_is_not_a_run_folder(tmp_path: Path, mixed_run: L.Run) -> None:
    with pytest.raises(L.RunError, match=r"no such run folder; run `lightlayers run --out"):
        L.open_run(tmp_path / "missing")
    with pytest.raises(L.RunError, match=r"is not a run folder \(it holds no results.db\)"):
        L.open_run(tmp_path)
    by_db = L.open_run(mixed_run.path / "results.db")
    assert by_db.path == mixed_run.path and by_db.counts == {
        "pending": 0, "running": 0, "done": 2, "failed": 2}


def test_rerun_skips_done_trials_and_other_settings_are_refused(mixed_run: L.Run) -> None:
    before = [t.metrics.get("total_time_s") for t in mixed_run.trials(status="done")]
    again = L.run_study(models=["paper-light-k2"], seeds=[0, 1], out=str(mixed_run.path),
                        model_protocols={"paper-conv": {"lr": 1e38}}, **TINY)
    assert [t.metrics.get("total_time_s") for t in again.trials(status="done")] == before
    with pytest.raises(ConfigError, match="other settings"):
        L.run_study(models=["paper-light-k2"], seeds=[0], out=str(mixed_run.path),
                    **{**TINY, "epochs": 2})


def test_yaml_with_keyword_overrides_and_its_protocol(tmp_path: Path) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text("data: digits\nmodels: [paper-light-k1]\nseeds: [0, 1]\nprotocol: seed\n"
                   "size: 8\nthreads: 1\nreport: false\n")
    run = L.run_study(cfg, seeds=[3], epochs=1, out=str(tmp_path / "r"))
    (t,) = run.trials()
    assert (t.seed, t.protocol, t.status) == (3, "seed", "done")
    # A mapping works too; without a protocol anywhere it is the command line's, improved.
    run = L.run_study({"models": "paper-light-k1", "seeds": [0]}, out=str(tmp_path / "m"),
                      **TINY)
    assert [t.protocol for t in run.trials()] == ["improved"]
    with pytest.raises(ConfigError, match="epochs"):
        L.run_study(cfg, epochs=0, out=str(tmp_path / "bad"))


def test_report_is_written_on_request(mixed_run: L.Run) -> None:
    html = mixed_run.report(formats=("csv", "html"))
    assert html == mixed_run.path / "report" / "report.html" and html.is_file()
    assert (mixed_run.path / "report" / "table.csv").is_file()


def test_import_stays_light() -> None:
    code = ("import sys, lightlayers as L; L.run_study; L.open_run; L.Run; "
            "assert not {'torch', 'pandas', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_study_with_training_sizes_has_a_row_per_size(tmp_path: Path) -> None:
    run = L.run_study(models=["paper-light-k1"], seeds=[0], train_sizes=["0.5", "all"],
                      out=str(tmp_path / "sizes"), **TINY)
    assert [(t.train_size, t.status) for t in run.trials()] == [("0.5", "done"), (None, "done")]
    rows = run.table()
    assert [(r["train_size"], r["train_images"]) for r in rows] == [
        ("0.5", run.trials()[0].train_images), ("all", run.trials()[1].train_images)]
    assert rows[0]["train_images"] < rows[1]["train_images"]
    # The columns results.csv has, in its order.
    header = (run.path / "results.csv").read_text().splitlines()[0].split(",")
    assert [c for c in rows[0] if c in header] == header
    df = run.to_pandas()
    assert len(df) == 2 and str(df["train_images"].dtype) == "Int64"
