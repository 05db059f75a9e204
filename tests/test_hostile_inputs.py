"""Hostile inputs to the readers, through the real CLI (tests/hostile.py): named pipes in data
and predict folders must never be opened (reading one waits forever), an image whose header
claims 13000 x 13000 pixels is refused before it is decoded, an ONNX file whose model card
disagrees with its graph is one line naming both values, and archive errors name the member,
not a Python object. Each case: the exit code, one line on stderr, no traceback, and the
user's files unchanged."""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import image_bytes, write_tree
from hostile import Case, Planted, run_case
from model_files import tiny_card, tiny_onnx
from PIL import Image

from lightlayers.data.splits import carve

# A run that reads a small folder: one epoch of the smallest model.
RUN = ["--models", "paper-light-k1", "--epochs", "1", "--quiet", "--no-report"]
LIMIT_LINE = (r"13000 x 13000 pixels exceeds the limit of 40000000 "
              r"\(LIGHTLAYERS_MAX_IMAGE_PIXELS\)")


def _tree(tmp: Path) -> Path:
    """A 2-class folder of 20 x 20 grey images, 16 per class (no split folders)."""
    root = tmp / "data"
    write_tree(root, {"cat": 16, "dog": 16})
    return root


def _huge_png(path: Path) -> Path:
    """A 13000 x 13000 PNG of one colour: 160 kB on disk, 169 MB decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (13000, 13000)).save(path, optimize=True)
    return path


def _model(tmp: Path, name: str = "m.onnx", **kw: object) -> Path:
    path = tmp / name
    path.write_bytes(tiny_onnx(**kw))  # type: ignore[arg-type]
    return path


def _images(tmp: Path, n: int = 3, side: int = 8) -> Path:
    folder = tmp / "inputs"
    folder.mkdir()
    for i in range(n):
        (folder / f"x{i}.png").write_bytes(image_bytes(i, (side, side)))
    return folder


# --- named pipes ---------------------------------------------------------------------------

def _fifo_in_data(tmp: Path, run: Path | None) -> Planted:
    root = _tree(tmp)
    os.mkfifo(root / "cat" / "pipe.png")
    os.mkfifo(root / "dog" / "notes")
    return Planted(["data", "summary", str(root)], protect=[root])


def _fifo_listed(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    out = done.stdout
    assert "skipped 2 file(s) that are not regular files" in out, out
    assert "cat/pipe.png (a named pipe (FIFO))" in out, out
    # The pipe is not an image: 16 images per class remain, 32 in all.
    for name, n in (("cat", 16), ("dog", 16), ("total", 32)):
        assert re.search(rf"{name}\W+(\d+)\W+(\d+)\W+(\d+)\W+{n}\b", out), out


def _fifo_in_run_data(tmp: Path, run: Path | None) -> Planted:
    root = _tree(tmp)
    os.mkfifo(root / "dog" / "pipe.jpg")
    return Planted(["run", "--data", str(root), *RUN, "--out", str(tmp / "out")],
                   protect=[root])


def _run_finished(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert (tmp / "out" / "results.db").is_file(), done.stderr


def _fifo_in_predict_folder(tmp: Path, run: Path | None) -> Planted:
    model, inputs = _model(tmp), _images(tmp)
    os.mkfifo(inputs / "pipe.png")
    return Planted(["predict", str(model), str(inputs), "--quiet"], protect=[model, inputs])


def _three_predicted(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    rows = done.stdout.splitlines()
    assert len(rows) == 4 and not any("pipe" in r for r in rows), done.stdout


def _fifo_named_to_predict(tmp: Path, run: Path | None) -> Planted:
    model = _model(tmp)
    os.mkfifo(tmp / "pipe.png")
    return Planted(["predict", str(model), str(tmp / "pipe.png"), "--quiet"], protect=[model])


def _fifo_as_dataset(tmp: Path, run: Path | None) -> Planted:
    os.mkfifo(tmp / "data.npz")
    return Planted(["data", "summary", str(tmp / "data.npz")])


def _traps_for_a_trained_model(tmp: Path, run: Path | None) -> Planted:
    """The finished digits study's model, exported in memory, on 8 x 8 digits-sized images
    next to a named pipe and a 13000 x 13000 PNG."""
    assert run is not None
    inputs = _images(tmp)
    os.mkfifo(inputs / "pipe.png")
    _huge_png(inputs / "huge.png")
    return Planted(["predict", f"{run}:paper-light-k1", str(inputs), "--quiet"],
                   protect=[run, inputs])


def _both_traps_skipped(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    lines = [s for s in done.stderr.splitlines() if s.strip()]
    assert len(lines) == 2, done.stderr
    assert re.search(r"skipped .*huge\.png: cannot decode it \(" + LIMIT_LINE, lines[0])
    assert re.search(r"skipped .*pipe\.png: .*a named pipe \(FIFO\)", lines[1])
    _three_predicted(tmp, done)


# --- huge images ---------------------------------------------------------------------------

def _huge_in_predict(tmp: Path, run: Path | None) -> Planted:
    model, inputs = _model(tmp), _images(tmp)
    _huge_png(inputs / "huge.png")
    return Planted(["predict", str(model), str(inputs), "--quiet"], protect=[model, inputs])


def _huge_alone(tmp: Path, run: Path | None) -> Planted:
    model = _model(tmp)
    return Planted(["predict", str(model), str(_huge_png(tmp / "huge.png")), "--quiet"],
                   protect=[model])


def _huge_in_data(tmp: Path, run: Path | None) -> Planted:
    root = _tree(tmp)
    _huge_png(root / "cat" / "huge.png")
    return Planted(["data", "summary", str(root)], protect=[root])


def _huge_skipped(tmp: Path, run: Path | None) -> Planted:
    planted = _huge_in_data(tmp, run)
    planted.argv += ["--on-bad-image", "skip"]
    return planted


def _huge_skip_listed(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert "huge.png" in done.stdout + done.stderr
    assert "DecompressionBomb" not in done.stderr


def _limit_from_env(tmp: Path, run: Path | None) -> Planted:
    # The 8 px model's own images (64 pixels) are within the limit; the input is not.
    model, inputs = _model(tmp), _images(tmp, 1, side=12)
    return Planted(["predict", str(model), str(inputs), "--quiet"], protect=[model, inputs],
                   env={"LIGHTLAYERS_MAX_IMAGE_PIXELS": "100"})


def _bad_limit(tmp: Path, run: Path | None) -> Planted:
    model, inputs = _model(tmp), _images(tmp, 1)
    return Planted(["predict", str(model), str(inputs), "--quiet"], protect=[model, inputs],
                   env={"LIGHTLAYERS_MAX_IMAGE_PIXELS": "lots"})


# --- model cards that disagree with their graph --------------------------------------------

def _card_case(name: str, **kw: object) -> Callable[[Path, Path | None], Planted]:
    def setup(tmp: Path, run: Path | None) -> Planted:
        model, inputs = _model(tmp, name, **kw), _images(tmp)
        return Planted(["predict", str(model), str(inputs), "--quiet"],
                       protect=[model, inputs])

    return setup


# --- archives and splits -------------------------------------------------------------------

def _zip_with_bad_member(tmp: Path, run: Path | None) -> Planted:
    root = _tree(tmp)
    (root / "cat" / "bad.png").write_bytes(b"not an image at all")
    archive = tmp / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, f"data/{p.relative_to(root).as_posix()}")
    return Planted(["data", "summary", str(archive)], protect=[archive])


def _one_image_class(tmp: Path, run: Path | None) -> Planted:
    """Class dog's only training image is patient 0's, whose other images are cats: carving
    val by patient used to move dog out of train entirely."""
    root = tmp / "data"
    write_tree(root, {"train/cat": 20, "test/cat": 3, "test/dog": 3}, name="person{i}_c{n}.png")
    write_tree(tmp / "dog", {"train/dog": 1}, name="person{i}_d.png")
    (tmp / "dog" / "train" / "dog").rename(root / "train" / "dog")
    return Planted(["data", "summary", str(root)], protect=[root])


def _dog_in_train(tmp: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert "no images in train" not in done.stderr + done.stdout
    assert "dog have no images in val" in done.stdout, done.stdout
    assert "too few images, or all of them one patient" in done.stdout, done.stdout


CASES = [
    Case("fifo-in-data-folder-summary", _fifo_in_data, code=0, one_line=False, timeout=60,
         check=_fifo_listed),
    Case("fifo-in-data-folder-run", _fifo_in_run_data, code=0, one_line=False, timeout=300,
         check=_run_finished),
    Case("fifo-in-predict-folder", _fifo_in_predict_folder, code=0, timeout=60,
         message=r"warning: skipped .*pipe\.png: .*a named pipe \(FIFO\), not an image file; "
                 r"it was not opened", check=_three_predicted),
    Case("fifo-and-huge-png-for-a-trained-model", _traps_for_a_trained_model, code=0,
         one_line=False, needs_run=True, timeout=180, check=_both_traps_skipped),
    Case("fifo-named-to-predict", _fifo_named_to_predict, code=2, timeout=60,
         message=r"pipe\.png is a named pipe \(FIFO\), not an image file"),
    Case("fifo-as-dataset-file", _fifo_as_dataset, code=2, timeout=60,
         message=r"data\.npz is a named pipe \(FIFO\), not a dataset file"),
    Case("huge-png-in-predict-folder", _huge_in_predict, code=0, timeout=60,
         message=r"warning: skipped .*huge\.png: cannot decode it \(" + LIMIT_LINE,
         check=_three_predicted),
    Case("huge-png-alone-in-predict", _huge_alone, code=2, timeout=60,
         message=r"none of the 1 input image\(s\) could be decoded .*" + LIMIT_LINE),
    Case("huge-png-in-data", _huge_in_data, code=2, timeout=60,
         message=r"1 image\(s\) cannot be decoded: cat/huge\.png: " + LIMIT_LINE),
    Case("huge-png-in-data-skipped", _huge_skipped, code=0, one_line=False, timeout=60,
         check=_huge_skip_listed),
    Case("pixel-limit-from-env", _limit_from_env, code=2, timeout=60,
         message=r"12 x 12 pixels exceeds the limit of 100 \(LIGHTLAYERS_MAX_IMAGE_PIXELS\)"),
    Case("pixel-limit-not-a-number", _bad_limit, code=2, timeout=60,
         message=r"LIGHTLAYERS_MAX_IMAGE_PIXELS='lots' is not a positive whole number"),
    Case("card-size-not-graph", _card_case("size.onnx", size=32), timeout=60,
         message=r"size\.onnx: its card says input height 8 but its graph's input 'images' "
                 r"is batchx1x32x32"),
    Case("card-classes-not-graph", _card_case("classes.onnx", classes=10), timeout=60,
         message=r"classes\.onnx: its card says 2 classes \(a, b\) but its graph's output "
                 r"'probabilities' is batchx10"),
    Case("card-chans-not-graph",
         _card_case("chans.onnx", card=tiny_card(image_size=28, input_size=28, image_chans=3,
                                                 input_chans=3), chans=1, size=32),
         timeout=60,
         message=r"chans\.onnx: its card says input channels 3 but its graph's input "
                 r"'images' is batchx1x32x32 \(input channels 1\)"),
    Case("card-classes-not-a-list",
         _card_case("type.onnx", props={**tiny_card().to_props(), "classes": "5"}),
         timeout=60,
         message=r"type\.onnx: its metadata entry 'classes' is 5; it must be a list"),
    Case("card-sizes-disagree",
         _card_case("crop.onnx", card=tiny_card(crop=6)), timeout=60,
         message=r"crop\.onnx: its metadata entry 'input_size' is 8; it must be 6"),
    Case("zip-member-not-an-image", _zip_with_bad_member, code=2, timeout=60,
         message=r"data\.zip: 1 image\(s\) cannot be decoded: cat/bad\.png: "
                 r"UnidentifiedImageError: not an image file Pillow can read\. "),
    Case("one-training-image-class", _one_image_class, code=0, one_line=False, timeout=60,
         check=_dog_in_train),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue("hostile_run") if case.needs_run else None
    done = run_case(case, tmp_path, template)
    assert "BytesIO" not in done.stderr and "DecompressionBomb" not in done.stderr


def test_carve_keeps_a_class_whose_images_share_a_group_with_another_class() -> None:
    # Class 1's only image is in group 0 with class 0's images; every seed keeps it in rest.
    labels = np.array([0] * 10 + [1])
    groups = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0])
    for seed in range(20):
        rest, carved = carve(np.arange(11), labels, groups, 0.3, [seed, 1])
        assert 1 in labels[rest] and 0 in labels[rest]
        assert sorted([*rest, *carved]) == list(range(11))
        # Whole groups only.
        assert not set(groups[rest]) & set(groups[carved])
