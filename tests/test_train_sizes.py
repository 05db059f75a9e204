"""Training sizes (learning curves): nested subsets drawn by patient and class, their keys and
resume, the size errors, and the learning-curve report from a small real run."""

from __future__ import annotations

import csv
import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import image_bytes

from lightlayers.cli import main as cli
from lightlayers.config import ConfigError, load_config
from lightlayers.data import load_dataset
from lightlayers.data.splits import DEFAULT_PATIENT_PATTERN, patient_ids
from lightlayers.data.subsets import (
    SubsetError,
    base_key,
    draw_subset,
    parse_train_size,
    parse_train_sizes,
    sized_key,
)
from lightlayers.study import run_study


# --- sizes ---------------------------------------------------------------------------------
def test_sizes_are_fractions_or_images_per_class_and_the_whole_split_is_all():
    assert [s.label for s in parse_train_sizes("0.05,0.1,0.25,1")] == ["0.05", "0.1", "0.25",
                                                                        "all"]
    assert [s.label for s in parse_train_sizes([50, 100, "250/class", "all"])] == [
        "50/class", "100/class", "250/class", "all"]
    assert parse_train_size(1.0).full and parse_train_size("ALL").full
    assert parse_train_size("0.10") == parse_train_size(0.1)
    for bad in ("0", "-0.5", "1.5", "abc", "nan", "inf", "", "0.5/class", "1/class", True):
        with pytest.raises(ValueError, match="not a training size"):
            parse_train_size(bad)
    with pytest.raises(ValueError, match=r"repeats the size 0\.1"):
        parse_train_sizes("0.1,0.10")


def test_a_bad_size_is_a_config_error_naming_the_setting_from_yaml_and_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"train_sizes: '1\.5' is not a training size"):
        load_config(data="digits", train_sizes=("0.5", "1.5"))
    yaml = tmp_path / "s.yaml"
    yaml.write_text("data: digits\ntrain_sizes: [0.1, 50, all]\n")
    cfg = load_config(yaml)
    assert cfg.train_sizes == ("0.1", "50", "all")
    assert [s.label for s in cfg.train_size_plan()] == ["0.1", "50/class", "all"]
    assert [s.label for s in load_config(data="digits").train_size_plan()] == ["all"]


def test_the_whole_split_keeps_the_bare_data_key():
    assert sized_key("digits@abc", None) == "digits@abc"
    assert sized_key("digits@abc", "0.1") == "digits@abc|train=0.1"
    assert base_key("digits@abc|train=50/class") == "digits@abc"


# --- nested subsets, by patient --------------------------------------------------------------
@pytest.fixture(scope="module")
def patient_tree(tmp_path_factory) -> Path:
    """Chest-X-ray-style file names: NORMAL `IM-NNNN-k.png`, PNEUMONIA `personN_virus_k.png`,
    one to four images per patient, no val split (carved by patient)."""
    root = tmp_path_factory.mktemp("patients")
    rng = np.random.default_rng(7)
    n = 0
    for split, patients in (("train", (40, 60)), ("test", (6, 8))):
        for cls, count in zip(("NORMAL", "PNEUMONIA"), patients, strict=True):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for p in range(count):
                pid = p + (1000 if split == "test" else 0)
                for k in range(int(rng.integers(1, 5))):
                    name = (f"IM-{pid:04d}-{k:04d}.png" if cls == "NORMAL"
                            else f"person{pid}_virus_{k}.png")
                    (folder / name).write_bytes(image_bytes(n, size=(10, 10)))
                    n += 1
    return root


def _patients_of(ds, members):
    ids = [ds.splits["train"].ids[i] for i in members]
    return set(patient_ids(ids, DEFAULT_PATIENT_PATTERN))


def test_subsets_nest_per_class_and_take_whole_patients(patient_tree):
    ds = load_dataset(patient_tree, size=8, progress=False)
    train = ds.splits["train"]
    labels = np.asarray(train.labels)
    every_patient = patient_ids(list(train.ids), DEFAULT_PATIENT_PATTERN)
    assert None not in every_patient
    sizes = parse_train_sizes("0.1,0.25,5,0.5,20,all")
    subs = {s.label: draw_subset(ds, s, seed=0) for s in sizes}
    ordered = sorted(subs.values(), key=lambda s: len(s.members))
    assert [len(s.members) for s in ordered] == sorted({len(s.members) for s in ordered})
    for small, large in itertools.pairwise(ordered):
        for c in range(ds.num_classes):
            a = {int(i) for i in small.members if labels[i] == c}
            b = {int(i) for i in large.members if labels[i] == c}
            assert a < b, (small.size.label, large.size.label, ds.classes[c])
    for sub in subs.values():
        chosen = _patients_of(ds, sub.members)
        # A patient is in or out with every one of their training images.
        held = {int(i) for i, p in enumerate(every_patient) if p in chosen}
        assert held == {int(i) for i in sub.members}
        counts = np.bincount(labels[sub.members], minlength=2)
        have = np.bincount(labels, minlength=2)
        if sub.size.fraction is not None:
            target = np.maximum(1, np.round(sub.size.fraction * have))
        else:
            target = np.full(2, sub.size.per_class)
        # At least the target, and at most one patient (<= 4 images) past it, per class.
        assert (counts >= target).all() and (counts < target + 4).all(), sub.size.label
    assert len(subs["all"].members) == len(train)
    # The same order at another decode size and another load: every model gets these images.
    again = load_dataset(patient_tree, size=12, progress=False)
    for s in sizes:
        assert draw_subset(again, s, 0).digest == subs[s.label].digest
    # Another split seed draws other patients.
    assert draw_subset(ds, sizes[2], seed=1).digest != subs["0.25"].digest


def test_a_size_larger_than_a_class_is_an_error_naming_the_class(patient_tree):
    ds = load_dataset(patient_tree, size=8, progress=False)
    normal = int((np.asarray(ds.splits["train"].labels) == ds.classes.index("NORMAL")).sum())
    with pytest.raises(SubsetError, match=rf"class 'NORMAL' has in the training split "
                                          rf"\({normal} images\); give at most {normal}"):
        draw_subset(ds, parse_train_size(normal + 1), 0)
    assert len(draw_subset(ds, parse_train_size(normal), 0).members) >= 2 * normal


def test_cli_refuses_a_size_larger_than_a_class_before_training(tmp_path, capsys):
    out = tmp_path / "R"
    code = cli(["run", "--data", "digits", "--models", "paper-conv", "--train-sizes", "50,500",
                "--epochs", "1", "--threads", "1", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "500 images per class is more than class" in err and "give at most" in err
    assert not out.exists()  # nothing trained, nothing left behind


# --- keys, resume and the record ---------------------------------------------------------------
def _keys(run: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(run / "results.db") as c:
        return sorted(c.execute("SELECT key, status FROM trials").fetchall())


def test_sizes_key_their_own_trials_and_the_whole_split_resumes_an_older_folder(tmp_path,
                                                                               capsys):
    out = tmp_path / "R"
    base = dict(data="digits", models=("paper-conv",), seeds=(0,), epochs=1, threads=1,
                protocol="seed", report=False, out=str(out))
    first = run_study(load_config(**base), progress=False)
    [(plain, _)] = _keys(out)
    assert first.ran == 1 and "train=" not in plain
    # A study without sizes gains them: its trial is the whole-split trial, kept as it is.
    capsys.readouterr()
    sized = run_study(load_config(**base, train_sizes=("0.25", "1")), progress=True)
    assert (sized.ran, sized.skipped) == (1, 1)
    err = capsys.readouterr().err
    assert "train size 0.25: " in err and "done paper-conv seed 0 (train 0.25): acc" in err
    keys = _keys(out)
    assert [k for k, _ in keys] == [plain, plain + "|train=0.25"]
    assert {s for _, s in keys} == {"done"}
    again = run_study(load_config(**base, train_sizes=("0.25", "all")), progress=False)
    assert (again.ran, again.skipped) == (0, 2)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["train_size"], r["status"]) for r in rows] == [("all", "done"), ("0.25", "done")]
    assert int(rows[1]["train_images"]) < int(rows[0]["train_images"])
    # Each size has its own checkpoint.
    assert len(list((out / "checkpoints").glob("*.safetensors"))) == 2
    # A crash while the subset's trial ran (as `kill -9` leaves it): the next run redoes it
    # alone, over its own checkpoint.
    with sqlite3.connect(out / "results.db") as c:
        c.execute("UPDATE trials SET status='running' WHERE key LIKE '%|train=0.25'")
    redo = run_study(load_config(**base, train_sizes=("0.25", "1")), progress=False)
    assert (redo.ran, redo.skipped) == (1, 1)
    assert {s for _, s in _keys(out)} == {"done"}


def test_a_ray_worker_draws_the_trials_size_from_the_data_it_loads(tmp_path):
    from lightlayers.executors.ray import DataOnNode, trial_task
    from lightlayers.fingerprint import data_key
    from lightlayers.spec import TrialSpec

    cfg = load_config(data="digits", models=("paper-conv",), epochs=1, threads=1,
                      protocol="seed", report=False, out=str(tmp_path / "R"))
    ds = load_dataset("digits", progress=False)
    key = sized_key(data_key(ds), "0.25")
    node = DataOnNode("digits", None, None, "stretch", cfg.val_fraction, cfg.split_seed,
                      base_key(key))
    out = trial_task(TrialSpec("paper-conv", 0, "seed", "0.25"), node, key, cfg.to_dict())
    assert "result" in out, out.get("failure")
    record = out["result"].extra["train_set"]
    assert record["size"] == "0.25"
    assert record["indices"] == draw_subset(ds, parse_train_size("0.25"), 0).members.tolist()
    assert record["images"] < record["of"] == len(ds.splits["train"])


# --- the report of a small real run -------------------------------------------------------------
@pytest.fixture(scope="module")
def curve_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("curve") / "R"
    code = cli(["run", "--data", "digits", "--models", "paper-light-k1,paper-conv",
                "--train-sizes", "0.1,0.5,1", "--epochs", "2", "--seeds", "0,1",
                "--threads", "1", "--quiet", "--out", str(out)])
    assert code == 0
    return out


def test_every_size_records_its_nested_training_images(curve_run):
    with sqlite3.connect(curve_run / "results.db") as c:
        rows = c.execute("SELECT status, config, extra FROM trials").fetchall()
    assert len(rows) == 12 and {r[0] for r in rows} == {"done"}
    sets: dict[str, set[tuple[int, ...]]] = {}
    for _, config, extra in rows:
        size = json.loads(config).get("train_size") or "all"
        record = json.loads(extra)["train_set"]
        assert record["size"] == size
        members = tuple(record.get("indices") or range(record["of"]))
        assert len(members) == record["images"] == sum(record["per_class"].values())
        sets.setdefault(size, set()).add(members)
    # One subset per size, whatever the model and seed; sizes differ and nest.
    assert all(len(v) == 1 for v in sets.values())
    small, half, full = (set(next(iter(sets[s]))) for s in ("0.1", "0.5", "all"))
    assert len(small) < len(half) < len(full)
    assert small < half < full


def test_the_report_draws_the_learning_curve(curve_run, capsys):
    report = curve_run / "report"
    for name in ("learning_curve_accuracy", "learning_curve_balanced_accuracy",
                 "learning_curve_auc", "budget_accuracy", "budget_auc"):
        assert (report / "figures" / f"{name}.png").stat().st_size > 1000
    rows = list(csv.DictReader((report / "learning_curve.csv").open()))
    assert [(r["model"], r["train_size"]) for r in rows] == [
        (m, s) for m in ("paper-light-k1", "paper-conv") for s in ("0.1", "0.5", "all")]
    images = [int(r["train_images"]) for r in rows[:3]]
    assert images == sorted(images) and len(set(images)) == 3
    assert all(r["seeds"] == "0 1" and r["accuracy_n"] == "2" for r in rows)
    # The tables show the whole split only: two seeds per model, not six.
    table = list(csv.DictReader((report / "table.csv").open()))
    assert [r["n_seeds"] for r in table] == ["2", "2"]
    page = (report / "report.html").read_text()
    assert "<h2 id=\"learning-curve\">Learning curves</h2>" in page
    assert "id='reach'" in page and "id='crossings'" in page
    assert "plot against parameters only" in page  # no --deployment: no int8 latency

    assert cli(["report", str(curve_run), "--json", "--quiet", "--reach",
                "accuracy:0.05,0.99"]) == 0
    obj = json.loads(capsys.readouterr().out)
    curve = obj["learning_curve"]
    assert [s["size"] for s in curve["sizes"]] == ["0.1", "0.5", "all"]
    assert len(curve["points"]) == 6
    assert curve["reach"]["targets"] == [0.05, 0.99]
    # Every model beats 0.05 at the smallest size; 0.99 is out of reach after 2 epochs.
    assert all(v == {"0.05": "0.1", "0.99": None}
               for v in curve["reach"]["smallest_size"].values())
    [pair] = curve["crossings"]
    assert [p["size"] for p in pair["per_size"]] == ["0.1", "0.5", "all"]
    assert pair["sizes_excluding_zero"] == [p["size"] for p in pair["per_size"]
                                            if p["interval_excludes_zero"]]
    assert curve["latency_measured"] is False


def test_a_bad_reach_is_one_line(curve_run, capsys):
    assert cli(["report", str(curve_run), "--quiet", "--reach", "accuracy:1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a score in (0, 1]" in err


def test_a_study_of_one_size_has_no_learning_curve(tmp_path, capsys):
    out = tmp_path / "R"
    assert cli(["run", "--data", "digits", "--models", "paper-conv", "--epochs", "1",
                "--threads", "1", "--quiet", "--out", str(out)]) == 0
    assert not (out / "report" / "learning_curve.csv").exists()
    assert "learning-curve" not in (out / "report" / "report.html").read_text()
    assert cli(["report", str(out), "--json", "--quiet", "--format", "csv"]) == 0
    assert json.loads(capsys.readouterr().out)["learning_curve"] is None


def test_folders_of_other_seeds_pool_their_curves(tmp_path, capsys):
    def run(seed: int, sizes: str) -> Path:
        out = tmp_path / f"s{seed}"
        assert cli(["run", "--data", "digits", "--models", "paper-conv", "--train-sizes", sizes,
                    "--epochs", "1", "--seeds", str(seed), "--protocol", "seed", "--threads",
                    "1", "--quiet", "--no-report", "--json", "--out", str(out)]) == 0
        trials = json.loads(capsys.readouterr().out)["trials"]
        assert sorted(t["train_size"] for t in trials) == sorted(
            s.label for s in parse_train_sizes(sizes))
        return out

    s0, s1 = run(0, "0.5,1"), run(1, "0.5,1")
    assert cli(["report", str(s0), str(s1), "--out", str(tmp_path / "P"), "--json",
                "--quiet", "--format", "csv"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert [m["seeds"] for m in obj["models"]] == [[0, 1]]
    assert [(p["size"], p["seeds"]) for p in obj["learning_curve"]["points"]] == [
        ("0.5", [0, 1]), ("all", [0, 1])]
    assert (tmp_path / "P" / "learning_curve.csv").is_file()
    pooled = list(csv.DictReader((tmp_path / "P" / "results.csv").open()))
    assert sorted((r["train_size"], r["seed"]) for r in pooled) == [
        ("0.5", "0"), ("0.5", "1"), ("all", "0"), ("all", "1")]
    # A folder whose tables show another size would mix amounts of data in one table.
    other = run(2, "0.25,0.5")
    assert cli(["report", str(s0), str(other), "--out", str(tmp_path / "Q"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other training sizes in their tables" in err


def test_a_tuned_study_uses_each_models_settings_at_every_size(tmp_path, capsys):
    pytest.importorskip("optuna")
    tune = tmp_path / "T"
    assert cli(["tune", "--data", "digits", "--models", "paper-conv", "--budget", "1",
                "--epochs", "1", "--folds", "1", "--threads", "1", "--quiet",
                "--out", str(tune)]) == 0
    out = tmp_path / "R"
    assert cli(["run", "--data", "digits", "--tuned", str(tune), "--train-sizes", "0.5,1",
                "--epochs", "1", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    with sqlite3.connect(out / "results.db") as c:
        configs = [json.loads(r[0]) for r in c.execute("SELECT config FROM trials ORDER BY id")]
    assert len(configs) == 2
    assert configs[0]["tuned"]["settings"] == configs[1]["tuned"]["settings"]
    assert [c.get("train_size") for c in configs] == ["0.5", None]
    page = (out / "report" / "report.html").read_text()
    assert "tuned on the whole training split and used at every size" in page


def test_a_manifests_patient_column_groups_the_subsets(tmp_path):
    """File names that name no patient; the manifest's patient column does."""
    rng = np.random.default_rng(3)
    lines, n = ["path,label,split,patient"], 0
    for split, count in (("train", 30), ("test", 6)):
        for p in range(count):
            label = ("cat", "dog")[p % 2]
            for _ in range(int(rng.integers(1, 4))):
                (tmp_path / f"img{n}.png").write_bytes(image_bytes(n, size=(10, 10)))
                lines.append(f"img{n}.png,{label},{split},{split}-subject-{p}")
                n += 1
    manifest = tmp_path / "list.csv"
    manifest.write_text("\n".join(lines) + "\n")
    ds = load_dataset(manifest, size=8, progress=False)
    column = {row.split(",")[0]: row.split(",")[3] for row in lines[1:]}
    train_ids = ds.splits["train"].ids
    for size in parse_train_sizes("0.25,0.5"):
        sub = draw_subset(ds, size, 0)
        chosen = {column[train_ids[i]] for i in sub.members}
        held = {i for i, name in enumerate(train_ids) if column[name] in chosen}
        assert held == {int(i) for i in sub.members}, size.label
        assert 0 < len(sub.members) < len(train_ids)


def test_measured_int8_latency_gets_its_own_panel(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "R"
    # One model: exporting and timing each trial is the slow part.
    assert cli(["run", "--data", "digits", "--models", "paper-conv", "--train-sizes", "0.5,1",
                "--epochs", "1", "--threads", "1", "--deployment", "--quiet",
                "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "report" / "learning_curve.csv").open()))
    assert len(rows) == 2 and all(float(r["ort_int8_latency_ms"]) > 0 for r in rows)
    assert "plot against parameters only" not in (out / "report" / "report.html").read_text()
    assert cli(["report", str(out), "--json", "--quiet", "--format", "csv"]) == 0
    assert json.loads(capsys.readouterr().out)["learning_curve"]["latency_measured"] is True
    from lightlayers.report.curves import curve_figures, learning_curve
    from lightlayers.report.load import load_run

    curve = learning_curve(load_run(out))
    budget = {s.name: s.figure for s in curve_figures(curve) if s.name.startswith("budget")}
    assert [len(f.axes) for f in budget.values()] == [2, 2]  # parameters, then latency
    assert [f.get_suptitle().split(" against")[0] for f in budget.values()] == ["Accuracy",
                                                                                "AUC"]


def test_export_and_teachers_choose_among_the_tables_size(curve_run):
    from lightlayers.runfolder.trials import choose_trial, find_trials

    trials = find_trials(curve_run)
    # The curve's smaller sizes are not candidates: the whole split's trials are.
    assert len(trials) == 4 and {t.row["config"].get("train_size") for t in trials} == {None}
    best, _, n = choose_trial(curve_run, "paper-conv")
    assert n == 2 and best.row["config"].get("train_size") is None


def test_every_sizes_predictions_are_exported(curve_run, tmp_path):
    import csv
    import gzip
    import io

    from lightlayers.report import ReportError
    from lightlayers.report.load import load_run
    from lightlayers.report.predictions import predictions_csv_gz, read_predictions

    out = tmp_path / "p.csv.gz"
    out.write_bytes(predictions_csv_gz(load_run(curve_run)))
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(out.read_bytes()).decode())))
    keys = {r["trial_key"] for r in rows}
    assert len(keys) == 12  # 2 models x 2 seeds x 3 sizes
    assert {k.rsplit("|train=", 1)[-1] for k in keys if "|train=" in k} == {"0.1", "0.5"}
    with pytest.raises(ReportError, match="learning curve's sizes"):
        read_predictions(out)
