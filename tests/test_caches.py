"""Caches verify what they read: a damaged, foreign or poisoned entry is recomputed, replaced
and named, and no cache file is ever unpickled."""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PNEUMONIA_NPZ
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import lightlayers
from lightlayers.data import load_dataset
from lightlayers.data import preprocess as pre
from lightlayers.data.cache import CacheWarning, load_entry, read_entry
from lightlayers.features import cached_features, feature_cache_path, write_features
from lightlayers.train import TensorLoader

SRC = Path(lightlayers.__file__).parent


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


class _Payload:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


# --- frozen-backbone features ---------------------------------------------------------------
class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 6))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def _loaders() -> dict[str, TensorLoader]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for name, n in (("train", 12), ("val", 5), ("test", 7)):
        out[name] = TensorLoader(torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 3, 4)
    return out


def _features(key: str, backbone: _Backbone) -> tuple[dict, bool]:
    feats, seconds, hit = cached_features(key, backbone, _loaders(), torch.device("cpu"), False)
    assert (seconds == 0.0) == hit
    return feats, hit


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k][0], b[k][0])
        assert torch.equal(a[k][1], b[k][1])


def test_features_are_safetensors_with_metadata_and_hit(tmp_path: Path) -> None:
    backbone = _Backbone()
    first, hit = _features("k1", backbone)
    assert not hit and backbone.calls == 3 + 2 + 2  # batches of 4
    path = feature_cache_path("k1")
    assert path.suffix == ".safetensors" and path.is_file()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == ["test.x", "test.y", "train.x", "train.y", "val.x", "val.y"]
    assert meta["key"] == "k1" and json.loads(meta["splits"]) == ["test", "train", "val"]
    assert json.loads(meta["shapes"]) == {"train": [12, 6], "val": [5, 6], "test": [7, 6]}
    assert meta["dtype"] == "float32"
    calls = backbone.calls
    second, hit = _features("k1", backbone)
    assert hit and backbone.calls == calls
    _assert_same(first, second)


def _garbage(path: Path, good: dict, marker: Path) -> None:
    path.write_bytes(b"\x00garbage" * 40)


def _truncated(path: Path, good: dict, marker: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pickle(path: Path, good: dict, marker: Path) -> None:
    # What the earlier torch.save format would let an attacker (or an accident) place here.
    path.write_bytes(pickle.dumps({"train": _Payload(marker)}))


def _other_key(path: Path, good: dict, marker: Path) -> None:
    write_features(path, "another-key", good)


def _missing_split(path: Path, good: dict, marker: Path) -> None:
    write_features(path, "k1", {k: v for k, v in good.items() if k != "test"})


def _nan(path: Path, good: dict, marker: Path) -> None:
    x, y = good["val"]
    x = x.clone()
    x[0, 0] = float("nan")
    write_features(path, "k1", {**good, "val": (x, y)})


def _float_labels(path: Path, good: dict, marker: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["train.y"] = tensors["train.y"].float()
    save_file(tensors, str(path), metadata=meta)


def _wrong_shapes(path: Path, good: dict, marker: Path) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["shapes"] = json.dumps({"train": [12, 6], "val": [5, 6], "test": [8, 6]})
    save_file(tensors, str(path), metadata=meta)


def _other_width(path: Path, good: dict, marker: Path) -> None:
    x, y = good["test"]
    write_features(path, "k1", {**good, "test": (torch.cat([x, x], 1), y)})


@pytest.mark.parametrize("damage", [_garbage, _truncated, _pickle, _other_key, _missing_split,
                                    _nan, _float_labels, _wrong_shapes, _other_width])
def test_damaged_feature_file_is_recomputed_replaced_and_named(damage, tmp_path: Path) -> None:
    good, _ = _features("k1", _Backbone())
    path = feature_cache_path("k1")
    marker = tmp_path / "unpickled"
    damage(path, good, marker)
    backbone = _Backbone()
    with pytest.warns(CacheWarning, match=re.escape(f"feature cache: replaced {path} (")):
        again, hit = _features("k1", backbone)
    assert not hit and backbone.calls > 0
    _assert_same(again, good)
    assert not marker.exists()
    # The replacement is verified like any entry: the next read is a hit.
    _, hit = _features("k1", _Backbone())
    assert hit


def test_replacement_goes_to_the_callback_when_given() -> None:
    _features("k1", _Backbone())
    feature_cache_path("k1").write_bytes(b"junk")
    seen: list[str] = []
    cached_features("k1", _Backbone(), _loaders(), torch.device("cpu"), False,
                    on_replace=seen.append)
    assert len(seen) == 1 and str(feature_cache_path("k1")) in seen[0]


def test_old_pickled_feature_file_is_never_read_and_is_removed(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    old = feature_cache_path("k1").with_suffix(".pt")
    old.parent.mkdir(parents=True)
    torch.save({"train": _Payload(marker)}, old)
    _, hit = _features("k1", _Backbone())
    assert not hit and not marker.exists() and not old.exists()


def test_no_cache_module_can_unpickle() -> None:
    """Neither cache calls a loader that unpickles: no torch.load or pickle.load(s), and every
    np.load says allow_pickle=False."""
    for rel in ("features.py", "data/cache.py"):
        tree = ast.parse((SRC / rel).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            assert name not in ("torch.load", "pickle.load", "pickle.loads"), f"{rel}: {name}"
            if name.endswith("np.load"):
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("allow_pickle") == "False", f"{rel}: np.load without it"


# --- decoded images -------------------------------------------------------------------------
@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = pre.decode_arrays

    def counting(*a: object, **k: object) -> object:
        calls.append(1)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr("lightlayers.data.dataset.decode_arrays", counting)
    return calls


def _meta(entry: Path) -> dict:
    return json.loads((entry / "meta.json").read_text())


def _set_meta(entry: Path, meta: object) -> None:
    (entry / "meta.json").write_text(json.dumps(meta))


def _drop_key(key: str):  # type: ignore[no-untyped-def]
    def damage(entry: Path, marker: Path) -> None:
        meta = _meta(entry)
        del meta[key]
        _set_meta(entry, meta)

    damage.__name__ = f"meta_without_{key}"
    return damage


def _meta_not_json(entry: Path, marker: Path) -> None:
    (entry / "meta.json").write_text("{not json")


def _meta_wrong_type(entry: Path, marker: Path) -> None:
    _set_meta(entry, {**_meta(entry), "n": "1797"})


def _meta_list(entry: Path, marker: Path) -> None:
    _set_meta(entry, [1, 2, 3])


def _other_version(entry: Path, marker: Path) -> None:
    _set_meta(entry, {**_meta(entry), "version": 0})


def _truncated_images(entry: Path, marker: Path) -> None:
    p = entry / "images.npy"
    p.write_bytes(p.read_bytes()[: p.stat().st_size - 100])


def _labels_missing(entry: Path, marker: Path) -> None:
    (entry / "labels.npy").unlink()


def _labels_float(entry: Path, marker: Path) -> None:
    np.save(entry / "labels.npy", np.load(entry / "labels.npy").astype(np.float64))


def _labels_short(entry: Path, marker: Path) -> None:
    np.save(entry / "labels.npy", np.load(entry / "labels.npy")[:-1])


def _labels_out_of_range(entry: Path, marker: Path) -> None:
    labels = np.load(entry / "labels.npy").copy()
    labels[0] = 99
    np.save(entry / "labels.npy", labels)
    _set_meta(entry, {k: v for k, v in _meta(entry).items() if k != "checksums"})


def _labels_shuffled(entry: Path, marker: Path) -> None:
    # Same dtype, length and range: only the checksum can tell.
    np.save(entry / "labels.npy", np.roll(np.load(entry / "labels.npy"), 1))


def _splits_out_of_range(entry: Path, marker: Path) -> None:
    splits = np.load(entry / "splits.npy").copy()
    splits[0] = 7
    np.save(entry / "splits.npy", splits)
    _set_meta(entry, {k: v for k, v in _meta(entry).items() if k != "checksums"})


def _images_other_shape(entry: Path, marker: Path) -> None:
    images = np.load(entry / "images.npy")
    np.save(entry / "images.npy", np.ascontiguousarray(images[:, :, :-1, :]))


def _pickled_labels(entry: Path, marker: Path) -> None:
    np.save(entry / "labels.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("damage", [
    _drop_key("n"), _drop_key("classes"), _drop_key("shape"), _drop_key("source_is_gray"),
    _meta_not_json, _meta_wrong_type, _meta_list, _other_version, _truncated_images,
    _labels_missing, _labels_float, _labels_short, _labels_out_of_range, _labels_shuffled,
    _splits_out_of_range, _images_other_shape, _pickled_labels,
], ids=lambda f: f.__name__.strip("_"))
def test_damaged_decode_entry_is_a_miss_rebuilt_and_named(damage, decodes: list[int],
                                                          tmp_path: Path) -> None:
    first = load_dataset("digits", progress=False)
    entry = Path(first.identity["cache_path"])
    marker = tmp_path / "unpickled"
    # Splits are views of the cache files, and the damage below rewrites them in place.
    before = {name: (np.array(s.images), np.array(s.labels)) for name, s in first.splits.items()}
    damage(entry, marker)
    entry_found, why = read_entry(entry)
    assert entry_found is None and why
    with pytest.warns(CacheWarning, match=re.escape(f"replaced the unusable entry {entry} (")):
        again = load_dataset("digits", progress=False)
    assert len(decodes) == 2 and not marker.exists()
    for name, (images, labels) in before.items():
        np.testing.assert_array_equal(again.splits[name].images, images)
        np.testing.assert_array_equal(again.splits[name].labels, labels)
    assert load_entry(entry) is not None
    load_dataset("digits", progress=False)
    assert len(decodes) == 2  # the rebuilt entry is a hit


def test_an_emptied_entry_folder_is_named_when_replaced(decodes: list[int]) -> None:
    entry = Path(load_dataset("digits", progress=False).identity["cache_path"])
    for f in entry.iterdir():
        f.unlink()
    with pytest.warns(CacheWarning, match="meta.json is missing"):
        load_dataset("digits", progress=False)
    assert len(decodes) == 2


def test_entries_written_before_checksums_are_still_hits(decodes: list[int]) -> None:
    entry = Path(load_dataset("digits", progress=False).identity["cache_path"])
    _set_meta(entry, {k: v for k, v in _meta(entry).items() if k != "checksums"})
    load_dataset("digits", progress=False)
    assert len(decodes) == 1


# --- end to end, through the command ------------------------------------------------------
@pytest.mark.slow
def test_damaged_caches_are_replaced_in_a_real_run(tmp_path: Path, capfd) -> None:
    """The shared PneumoniaMNIST file, a transfer model on cached features: damage both caches
    between two runs; the second run still succeeds and names both files it replaced."""
    import torchvision

    from lightlayers.cli import main as cli
    from lightlayers.runfolder.store import ResultsStore

    torch.manual_seed(0)
    weights = tmp_path / "backbone.safetensors"  # random weights: no download
    state = torchvision.models.mobilenet_v3_small().state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    args = ["run", "--data", str(PNEUMONIA_NPZ), "--models", "transfer-mobilenet_v3_small",
            "--weights",
            str(weights), "--epochs", "1", "--size", "28", "--quiet", "--no-report",
            "--protocol", "seed"]  # no augmentation: the backbone's features are cached
    assert cli([*args, "--out", str(tmp_path / "a")]) == 0
    capfd.readouterr()
    (feature_file,) = (tmp_path / "cache" / "features").glob("*.safetensors")
    feature_file.write_bytes(b"\x80\x04not safetensors")
    (entry,) = (tmp_path / "cache" / "datasets").iterdir()
    meta = _meta(entry)
    del meta["classes"]
    _set_meta(entry, meta)

    with pytest.warns(CacheWarning) as caught:
        assert cli([*args, "--out", str(tmp_path / "b")]) == 0
    messages = [str(w.message) for w in caught if w.category is CacheWarning]
    assert messages == [f"decoded-image cache: replaced the unusable entry {entry} "
                        "(meta.json has no 'classes')"]
    # The trial reports its own cache replacement: in the progress output and in its notes.
    err = capfd.readouterr().err
    assert "Traceback" not in err
    with ResultsStore(tmp_path / "b" / "results.db", create=False) as store:
        (trial,) = store.trials()
    assert trial["status"] == "done"
    (note,) = [n for n in trial["extra"]["notes"] if n.startswith("feature cache: replaced")]
    assert note.startswith(f"feature cache: replaced {feature_file} (not a readable "
                           "safetensors file")
