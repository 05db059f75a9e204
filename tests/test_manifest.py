"""CSV manifests (path,label[,split][,patient]) over real chest X-rays: reading, column names,
patient grouping, a study trained from one, and every refusal in one line."""

from __future__ import annotations

import csv
import hashlib
import re
import tarfile
from pathlib import Path

import pytest
from data_fixtures import CHEST_TAR, SHARED, image_bytes, needs_shared, session_cache

from lightlayers.cli import main as cli
from lightlayers.data import DataError, load_dataset
from lightlayers.runfolder.store import ResultsStore

SHARED_MANIFEST = SHARED / "chest_xray_pneumonia" / "chest_xray_224_manifest.csv"
PER_CLASS = 30
pytestmark = needs_shared


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(session_cache(tmp_path_factory)))


@pytest.fixture(scope="module")
def xrays(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """The first PER_CLASS test images of each class from the chest X-ray archive, as files in
    ``images/<label>/``, and their rows of the shared manifest (split,label,filename,bytes,
    sha256), each checked against the file's bytes."""
    root = tmp_path_factory.mktemp("xrays")
    wanted = {"NORMAL": PER_CLASS, "PNEUMONIA": PER_CLASS}
    with tarfile.open(CHEST_TAR, "r:gz") as tf:
        for m in tf:  # the archive is sorted: test/NORMAL, test/PNEUMONIA come first
            parts = m.name.split("/")
            if not m.isfile() or parts[1] != "test" or wanted.get(parts[2], 0) == 0:
                if not any(wanted.values()):
                    break
                continue
            wanted[parts[2]] -= 1
            dest = root / "images" / parts[2] / parts[3]
            dest.parent.mkdir(parents=True, exist_ok=True)
            f = tf.extractfile(m)
            assert f is not None
            dest.write_bytes(f.read())
    with open(SHARED_MANIFEST, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["split"] == "test" and (root / "images" / r["label"] / r["filename"]).exists()]
    assert len(rows) == 2 * PER_CLASS
    for r in rows:
        data = (root / "images" / r["label"] / r["filename"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == int(r["bytes"])
    return root, rows


def _patient(name: str) -> str:
    m = re.search(r"person(\d+)_|^(IM-\d+)-", name)
    assert m is not None
    return m.group(1) or m.group(2)


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_a_study_trains_from_a_manifest(xrays: tuple[Path, list[dict[str, str]]],
                                        tmp_path: Path) -> None:
    root, rows = xrays
    # In a folder of its own: paths are relative to the CSV, here one level up.
    lines = [[f"../images/{r['label']}/{r['filename']}", r["label"],
              "test" if i % 3 == 0 else "train"] for i, r in enumerate(rows)]
    csv_path = _write(root / "lists" / "study.csv", ["path", "label", "split"], lines)
    out = tmp_path / "run"
    rc = cli(["run", "--data", str(csv_path), "--size", "28", "--models", "paper-conv",
              "--epochs", "1", "--threads", "1", "--quiet", "--no-report", "--out", str(out)])
    assert rc == 0
    with ResultsStore(out / "results.db", create=False, readonly=True) as store:
        (trial,) = store.trials()
        data = store.meta()["data"]
    assert trial["status"] == "done" and 0 <= trial["accuracy"] <= 1
    assert data["classes"] == ["NORMAL", "PNEUMONIA"] and data["image_size"] == [1, 28, 28]
    assert data["split_sizes"]["test"] == 20
    assert data["split_sizes"]["train"] + data["split_sizes"]["val"] == 40
    assert any("CSV manifest, columns path=path, label=label, split=split" in n
               for n in data["notes"])


def test_columns_are_named_after_a_hash(xrays: tuple[Path, list[dict[str, str]]]) -> None:
    root, rows = xrays
    lines = [[r["filename"], r["label"].lower(), "training" if i % 4 else "testing",
              _patient(r["filename"]), r["sha256"]] for i, r in enumerate(rows)]
    csv_path = _write(root / "images" / "all.csv", ["file", "diagnosis", "fold", "subject", "sha"],
                      [[f"{ln[1].upper()}/{ln[0]}", *ln[1:]] for ln in lines])
    ds = load_dataset(f"{csv_path}#path=file,label=diagnosis,split=fold,patient=subject",
                      progress=False)
    assert ds.classes == ("normal", "pneumonia")
    assert len(ds.splits["test"]) == 15 and ds.splits["train"].images.shape[1:] == (1, 224, 224)
    s = ds.summary()
    # The patient column groups the carved val split; the file-name pattern is not used.
    assert s["patient_grouping"]["pattern"] == "column subject"
    assert s["patient_overlap"] == 0
    # Without the mapping the default column names are missing: the message says how to name.
    with pytest.raises(DataError, match=r"no column 'path' for the path \(columns: file, "
                       r"diagnosis, fold, subject, sha\); name it after the path: .*all\.csv"
                       r"#path=COLUMN"):
        load_dataset(csv_path, progress=False)


def test_patient_column_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    # 40 patients of 3 images each, no splits: val and test are carved by patient.
    rows = []
    for p in range(40):
        for k in range(3):
            name = f"img/{p}_{k}.png"
            (tmp_path / "img").mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(image_bytes(10 * p + k, size=(8, 8)))
            rows.append([name, "sick" if p % 2 else "well", f"P{p}"])
    csv_path = _write(tmp_path / "m.csv", ["path", "label", "patient"], rows)
    ds = load_dataset(csv_path, progress=False)
    sides = {}
    for split, s in ds.splits.items():
        for i in s.ids or ():
            sides.setdefault(i.split("/")[1].split("_")[0], set()).add(split)
    assert len(sides) == 40 and all(len(v) == 1 for v in sides.values())
    assert ds.summary()["patient_grouping"]["patients"] == 40


@pytest.mark.parametrize("header,row,message", [
    (["path", "label"], ["a.png", "effusion|pneumonia"],
     r"line 2: label 'effusion\|pneumonia' names several classes: a multi-label manifest"),
    (["path", "label"], ["a.png", "effusion;pneumonia"], "multi-label manifest"),
    (["path", "effusion", "pneumonia", "edema"], ["a.png", "1", "0", "1"],
     r"no 'label' column but 0/1 columns \(effusion, pneumonia, edema\): a multi-label"),
    (["path", "label", "split"], ["a.png", "x", "holdout"],
     r"line 2: split 'holdout' is not train, val or test"),
    (["path", "label"], ["a.png", ""], "line 2: a.png has an empty 'label'; give its class"),
    (["path", "label"], ["", "x"], "line 2: empty 'path'"),
    (["path", "label"], ["a.png", "x", "extra"], r"line 2: 3 cells for the 2 columns"),
    (["path;label"], ["a.png;x"], "one column; separate the columns with commas"),
])
def test_bad_manifests_are_refused_in_one_line(tmp_path: Path, header: list[str],
                                                row: list[str], message: str) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    (tmp_path / "b.png").write_bytes(image_bytes(2))
    filler = "1" if row[1:2] in (["0"], ["1"]) else "y"  # a second row like the first
    path = _write(tmp_path / "m.csv", header, [row, ["b.png", *([filler] * (len(header) - 1))]])
    with pytest.raises(DataError, match=message) as e:
        load_dataset(path, progress=False)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_an_image_listed_twice_with_two_labels_is_multi_label(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    path = _write(tmp_path / "m.csv", ["path", "label"],
                  [["a.png", "effusion"], ["b.png", "x"], ["./a.png", "pneumonia"]])
    with pytest.raises(DataError, match=r"line 4: ./a.png is listed on line 2 too, with the "
                       r"labels 'effusion' and 'pneumonia': a multi-label manifest"):
        load_dataset(path, progress=False)


def test_two_label_columns_are_multi_label(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.csv", ["path", "a", "b"], [["a.png", "x", "y"]])
    with pytest.raises(DataError, match=r"label is given twice \(several label columns make "
                       r"a multi-label manifest"):
        load_dataset(f"{path}#label=a,label=b", progress=False)
    with pytest.raises(DataError, match="manifest column colour=a is not ROLE=COLUMN"):
        load_dataset(f"{path}#colour=a", progress=False)


def test_missing_files_are_listed_with_their_lines(tmp_path: Path) -> None:
    # The shared manifest names files without their folders: read as a manifest of paths,
    # none of them is next to it, and the message says where paths are looked for.
    with pytest.raises(DataError) as e:
        load_dataset(f"{SHARED_MANIFEST}#path=filename", progress=False)
    msg = str(e.value)
    assert "5840 listed image(s) are not files: line 2: IM-0001-0001.jpeg;" in msg
    assert "(and 5835 more)" in msg and "relative to the manifest's folder" in msg
    assert "\n" not in msg


def test_numeric_labels_sort_as_numbers(tmp_path: Path) -> None:
    rows = []
    for i in range(33):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(100 + i, size=(6, 6)))
        rows.append([str(tmp_path / f"{i}.png"), str([2, 10, 1][i % 3])])  # absolute paths
    ds = load_dataset(_write(tmp_path / "sub" / "m.csv", ["path", "label"], rows),
                      progress=False)
    assert ds.classes == ("1", "2", "10")


def test_editing_the_manifest_or_an_image_is_new_data(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"{i}.png").write_bytes(image_bytes(200 + i, size=(6, 6)))
    rows = [[f"{i}.png", "ab"[i % 2]] for i in range(20)]
    path = _write(tmp_path / "m.csv", ["path", "label"], rows)
    first = load_dataset(path, progress=False).identity["cache_key"]
    assert load_dataset(path, progress=False).identity["cache_key"] == first
    (tmp_path / "3.png").write_bytes(image_bytes(999, size=(6, 6)))
    second = load_dataset(path, progress=False).identity["cache_key"]
    rows[4][1] = "b"
    _write(path, ["path", "label"], rows)
    third = load_dataset(path, progress=False).identity["cache_key"]
    assert len({first, second, third}) == 3
