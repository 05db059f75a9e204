"""DICOM files made with pydicom: the pixel pipeline (rescale, window, VOI LUT, MONOCHROME1),
the refusals, and DICOM folders, archives and manifests made from the real chest X-rays."""

from __future__ import annotations

import csv
import io
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_fixtures import CHEST_TAR, needs_shared, session_cache

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from lightlayers.cli import main as cli  # noqa: E402
from lightlayers.data import DataError, load_dataset  # noqa: E402
from lightlayers.data.preprocess import decode_image  # noqa: E402
from lightlayers.runfolder.store import ResultsStore  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("LIGHTLAYERS_CACHE", str(session_cache(tmp_path_factory)))


def dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int | None = None,
                **elements: Any) -> bytes:
    """A DICOM Part 10 file (preamble, DICM, file meta, explicit VR little endian) holding
    ``pixels`` and the given data elements."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.set_pixel_data(pixels, photometric, bits or pixels.dtype.itemsize * 8)
    for name, value in elements.items():
        setattr(ds, name, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def pixels_of(data: bytes) -> np.ndarray:
    result = decode_image(data, None, None, "stretch")
    assert not isinstance(result, str), result
    return result[0]


TWELVE_BIT = np.array([[0, 1024], [2048, 4095]], np.uint16)


def test_window_center_and_width_linear() -> None:
    # PS3.3 C.11.2.1.2.1: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped.
    data = dicom_bytes(TWELVE_BIT, bits=12, WindowCenter=2048, WindowWidth=4096)
    assert pixels_of(data).tolist() == [[0, 64], [128, 255]]


def test_rescale_slope_and_intercept_come_before_the_window() -> None:
    # CT: stored + (-1024) = Hounsfield units; a soft-tissue window 40/400 spans -160..239.
    stored = np.array([[0, 1024], [1064, 1264]], np.int16)
    data = dicom_bytes(stored, bits=16, RescaleSlope=1, RescaleIntercept=-1024,
                       WindowCenter=40, WindowWidth=400)
    assert pixels_of(data).tolist() == [[0, 102], [128, 255]]
    # Slope 2: the same units from half the stored values.
    halved = dicom_bytes(np.array([[0, 512], [532, 632]], np.int16), bits=16,
                         RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40,
                         WindowWidth=400)
    assert pixels_of(halved).tolist() == [[0, 102], [128, 255]]


def test_monochrome1_is_inverted() -> None:
    mono2 = pixels_of(dicom_bytes(TWELVE_BIT, bits=12, WindowCenter=2048, WindowWidth=4096))
    mono1 = pixels_of(dicom_bytes(TWELVE_BIT, "MONOCHROME1", bits=12, WindowCenter=2048,
                                  WindowWidth=4096))
    assert (mono1.astype(int) + mono2).tolist() == [[255, 255], [255, 255]]


@pytest.mark.parametrize("function,expected", [("LINEAR_EXACT", [[0, 64], [128, 255]]),
                                               ("SIGMOID", [[30, 69], [128, 225]])])
def test_other_voi_lut_functions(function: str, expected: list[list[int]]) -> None:
    data = dicom_bytes(np.array([[0, 50], [100, 200]], np.uint16), bits=12, WindowCenter=100,
                       WindowWidth=200, VOILUTFunction=function)
    assert pixels_of(data).tolist() == expected


def test_voi_lut_sequence_wins_over_a_window() -> None:
    lut = Dataset()
    lut.add_new(0x00283002, "US", [4, 0, 16])  # LUT Descriptor: 4 entries from 0, 16 bits
    lut.add_new(0x00283006, "US", [0, 65535, 32768, 0])  # LUT Data
    data = dicom_bytes(np.array([[0, 1], [2, 9]], np.uint16), bits=12,
                       VOILUTSequence=Sequence([lut]), WindowCenter=0, WindowWidth=2)
    # Past the last entry the LUT's last value holds.
    assert pixels_of(data).tolist() == [[0, 255], [128, 0]]


def test_no_window_scales_each_image_from_its_min_to_its_max() -> None:
    data = dicom_bytes(np.array([[10, 14], [410, 1030]], np.uint16), bits=12)
    assert pixels_of(data).tolist() == [[0, 1], [100, 255]]
    flat = dicom_bytes(np.full((2, 2), 700, np.uint16), bits=12)
    assert pixels_of(flat).tolist() == [[0, 0], [0, 0]]


def test_8_bit_without_rescale_is_used_as_stored_and_rgb_too() -> None:
    grey = np.array([[3, 60], [200, 250]], np.uint8)
    assert pixels_of(dicom_bytes(grey)).tolist() == grey.tolist()
    rgb = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    result = decode_image(dicom_bytes(rgb, "RGB"), None, None, "stretch")
    assert not isinstance(result, str)
    assert np.array_equal(result[0], rgb) and result[1] is False


@pytest.mark.parametrize("make,reason", [
    (lambda: dicom_bytes(np.zeros((3, 4, 4), np.uint16), bits=12),
     "a multi-frame DICOM file (3 frames); save each frame as a file of its own"),
    (lambda: dicom_bytes(np.zeros((4, 4), np.uint16), BitsAllocated=32, BitsStored=32,
                         HighBit=31, PixelData=bytes(64)),
     "32-bit DICOM pixels; 8 to 16 bits are supported"),
    (lambda: dicom_bytes(np.zeros((4, 4, 3), np.uint16), "RGB", bits=16),
     "16-bit RGB DICOM pixels; RGB images must be 8-bit"),
    (lambda: dicom_bytes(np.zeros((4, 4), np.uint16), bits=12, WindowCenter=5,
                         WindowWidth=0.5), "window width 0.5 is below 1 (LINEAR)"),
    (lambda: dicom_bytes(np.zeros((4, 4), np.uint16), bits=12)[:400],
     "a DICOM file with no pixel data"),
])
def test_refusals_name_the_reason(make: Any, reason: str) -> None:
    result = decode_image(make(), None, None, "stretch")
    assert isinstance(result, str) and result.startswith(reason), result


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTLAYERS_MAX_IMAGE_PIXELS", "15")
    result = decode_image(dicom_bytes(np.zeros((4, 4), np.uint16), bits=12), None, None,
                          "stretch")
    assert result == "4 x 4 pixels exceeds the limit of 15 (LIGHTLAYERS_MAX_IMAGE_PIXELS)"


# --- datasets of DICOM files made from the real chest X-rays ------------------------------

PER_CLASS = 12


@pytest.fixture(scope="module")
def xray_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first PER_CLASS test X-rays of each class as JPEGs (``jpeg/<class>/``) and as DICOM
    files that decode to the same pixels (``dicom/<class>/``), stored three ways in turn:
    12-bit MONOCHROME2, 12-bit MONOCHROME1 (inverted), and rescaled (slope 2, intercept -100);
    each with a LINEAR_EXACT window that maps the 12-bit values 16 v back to v exactly."""
    if not CHEST_TAR.exists():
        pytest.skip("../shared/data is not next to the repository")
    root = tmp_path_factory.mktemp("dicom-xrays")
    wanted = {"NORMAL": PER_CLASS, "PNEUMONIA": PER_CLASS}
    n = 0
    with tarfile.open(CHEST_TAR, "r:gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if not any(wanted.values()):
                break
            if not m.isfile() or parts[1] != "test" or wanted.get(parts[2], 0) == 0:
                continue
            wanted[parts[2]] -= 1
            f = tf.extractfile(m)
            assert f is not None
            jpeg = f.read()
            (root / "jpeg" / parts[2]).mkdir(parents=True, exist_ok=True)
            (root / "jpeg" / parts[2] / parts[3]).write_bytes(jpeg)
            v = pixels_of(jpeg).astype(np.uint16)  # the grey values as this package reads them
            window = {"WindowCenter": 2040, "WindowWidth": 4080,
                      "VOILUTFunction": "LINEAR_EXACT"}
            if n % 3 == 0:
                data = dicom_bytes(16 * v, bits=12, **window)
            elif n % 3 == 1:
                data = dicom_bytes(4080 - 16 * v, "MONOCHROME1", bits=12, **window)
            else:
                data = dicom_bytes(8 * v + 50, bits=12, RescaleSlope=2, RescaleIntercept=-100,
                                   **window)
            (root / "dicom" / parts[2]).mkdir(parents=True, exist_ok=True)
            (root / "dicom" / parts[2] / (parts[3].rsplit(".", 1)[0] + ".dcm")).write_bytes(data)
            n += 1
    return root


@needs_shared
def test_a_dicom_folder_decodes_to_the_same_pixels_as_its_jpegs(xray_pairs: Path) -> None:
    jpeg = load_dataset(xray_pairs / "jpeg", size=32, progress=False)
    dcm = load_dataset(xray_pairs / "dicom", size=32, progress=False)
    assert dcm.classes == jpeg.classes == ("NORMAL", "PNEUMONIA")
    for split in ("train", "val", "test"):
        assert dcm.splits[split].ids == tuple(
            i.replace(".jpeg", ".dcm") for i in jpeg.splits[split].ids or ())
        assert np.array_equal(dcm.splits[split].images, jpeg.splits[split].images)
    notes = "\n".join(dcm.notes)
    # The mapping of every file is recorded, one line per mapping.
    assert "DICOM to 8 bits: 8 image(s) by 12-bit MONOCHROME2, window center 2040 width " \
           "4080 (LINEAR_EXACT) (e.g. " in notes
    assert "12-bit MONOCHROME1, window center 2040 width 4080 (LINEAR_EXACT), inverted " \
           "(MONOCHROME1)" in notes
    assert "rescale slope 2 intercept -100, window center 2040" in notes


@needs_shared
def test_a_study_trains_from_a_zip_of_dicom_files(xray_pairs: Path, tmp_path: Path) -> None:
    archive = tmp_path / "xrays.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((xray_pairs / "dicom").rglob("*.dcm")):
            zf.write(p, f"xrays/{p.relative_to(xray_pairs / 'dicom').as_posix()}")
    ds = load_dataset(archive, size=32, progress=False)
    folder = load_dataset(xray_pairs / "dicom", size=32, progress=False)
    assert np.array_equal(ds.splits["test"].images, folder.splits["test"].images)
    out = tmp_path / "run"
    rc = cli(["run", "--data", str(archive), "--size", "28", "--models", "paper-conv",
              "--epochs", "1", "--threads", "1", "--quiet", "--no-report", "--out", str(out)])
    assert rc == 0
    with ResultsStore(out / "results.db", create=False, readonly=True) as store:
        (trial,) = store.trials()
        notes = store.meta()["data"]["notes"]
    assert trial["status"] == "done"
    assert any(n.startswith("DICOM to 8 bits: ") for n in notes)


@needs_shared
def test_a_manifest_of_dicom_files_without_extension(xray_pairs: Path, tmp_path: Path) -> None:
    # Files without a .dcm name are known by the DICM marker after their preamble.
    rows = []
    for p in sorted((xray_pairs / "dicom").rglob("*.dcm")):
        target = tmp_path / "store" / p.stem
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(p.read_bytes())
        rows.append([f"store/{p.stem}", p.parent.name.lower()])
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], *rows])
    ds = load_dataset(tmp_path / "m.csv", size=32, progress=False)
    folder = load_dataset(xray_pairs / "dicom", size=32, progress=False)
    assert ds.classes == ("normal", "pneumonia") and len(ds.splits["train"]) > 0
    assert sorted(ds.splits["test"].images.reshape(-1, 1024).sum(1).tolist() +
                  ds.splits["train"].images.reshape(-1, 1024).sum(1).tolist() +
                  ds.splits["val"].images.reshape(-1, 1024).sum(1).tolist()) == sorted(
        np.concatenate([s.images for s in folder.splits.values()]).reshape(-1, 1024)
        .sum(1).tolist())
    assert any(n.startswith("DICOM to 8 bits: ") for n in ds.notes)


def test_without_pydicom_one_line_names_the_extra(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "d" / cls / f"{i}.dcm").write_bytes(
                dicom_bytes(np.full((4, 4), i + (cls == "b") * 10, np.uint8)))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as when it is not installed
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path / "d", progress=False)
    msg = str(e.value)
    assert msg == (f"{tmp_path / 'd'}: holds DICOM files (a/0.dcm, ...); reading DICOM files "
                   "needs pydicom: pip install 'lightlayers[dicom]'")


def test_damaged_files_are_unreadable_images_with_a_reason() -> None:
    # Every byte of a real header and its pixels overwritten in turn, and every truncation:
    # the decoder gives an image or a reason, never an exception.
    good = dicom_bytes(np.arange(64, dtype=np.uint16).reshape(8, 8), bits=12,
                       RescaleSlope=1, RescaleIntercept=-10, WindowCenter=30, WindowWidth=60)
    rng = np.random.default_rng(0)
    for i in range(132, len(good), 3):
        for damaged in (good[:i], good[:i] + bytes(rng.integers(0, 256, 4, dtype=np.uint8))
                        + good[i + 4:]):
            result = decode_image(damaged, 4, None, "stretch")
            assert isinstance(result, str) or result[0].shape == (4, 4)
