"""lightlayers tune: the same budget per model, validation folds only, resumable after kill -9,
and lightlayers run --tuned training each model with its own best settings."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightlayers.cli import main

pytest.importorskip("optuna")

# One torch thread: two cores shared with other processes slow multi-threaded steps tenfold.
TUNE = ["tune", "--data", "digits", "--models", "paper-light-k1,paper-light-k2", "--epochs", "2",
        "--folds", "2", "--threads", "1"]


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def keys_and_texts(obj: object) -> list[str]:
    if isinstance(obj, dict):
        return [*map(str, obj), *(t for v in obj.values() for t in keys_and_texts(v))]
    if isinstance(obj, list):
        return [t for v in obj for t in keys_and_texts(v)]
    return [obj] if isinstance(obj, str) else []


def trial_states(db: Path) -> dict[str, list[tuple[int, str, float | None]]]:
    """Model -> (number, state, value) of every tuning trial, read from tune.db itself."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT s.study_name, t.number, t.state, v.value FROM trials t "
            "JOIN studies s ON s.study_id = t.study_id "
            "LEFT JOIN trial_values v ON v.trial_id = t.trial_id ORDER BY t.number").fetchall()
    finally:
        con.close()
    out: dict[str, list[tuple[int, str, float | None]]] = {}
    for model, number, state, value in rows:
        out.setdefault(model, []).append((number, state, value))
    return out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("tune") / "T"
    code, out, err = cli([*TUNE, "--budget", "3", "--out", str(folder), "--json"])
    assert code == 0, err
    return folder, json.loads(out)


def test_tune_json_same_budget_no_test_numbers(tuned: tuple[Path, dict]) -> None:
    folder, result = tuned
    assert result["folder"] == str(folder)
    assert [m["model"] for m in result["models"]] == ["paper-light-k1", "paper-light-k2"]
    for m in result["models"]:
        assert m["trials"] == 3 == m["complete"] + m["pruned"]
        assert m["best"]["params"]["lr"] > 0 and 0 <= m["best"]["value"] <= 1
        assert set(m["best"]["params"]) == {"lr", "batch_size", "weight_decay", "bn_momentum"}
    assert not [k for k in keys_and_texts(result) if "test" in k.lower() and k != str(folder)]
    # The store: no attribute or recorded setting names or holds a test number.
    con = sqlite3.connect(folder / "tune.db")
    try:
        texts = [str(x) for table in ("trial_user_attributes", "trial_system_attributes",
                                      "study_user_attributes", "study_system_attributes")
                 for row in con.execute(f"SELECT key, value_json FROM {table}") for x in row]
        for key, value in con.execute("SELECT key, value FROM lightlayers_tune"):
            texts += [key, *keys_and_texts(json.loads(value))]
        assert con.execute("SELECT count(*) FROM trial_user_attributes").fetchone()[0] >= 1
    finally:
        con.close()
    assert texts and not [t for t in texts if "test" in t.lower()]
    states = {st for rows in trial_states(folder / "tune.db").values() for _, st, _ in rows}
    assert states <= {"COMPLETE", "PRUNED"}


def test_tune_folder_table_fits_80_columns(tuned: tuple[Path, dict]) -> None:
    folder, result = tuned
    code, out, err = cli(["tune", str(folder)])
    assert code == 0, err
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80
    assert "budget 3 trials per model, 2 fold(s), objective auc" in out
    for m in result["models"]:
        row = next(x for x in lines if x.startswith(m["model"] + " "))
        assert row.split()[-2:] == [str(m["trials"]), str(m["pruned"])]
        assert f"{m['best']['value']:.4f} +- " in row


def test_tune_folder_bound_to_its_settings(tuned: tuple[Path, dict]) -> None:
    folder, _ = tuned
    before = trial_states(folder / "tune.db")
    code, _, err = cli([*TUNE, "--budget", "5", "--out", str(folder)])
    assert code == 2 and "other settings (budget differ)" in err
    assert len(err.strip().splitlines()) == 1
    assert trial_states(folder / "tune.db") == before


def test_run_tuned_trains_each_model_with_its_best_settings(
        tuned: tuple[Path, dict], tmp_path: Path) -> None:
    from lightlayers.runfolder.store import ResultsStore

    folder, result = tuned
    best = {m["model"]: m["best"]["params"] for m in result["models"]}
    run = tmp_path / "R"
    code, _, err = cli(["run", "--data", "digits", "--tuned", str(folder), "--seeds", "0,1",
                        "--epochs", "2", "--out", str(run), "--threads", "1", "--quiet",
                        "--no-report"])
    assert code == 0, err
    with ResultsStore(run / "results.db", create=False) as store:
        trials = store.trials()
        source = store.meta()["settings_source"]
    assert sorted((t["model"], t["seed"], t["status"]) for t in trials) == [
        (m, s, "done") for m in best for s in (0, 1)]
    for t in trials:
        record = t["config"]["tuned"]
        assert record["params"] == best[t["model"]]
        assert record["folder"] == str(folder) and record["budget"] == 3
        assert (record["folds"], record["objective"]) == (2, "auc")
        # What the trial trained with, as the trial itself recorded it.
        assert t["extra"]["protocol"]["lr"] == best[t["model"]]["lr"]
        assert t["extra"]["protocol"]["batch_size"] == best[t["model"]]["batch_size"]
    assert source["kind"] == "tuned" and source["budget"] == 3
    from lightlayers.report import write_report

    result = write_report(run, formats=("md", "html"), console=False)
    said = f"settings: tuned (budget 3, 2 folds, auc) from {folder}"
    assert said in (run / "report" / "table.md").read_text()
    html = result.html.read_text()
    assert f'<p id="settings-source">{said}</p>' in html


def test_kill_9_and_rerun_keeps_finished_trials_and_ends_at_the_budget(tmp_path: Path) -> None:
    folder = tmp_path / "T"
    argv = [*TUNE, "--budget", "4", "--out", str(folder), "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lightlayers.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = folder / "tune.db"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                states = trial_states(db) if db.is_file() else {}
            except sqlite3.OperationalError:  # Optuna is still creating its tables
                states = {}
            rows = states.get("paper-light-k1", [])
            if any(s == "COMPLETE" for _, s, _ in rows) and any(s == "RUNNING" for _, s, _ in
                                                              rows):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = trial_states(db)
    finished = {m: [r for r in rows if r[1] in ("COMPLETE", "PRUNED")]
                for m, rows in killed.items()}
    assert any(r[1] == "RUNNING" for rows in killed.values() for r in rows)

    code, _, err = cli(argv)
    assert code == 0, err
    after = trial_states(db)
    for model in ("paper-light-k1", "paper-light-k2"):
        done = [r for r in after[model] if r[1] in ("COMPLETE", "PRUNED")]
        assert len(done) == 4, after[model]
        assert set(finished.get(model, [])) <= set(done)  # kept as they were, not rerun
        assert not [r for r in after[model] if r[1] == "RUNNING"]


@pytest.mark.parametrize(("search", "message"), [
    ("epochs: [1, 3]", "search.epochs: epochs cannot be tuned"),
    ("lr: [0, 0.01]", "search.lr: 0 breaks the setting's rule"),
    ("lr: [0.01, 0.001]", "search.lr: LOW must be below HIGH"),
    ("label_smoothing: [0, 1.5]", "search.label_smoothing: 1.5 breaks the setting's rule"),
    ("batch_size: [0, 32]", "search.batch_size: 0 breaks the setting's rule"),
    ("no_such: [1, 2]", "search.no_such: not a protocol setting"),
])
def test_search_errors_name_the_setting(tmp_path: Path, search: str, message: str) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"search:\n  {search}\n")
    code, _, err = cli(["tune", str(cfg), "--data", "digits", "--out", str(tmp_path / "T")])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "T").exists()


def test_search_narrows_the_space(tmp_path: Path) -> None:
    from lightlayers.config import load_config
    from lightlayers.schema import Space
    from lightlayers.tune import search_space

    cfg = load_config(None, protocol="improved",
                      search={"lr": [1e-3, 2e-3], "dropout": None, "batch_size": [32]})
    space = search_space(cfg)
    assert space["lr"] == Space("float", 1e-3, 2e-3, log=True)
    assert space["batch_size"] == Space("choice", choices=(32,))
    assert "dropout" not in space and "augment" in space


def test_missing_optuna_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    code, _, err = cli([*TUNE, "--budget", "1", "--out", str(tmp_path / "T")])
    assert code == 2
    assert err.strip() == "lightlayers tune: error: lightlayers tune needs optuna: pip install " \
        "'lightlayers[tune]'"


def test_report_says_a_study_without_tuning_ran_a_fixed_recipe() -> None:
    from lightlayers.report.table import settings_sentence

    assert settings_sentence({}) == "settings: fixed recipe"
    assert settings_sentence({"settings_source": {"kind": "fixed"}}) == "settings: fixed recipe"


def test_run_tuned_refuses_other_data(tuned: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = tuned
    # Another validation split is other data: the settings were chosen on the first one.
    code, _, err = cli(["run", "--data", "digits", "--split-seed", "1", "--tuned", str(folder),
                        "--epochs", "1", "--out", str(tmp_path / "R"), "--threads", "1",
                        "--quiet", "--no-report"])
    assert code == 2 and "was tuned on other data" in err, err
    assert len(err.strip().splitlines()) == 1


def test_folds_keep_each_patient_in_one_fold() -> None:
    from types import SimpleNamespace

    import numpy as np

    from lightlayers.data.dataset import Split
    from lightlayers.data.splits import DEFAULT_PATIENT_PATTERN
    from lightlayers.tune import make_folds

    rng = np.random.default_rng(0)
    names, labels = [], []
    for p in range(40):  # 40 patients of 1-4 images each, both naming schemes of the X-rays
        label = p % 2
        for i in range(1 + p % 4):
            names.append(f"person{p}_virus_{i}.jpeg" if label else f"IM-{p:04d}-{i:04d}.jpeg")
            labels.append(label)
    images = rng.integers(0, 255, (len(names), 1, 4, 4), dtype=np.uint8)
    labels_a = np.array(labels, np.int64)
    half = len(names) // 2
    ds = SimpleNamespace(
        splits={"train": Split(images[:half], labels_a[:half], tuple(names[:half])),
                "val": Split(images[half:], labels_a[half:], tuple(names[half:]))},
        identity={"options": {"patient_pattern": DEFAULT_PATIENT_PATTERN}})

    def patient(name: str) -> str:
        return name.split("_")[0] if name.startswith("person") else name[:7]

    folds = make_folds(ds, 3, seed=0)
    assert len(folds) == 3
    held = [{patient(n) for n in h.ids} for _, h in folds]
    assert sum(len(h) for h in held) == 40 and not (held[0] & held[1] | held[1] & held[2])
    for (train, h), patients in zip(folds, held, strict=True):
        assert not {patient(n) for n in train.ids} & patients
        assert len(train) + len(h) == len(names) and set(h.labels.tolist()) == {0, 1}


def test_tuning_folder_refuses_other_data(tmp_path: Path) -> None:
    import numpy as np

    def npz(seed: int) -> None:
        r = np.random.default_rng(seed)
        arrays = {f"{s}_images": r.integers(0, 256, (n, 8, 8), dtype=np.uint8)
                  for s, n in (("train", 60), ("val", 20), ("test", 20))}
        arrays |= {f"{s}_labels": np.arange(len(arrays[f"{s}_images"])) % 2
                   for s in ("train", "val", "test")}
        np.savez(tmp_path / "x.npz", **arrays)

    npz(0)
    argv = ["tune", "--data", str(tmp_path / "x.npz"), "--models", "paper-light-k1",
            "--size", "8", "--budget", "1", "--epochs", "1", "--folds", "1", "--threads", "1",
            "--out", str(tmp_path / "T"), "--quiet"]
    code, _, err = cli(argv)
    assert code == 0, err
    npz(1)  # the same path, other images
    code, _, err = cli(argv)
    assert code == 2 and "was tuned on other data" in err, err
    assert len(err.strip().splitlines()) == 1


def test_frozen_backbone_features_computed_once_per_fold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightlayers.features as features

    calls: list[int] = []
    real = features.compute_features

    def counted(backbone, loader, device, amp):  # type: ignore[no-untyped-def]
        calls.append(len(loader))
        return real(backbone, loader, device, amp)

    monkeypatch.setattr(features, "compute_features", counted)
    code, out, err = cli(["tune", "--data", "digits", "--models", "transfer-resnet18",
                          "--weights", "none", "--size", "32", "--budget", "2", "--epochs", "2",
                          "--folds", "2", "--threads", "1", "--out", str(tmp_path / "T"),
                          "--json"])
    assert code == 0, err
    assert json.loads(out)["models"][0]["trials"] == 2
    # Two folds, each a training and a held-out part: four passes for both trials together.
    assert len(calls) == 4


@pytest.mark.parametrize("folds", ["1", "2"])
def test_tuning_never_loads_the_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           folds: str) -> None:
    import lightlayers.data as data
    import lightlayers.data.loader as loader

    tests: list[object] = []
    loaded: list[object] = []
    real_load, real_init = data.load_dataset, loader.DeviceLoader.__init__

    def load(*a, **kw):  # type: ignore[no-untyped-def]
        ds = real_load(*a, **kw)
        tests.append(ds.splits["test"])
        return ds

    def init(self, split, *a, **kw):  # type: ignore[no-untyped-def]
        loaded.append(split)
        real_init(self, split, *a, **kw)

    monkeypatch.setattr(data, "load_dataset", load)
    monkeypatch.setattr(loader.DeviceLoader, "__init__", init)
    code, _, err = cli(["tune", "--data", "digits", "--models", "paper-light-k1", "--budget",
                        "1", "--epochs", "1", "--folds", folds, "--threads", "1", "--quiet",
                        "--out", str(tmp_path / "T")])
    assert code == 0, err
    assert tests and len(loaded) == 2 * int(folds)
    assert not [s for s in loaded if any(s is t for t in tests)]


def test_ray_runs_tuning_trials_as_tasks_with_the_same_budget(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    folder = tmp_path / "T"
    code, out, err = cli(["tune", "--data", "digits", "--models", "paper-light-k1", "--budget",
                          "3", "--epochs", "2", "--folds", "1", "--threads", "1",
                          "--executor", "ray", "--cpus-per-trial", "1", "--out", str(folder),
                          "--json", "--quiet"])
    assert code == 0, err
    (m,) = json.loads(out)["models"]
    assert m["trials"] == m["complete"] == 3
    con = sqlite3.connect(folder / "tune.db")
    try:
        # The workers' per-epoch objectives, told to Optuna by the driver.
        steps = con.execute("SELECT count(*) FROM trial_intermediate_values").fetchone()[0]
    finally:
        con.close()
    assert steps == 3 * 2


def test_tuned_and_untuned_folders_do_not_pool(tuned: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = tuned
    common = ["--data", "digits", "--epochs", "2", "--threads", "1", "--quiet", "--no-report"]
    code, _, err = cli(["run", "--tuned", str(folder), "--seeds", "0", "--out",
                        str(tmp_path / "tuned"), *common])
    assert code == 0, err
    # The same models, protocol and data under the fixed recipe, another seed.
    code, _, err = cli(["run", "--models", "paper-light-k1,paper-light-k2", "--protocol", "seed",
                        "--seeds", "1", "--out", str(tmp_path / "fixed"), *common])
    assert code == 0, err
    code, _, err = cli(["report", str(tmp_path / "tuned"), str(tmp_path / "fixed"), "--out",
                        str(tmp_path / "pooled"), "--quiet"])
    assert code == 2
    assert "model_protocols" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pooled").exists()
