"""Splits: official ones kept, tiny val merged, stratified patient-grouped carving, re-split,
and duplicate reporting; on the real chest X-ray archive and synthetic trees."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import CHEST_TAR, image_bytes, needs_shared, session_cache, write_tree

from lightlayers.data import Dataset, DuplicateImagesWarning, load_dataset
from lightlayers.data.splits import DEFAULT_PATIENT_PATTERN, carve, group_images, patient_ids


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(session_cache(tmp_path_factory)))


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    if not CHEST_TAR.exists():
        pytest.skip("../shared/data is not next to the repository")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIGHTLAYERS_CACHE", str(session_cache(tmp_path_factory)))
        return load_dataset(CHEST_TAR, size=64, progress=False)


def _patients(ids: tuple[str, ...] | None) -> set[str]:
    """Patient ids of both classes: personN (PNEUMONIA), IM-NNNN and NORMAL2-IM-NNNN (NORMAL)."""
    assert ids is not None
    return {p for p in patient_ids(list(ids), DEFAULT_PATIENT_PATTERN) if p is not None}


def _counts(ds: Dataset, split: str) -> list[int]:
    return np.bincount(ds.splits[split].labels, minlength=ds.num_classes).tolist()


# --- the study's dataset -------------------------------------------------------------------------


@needs_shared
def test_chest_counts_match_the_official_split(chest: Dataset) -> None:
    assert chest.classes == ("NORMAL", "PNEUMONIA") and chest.positive_class == 1
    train, val = _counts(chest, "train"), _counts(chest, "val")
    assert [t + v for t, v in zip(train, val, strict=True)] == [1341, 3875]
    assert _counts(chest, "test") == [234, 390]
    assert chest.splits["test"].images.shape == (624, 1, 64, 64)  # grey JPEGs -> 1 channel


@needs_shared
def test_chest_val_is_stratified_ten_percent(chest: Dataset) -> None:
    n_val, n_train = len(chest.splits["val"]), len(chest.splits["train"])
    assert abs(n_val / (n_val + n_train) - 0.1) < 0.005
    normal_share = _counts(chest, "val")[0] / n_val
    assert abs(normal_share - 1341 / 5216) < 0.01
    assert any(
        "val carved from train: 10%, stratified, grouped by patient" in n for n in chest.notes
    )


@needs_shared
def test_chest_no_patient_in_train_and_val(chest: Dataset) -> None:
    train, val = _patients(chest.splits["train"].ids), _patients(chest.splits["val"].ids)
    assert len(val) > 50 and not train & val
    normal_val = {p for p in val if p.startswith(("IM-", "NORMAL2-IM-"))}
    assert len(normal_val) > 50
    s = chest.summary()
    assert s["patient_overlap"] == 0
    p = s["patient_grouping"]
    assert p["images_with_id"] == 5840  # every file names its patient, NORMAL ones included
    assert p["overlap"]["train/val"] == 0 and p["carved_pairs"] == ["train/val"]
    assert p["per_split"]["val"]["NORMAL"] == len(normal_val)
    assert all(n > 0 for per_class in p["per_split"].values() for n in per_class.values())


@needs_shared
def test_chest_duplicates_never_straddle_carved_splits(chest: Dataset) -> None:
    s = chest.summary()
    assert s["duplicates"] == {"train/val": 0, "train/test": 0, "val/test": 0}
    assert s["duplicates_within"]["train"] > 0  # the archive holds byte-identical JPEGs


@needs_shared
def test_chest_seed_changes_val_but_not_test(chest: Dataset) -> None:
    other = load_dataset(CHEST_TAR, size=64, seed=1, progress=False)
    assert other.splits["val"].ids != chest.splits["val"].ids
    assert other.splits["test"].ids == chest.splits["test"].ids
    again = load_dataset(CHEST_TAR, size=64, seed=0, progress=False)
    assert again.splits["val"].ids == chest.splits["val"].ids


@needs_shared
def test_chest_resplit_70_30(chest: Dataset) -> None:
    ds = load_dataset(CHEST_TAR, size=64, resplit=0.3, progress=False)
    sizes = {k: len(s) for k, s in ds.splits.items()}
    assert sum(sizes.values()) == 5840
    assert abs(sizes["test"] / 5840 - 0.3) < 0.01
    assert abs(sizes["val"] / (sizes["train"] + sizes["val"]) - 0.1) < 0.01
    assert abs(_counts(ds, "test")[0] / sizes["test"] - 1575 / 5840) < 0.01
    p = {k: _patients(s.ids) for k, s in ds.splits.items()}
    assert not p["train"] & p["test"] and not p["train"] & p["val"] and not p["val"] & p["test"]
    assert any(n.startswith("re-split: all 5840 images pooled") for n in ds.notes)


# --- synthetic trees -----------------------------------------------------------------------------


def test_tiny_val_is_merged_into_train_then_carved(tmp_path: Path) -> None:
    write_tree(
        tmp_path / "t",
        {"train/a": 150, "train/b": 150, "val/a": 8, "val/b": 8, "test/a": 5, "test/b": 5},
    )
    ds = load_dataset(tmp_path / "t", progress=False)
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 316
    assert len(ds.splits["val"]) == 32
    assert any("only 16 images" in n and "merged into train" in n for n in ds.notes)


def test_val_under_one_percent_of_train_is_tiny() -> None:
    from lightlayers.data.splits import plan_splits

    def val_size(n_train: int, n_val: int) -> int:
        codes = np.array([0] * n_train + [1] * n_val + [2] * 10, np.int8)
        labels = np.arange(len(codes)) % 2
        digests = np.arange(len(codes), dtype=np.uint64)
        plan = plan_splits(labels, codes, digests, None, 0.1, 0, None, None)
        return len(plan.indices["val"])

    assert val_size(6000, 55) == 606  # 55 < 1% of 6000: merged, then 10% of 6055 carved
    assert val_size(5000, 55) == 55  # 55 >= 50 and >= 1%: the official val is kept


def test_usable_val_is_kept(tmp_path: Path) -> None:
    write_tree(
        tmp_path / "t",
        {"train/a": 100, "train/b": 100, "val/a": 30, "val/b": 30, "test/a": 5, "test/b": 5},
    )
    ds = load_dataset(tmp_path / "t", progress=False)
    assert ds.splits["val"].ids is not None and all(
        i.startswith("val/") for i in ds.splits["val"].ids
    )
    assert len(ds.splits["train"]) == 200 and not ds.notes


def test_patients_never_straddle_a_carved_split(tmp_path: Path) -> None:
    # 40 patients with 1-6 images each, plus images without a patient id.
    rng = np.random.default_rng(0)
    root = tmp_path / "t"
    n = 0
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for person in range(20):
            for k in range(int(rng.integers(1, 7))):
                name = f"person{person + 100 * (cls == 'PNEUMONIA')}_virus_{k}.png"
                (root / cls / name).write_bytes(image_bytes(n))
                n += 1
        for k in range(15):
            (root / cls / f"IM-{k:04d}.png").write_bytes(image_bytes(n))
            n += 1
    for seed in range(5):
        ds = load_dataset(root, seed=seed, progress=False)
        p = {k: _patients(s.ids) for k, s in ds.splits.items()}
        assert not p["train"] & p["val"] and not p["train"] & p["test"] and not p["val"] & p["test"]
        for split in ds.splits:
            assert min(_counts(ds, split)) > 0


def test_custom_patient_pattern_and_no_grouping(tmp_path: Path) -> None:
    # Six patients per class ("pat0".."pat5" inside each class folder), five images each.
    write_tree(tmp_path / "t", {"a": 30, "b": 30}, name="pat{i}-scan.png")

    def patients(ds: Dataset, split: str) -> set[str]:
        return {i.split("/")[0] + i.split("/")[1][3] for i in ds.splits[split].ids or ()}

    grouped = load_dataset(tmp_path / "t", patient_pattern=r"pat(\d)", seed=2, progress=False)
    assert not patients(grouped, "train") & patients(grouped, "val")
    assert not patients(grouped, "train") & patients(grouped, "test")
    assert grouped.summary()["patient_grouping"]["patients"] == 10  # ids 0-9, shared by a and b
    ungrouped = load_dataset(tmp_path / "t", patient_pattern=None, progress=False)
    assert ungrouped.summary()["patient_grouping"] is None
    assert any("not grouped by patient" in n for n in ungrouped.notes)


def test_duplicates_across_official_splits_warn_with_counts(tmp_path: Path) -> None:
    write_tree(
        tmp_path / "t",
        {"train/a": 60, "train/b": 60, "val/a": 30, "val/b": 30, "test/a": 5, "test/b": 5},
    )
    for k in range(3):  # copy three training images into test
        src = tmp_path / "t" / "train" / "a" / f"img{k}.png"
        (tmp_path / "t" / "test" / "a" / f"copy{k}.png").write_bytes(src.read_bytes())
    with pytest.warns(DuplicateImagesWarning, match="train/test: 3"):
        ds = load_dataset(tmp_path / "t", progress=False)
    assert ds.summary()["duplicates"] == {"train/val": 0, "train/test": 3, "val/test": 0}
    assert any("train/test 3" in n for n in ds.notes)


def test_no_warning_without_duplicates(tmp_path: Path) -> None:
    write_tree(tmp_path / "t", {"a": 30, "b": 30})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(tmp_path / "t", progress=False)


# --- the carving itself ------------------------------------------------------------------------


def test_carve_is_stratified_grouped_and_seeded() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(300), rng.integers(1, 5, 300))
    labels = (groups % 4 == 0).astype(np.int64)  # one label per group, 25% class 1
    idx = np.arange(len(labels))
    rest, carved = carve(idx, labels, groups, 0.2, [0, 1])
    assert len(rest) + len(carved) == len(idx) and not set(rest) & set(carved)
    assert not set(groups[rest]) & set(groups[carved])
    for c in (0, 1):
        share = (labels[carved] == c).sum() / (labels == c).sum()
        assert abs(share - 0.2) < 0.02
    again = carve(idx, labels, groups, 0.2, [0, 1])[1]
    other = carve(idx, labels, groups, 0.2, [1, 1])[1]
    assert np.array_equal(carved, again) and not np.array_equal(carved, other)


def test_carve_leaves_a_single_group_class_in_rest() -> None:
    labels = np.array([0] * 50 + [1] * 3)
    groups = np.concatenate([np.arange(50), [99, 99, 99]])
    rest, carved = carve(np.arange(53), labels, groups, 0.5, [0, 0])
    assert set(labels[rest]) == {0, 1} and 1 not in labels[carved]


def test_identical_images_share_a_group() -> None:
    digests = np.array([5, 6, 5, 7, 8], np.uint64)
    patients = ["1", None, None, "1", None]
    g = group_images(patients, digests)
    assert g[0] == g[2] == g[3] and len({g[0], g[1], g[4]}) == 3


def test_normal_file_names_name_their_patient() -> None:
    ids = ["train/NORMAL/IM-0115-0001.jpeg", "train/NORMAL/NORMAL2-IM-0115-0001.jpeg",
           "test/NORMAL/IM-0523-0001-0002.jpeg", "train/PNEUMONIA/person1427_virus_2447.jpeg",
           "x/IM-12.png", "x/scan-IM-0001-0001.png"]
    # NORMAL2- is a numbering of its own (see DEFAULT_PATIENT_PATTERN): not IM-0115's patient.
    assert patient_ids(ids, DEFAULT_PATIENT_PATTERN) == [
        "IM-0115", "NORMAL2-IM-0115", "IM-0523", "1427", None, None]


@needs_shared
def test_normal_patients_never_straddle_the_carved_val(tmp_path: Path) -> None:
    """Real file names of the archive (tiny stand-in images): NORMAL patients with several
    images, in both numberings, stay on one side of the carved validation split."""
    import tarfile

    with tarfile.open(CHEST_TAR) as tf:
        names = [n.split("/", 1)[1] for n in tf.getnames() if n.endswith(".jpeg")]
    normal = [n for n in names if n.startswith("train/NORMAL/")]
    ids = patient_ids(normal, DEFAULT_PATIENT_PATTERN)
    per = {p: ids.count(p) for p in set(ids)}
    several = sorted(n for n, p in zip(normal, ids, strict=True) if per[p] >= 2)
    singles = sorted(n for n, p in zip(normal, ids, strict=True) if per[p] == 1)[:60]
    pneumonia = sorted(n for n in names if n.startswith("train/PNEUMONIA/"))[:300]
    tests = sorted(n for n in names if n.startswith("test/"))[::60]
    chosen = several + singles + pneumonia + tests
    assert len(several) > 100 and any("NORMAL2-" in n for n in several)
    root = tmp_path / "chest"
    for k, name in enumerate(chosen):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(image_bytes(k, size=(8, 8)))
    straddled_before = 0
    for seed in range(3):
        ds = load_dataset(root, seed=seed, progress=False)
        p = {k: _patients(s.ids) for k, s in ds.splits.items()}
        assert not p["train"] & p["val"], f"seed {seed}"
        assert any(x.startswith("IM-") for x in p["val"])
        assert ds.summary()["patient_grouping"]["overlap"]["train/val"] == 0
        old = load_dataset(root, seed=seed, patient_pattern=r"person(\d+)_", progress=False)
        o = {k: _patients(s.ids) for k, s in old.splits.items()}
        straddled_before += len(o["train"] & o["val"])
    assert straddled_before > 0  # grouping PNEUMONIA files only let NORMAL patients straddle


def test_patient_ids_use_the_first_group_of_the_basename() -> None:
    ids = [
        "train/PNEUMONIA/person12_bacteria_3.jpeg",
        "person3_x/IM-1.jpeg",
        "a/person7_virus_1.png",
    ]
    assert patient_ids(ids, r"person(\d+)_") == ["12", None, "7"]
    assert patient_ids(ids, r"IM-\d") == [None, "IM-1", None]
