"""`lightlayers export` and `lightlayers predict`: every model family exports to ONNX and gives
PyTorch's probabilities and Captum's Grad-CAM; int8 keeps a trained model's accuracy at half
the size; predictions on chest X-ray files equal the run's recorded test predictions; the
heatmaps of a trained model point at what decides the class; bad input ends in one line."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import CHEST_TAR, PNEUMONIA_NPZ
from PIL import Image

import lightlayers as L
from lightlayers.cli import main as cli
from lightlayers.data import Split
from lightlayers.deploy import DeployError
from lightlayers.deploy import export as ex
from lightlayers.deploy.cam import peak
from lightlayers.deploy.card import ModelCard
from lightlayers.runfolder.store import ResultsStore
from lightlayers.runfolder.trials import choose_trial

# Quick runs: one thread (the test machine's cores are shared), BatchNorm statistics that
# converge within a few steps.
QUICK = ["--quiet", "--no-report", "--threads", "1", "--set", "bn_momentum=0.1"]


@pytest.fixture(scope="module", autouse=True)
def _keep_torch_threads():
    """`lightlayers run --threads 1` sets torch's threads for the whole process: give the
    tests after these their threads back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(data: Path | str, out: Path, models: str, *extra: str) -> Path:
    assert cli(["run", "--data", str(data), "--models", models, "--out", str(out), *QUICK,
                *extra]) == 0
    return out


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run a command that must fail on its input: exit 2, one line on stderr, no traceback."""
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _trial(run_dir: Path, model: str) -> tuple[dict, dict]:
    """The store's row of ``model``'s trial and its recorded test predictions."""
    with ResultsStore(run_dir / "results.db", create=False) as store:
        row = next(t for t in store.trials() if t["model"] == model)
        return row, store.predictions(row["id"])


# --- every model family ---------------------------------------------------------------------

# Every model of the study (its InceptionV3 at its smallest input), and one of each other
# family.
FAMILIES = [*((f"study-light-k{k}", 28) for k in range(1, 6)), ("study-conv", 28),
            ("transfer-inception_v3", 75), ("study-residual-conv", 28), ("paper-light-k2", 28),
            ("paper-conv", 28), ("paper-separable", 28), ("paper-cifar-light-k1", 32),
            ("transfer-resnet18", 32)]


def _card(name: str, chans: int, classes: int, size: int) -> ModelCard:
    return ModelCard(
        model=name, seed=0, protocol="seed", trial="", classes=[f"c{i}" for i in range(classes)],
        positive_class=None, threshold=None, image_size=size, image_chans=chans,
        resize="stretch", resample="bilinear", crop=None, input_chans=chans, input_size=size,
        mean=[0.5] * chans, std=[0.25] * chans, data="", data_fingerprint={}, test_metrics={},
        weights="none", precision="fp32", lightlayers_version=L.__version__, cam=False)


@pytest.mark.parametrize(("name", "size"), FAMILIES, ids=[n for n, _ in FAMILIES])
def test_every_family_exports_with_pytorchs_outputs_and_captums_cams(name, size):
    torch.manual_seed(0)
    kw = {"weights": None} if name.startswith("transfer-") else {}
    model = L.create_model(name, **kw)
    chans, classes = model.model_info.in_chans, model.model_info.num_classes
    # BatchNorm statistics that are not the identity, so that they are checked too.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, chans, size, size) * 4 - 1)
    model.eval()
    card = _card(name, chans, classes, size)
    deployable, example = ex.deployable_for(model, card)
    assert deployable.with_cam
    blob = ex.to_onnx(deployable, example, card)
    run = ex.run_model(blob)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, chans, size, size), dtype=np.uint8)
    check = ex.verify(run, deployable, Split(images, np.zeros(7, np.int64), None), card)
    assert check.images == 7
    assert check.max_prob_diff <= ex.FP32_TOLERANCE
    assert check.cam_rel_diff is not None and check.cam_rel_diff <= ex.CAM_TOLERANCE
    # The batch axis is dynamic: one image alone gives what it gave in the batch.
    x = next(ex.batches(Split(images, np.zeros(7, np.int64), None), card))[0]
    np.testing.assert_allclose(run(x[:1])[0], run(x)[0][:1], atol=1e-6)
    assert ex.card_of_bytes(blob).model == name


def test_model_card_round_trip_and_decision_rule():
    card = _card("study-light-k3", 3, 2, 28).replace(positive_class=1, threshold=0.8,
                                                     test_metrics={"accuracy": 0.9})
    props = card.to_props()
    assert all(isinstance(v, str) for v in props.values())
    assert ModelCard.from_props(props, "f.onnx") == card
    probs = np.array([[0.3, 0.7], [0.1, 0.9], [0.6, 0.4]])
    # The threshold chosen on validation decides, as the trial's metrics did; without one,
    # the more probable class.
    assert card.predicted(probs).tolist() == [0, 1, 0]
    assert card.replace(threshold=None).predicted(probs).tolist() == [1, 1, 0]
    with pytest.raises(DeployError, match="format 'other/9'"):
        ModelCard.from_props({**props, "format": "other/9"}, "f.onnx")
    with pytest.raises(DeployError, match="lacks 'classes'"):
        ModelCard.from_props({k: v for k, v in props.items() if k != "classes"}, "f.onnx")


# --- int8 on a trained PneumoniaMNIST model -----------------------------------------------

@pytest.fixture(scope="module")
def pneumonia_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "pneumonia"
    return _run(PNEUMONIA_NPZ, out, "study-light-k3", "--epochs", "2", "--size", "28")


def test_int8_export_is_half_the_size_and_as_accurate(pneumonia_run, tmp_path, capsys):
    out = tmp_path / "k3.onnx"
    assert cli(["export", str(pneumonia_run), "--model", "study-light-k3", "--int8",
                "--out", str(out), "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert "max |probability difference| vs PyTorch" in cap.err
    assert res["verification"]["images"] == 524  # the whole validation split
    assert res["verification"]["max_prob_diff"] <= 1e-4
    assert res["size_bytes"] == out.stat().st_size
    assert res["size_bytes"] <= 0.5 * res["fp32_size_bytes"]
    test = res["test"]
    assert test["images"] == 624
    # The fp32 file scores what PyTorch recorded (an image within 1e-4 of the cut may flip).
    assert abs(test["fp32"]["accuracy"] - test["recorded"]["accuracy"]) <= 1 / 624
    assert test["fp32"]["accuracy"] > 0.7  # trained, not collapsed: the comparison means something
    assert abs(test["int8"]["accuracy"] - test["fp32"]["accuracy"]) <= 0.02
    assert abs(test["int8"]["auc"] - test["fp32"]["auc"]) <= 0.02

    # The file describes itself.
    import onnx

    proto = onnx.load(str(out))
    card = ex.read_card(out)
    row, preds = _trial(pneumonia_run, "study-light-k3")
    with ResultsStore(pneumonia_run / "results.db", create=False) as store:
        fingerprint = store.meta()["data_fingerprint"]
    assert card.precision == "int8" and card.cam
    assert card.classes == ["normal", "pneumonia"] == preds["classes"]
    assert (card.image_size, card.input_size, card.image_chans, card.input_chans) == \
        (28, 28, 1, 3)
    # PneumoniaMNIST holds the centre square of each X-ray: a new one is cut the same way.
    assert card.resize == "crop" and card.preprocessing["source_cut"].startswith("centre")
    assert card.data_fingerprint == fingerprint
    assert card.test_metrics["accuracy"] == row["accuracy"]
    assert card.test_metrics["auc"] == row["auc"]
    assert card.lightlayers_version == L.__version__
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    assert not any(n.op_type == "Conv" for n in proto.graph.node)  # convolutions run in int8
    # Its probabilities on the test split (1 image and 64 at a time) are those of the run.
    run = ex.run_model(out)
    fp32 = preds["probs"]
    got = np.concatenate([run(x)[0] for x, _ in ex.batches(_npz_test(), card)])
    assert got.shape == fp32.shape
    # int8 rounding moves a probability by a few hundredths on average.
    print("int8 vs fp32: mean |diff|", np.abs(got - fp32).mean(), "agreement",
          (got.argmax(1) == fp32.argmax(1)).mean())
    assert np.abs(got - fp32).mean() < 0.05
    assert (got.argmax(1) == fp32.argmax(1)).mean() >= 0.95


def _npz_test() -> Split:
    with np.load(PNEUMONIA_NPZ) as z:
        return Split(z["test_images"][:, None], z["test_labels"][:, 0].astype(np.int64), None)


# --- predict on the chest X-ray archive -------------------------------------------------------

def _chest_subset(dest: Path, per_class: dict[str, int]) -> Path:
    """A small archive of the shared chest X-ray archive's first images of each split/class,
    in its layout (chest_xray_224/{train,test}/{NORMAL,PNEUMONIA}/...)."""
    got = dict.fromkeys(per_class, 0)
    with tarfile.open(CHEST_TAR) as src, tarfile.open(dest, "w:gz") as out:
        for m in src:
            key = "/".join(m.name.split("/")[1:3])
            if m.isfile() and got.get(key, per_class.get(key, 0)) < per_class.get(key, 0):
                got[key] += 1
                out.addfile(m, src.extractfile(m))
            if got == per_class:
                break
    return dest


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    root = tmp_path_factory.mktemp("chest")
    archive = _chest_subset(root / "chest.tar.gz", {
        "train/NORMAL": 60, "train/PNEUMONIA": 60, "test/NORMAL": 15, "test/PNEUMONIA": 15})
    run_dir = _run(archive, root / "run", "study-light-k2,transfer-resnet18", "--epochs", "3",
                   "--size", "32", "--batch-size", "16", "--lr", "3e-3", "--weights", "none")
    with tarfile.open(archive) as tf:  # its files, as a user has them
        for m in tf.getmembers():
            dest = root / "files" / m.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tf.extractfile(m).read())
    return run_dir, root / "files" / "chest_xray_224" / "test"


def _recorded_by_path(run_dir: Path, model: str, test_dir: Path) -> dict[str, np.ndarray]:
    """The run's recorded test probabilities of ``model`` by file path (the test split is in
    sorted file order)."""
    _, preds = _trial(run_dir, model)
    files = sorted(p.relative_to(test_dir).as_posix() for p in test_dir.rglob("*.jpeg"))
    assert len(files) == len(preds["probs"]) == 30
    return {str(test_dir / f): p for f, p in zip(files, preds["probs"], strict=True)}


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.parametrize("model", ["study-light-k2", "transfer-resnet18"])
def test_predict_on_xray_files_equals_the_recorded_test_predictions(chest, model, tmp_path,
                                                                     capsys):
    run_dir, test_dir = chest
    recorded = _recorded_by_path(run_dir, model, test_dir)
    out = tmp_path / f"{model}.onnx"
    assert cli(["export", str(run_dir), "--model", model, "--out", str(out)]) == 0
    capsys.readouterr()
    sources = [str(out), f"{run_dir}:{model}:0"]
    if model == "study-light-k2":
        sources.append(str(tmp_path / "m.pt"))
        assert cli(["export", str(run_dir), "--model", model, "--format", "torchscript",
                    "--out", sources[-1]]) == 0
        capsys.readouterr()
    for source in sources:
        assert cli(["predict", source, str(test_dir), "--quiet"]) == 0
        rows = _csv_rows(capsys.readouterr().out)
        assert sorted(r["path"] for r in rows) == sorted(recorded)
        for r in rows:
            want = recorded[r["path"]]
            got = np.array([float(r["prob_NORMAL"]), float(r["prob_PNEUMONIA"])])
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=r["path"])
            assert r["predicted"] == ("NORMAL", "PNEUMONIA")[int(want.argmax())]
    # The recorded probabilities are not all alike, so the comparison is image by image.
    assert np.ptp(np.stack(list(recorded.values()))[:, 1]) > 1e-3


def test_default_choice_is_the_best_on_validation(chest):
    run_dir, _ = chest
    with ResultsStore(run_dir / "results.db", create=False) as store:
        val = {}
        for t in store.trials(status="done"):
            kept = next(h for h in store.history(t["id"]) if h["epoch"] == t["best_epoch"])
            val[t["model"]] = kept["val_auc"]
    trial, key, n = choose_trial(run_dir)
    assert (key, n) == ("val_auc", 2)
    assert trial.model_name == max(val, key=val.get)
    assert val[trial.model_name] > min(val.values())  # a real choice between two scores
    assert choose_trial(run_dir, model="transfer-resnet18")[0].model_name == "transfer-resnet18"


def test_predict_archives_json_cams_and_unreadable_images(chest, tmp_path, capsys):
    run_dir, test_dir = chest
    inputs = tmp_path / "in"
    inputs.mkdir()
    picks = sorted(test_dir.rglob("*.jpeg"))[::6]  # 5 images, both classes
    with tarfile.open(inputs / "some.tar.gz", "w:gz") as tf:
        for p in picks[:3]:
            tf.add(p, f"x/{p.parent.name}/{p.name}")
    (inputs / "broken.png").write_bytes(b"not an image")
    cams = tmp_path / "cams"
    argv = ["predict", f"{run_dir}:study-light-k2", str(inputs / "some.tar.gz"), str(picks[3]),
            str(picks[4]), str(inputs / "broken.png"), "--json", "--cam", str(cams),
            # Its file's last map is 4x4 at 32 px: drawn only when asked to.
            "--cam-min-side", "4", "--batch-size", "2", "--out", str(tmp_path / "p.json")]
    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert f"skipped {inputs / 'broken.png'}" in err
    res = json.loads((tmp_path / "p.json").read_text())
    preds = res["predictions"]
    assert len(preds) == 5
    assert [s["path"] for s in res["skipped"]] == [str(inputs / "broken.png")]
    assert preds[0]["path"].startswith(str(inputs / "some.tar.gz"))
    for p in preds:
        assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
        cam = Path(p["cam"])
        assert cam.parent == cams
        # The 32-px input shown at 224 px, with its label above and colour scale beside.
        width, height = Image.open(cam).size
        assert width > 224 + 60 and height > 224 + 20
    heatmaps = [p for p in cams.iterdir() if p.suffix == ".png"]
    assert len({p["cam"] for p in preds}) == len(heatmaps) == 5
    # The same images from the files and from the archive get the same numbers.
    by_name = {Path(p["path"]).name: p["probabilities"] for p in preds}
    recorded = _recorded_by_path(run_dir, "study-light-k2", test_dir)
    for p in picks:
        assert by_name[p.name]["NORMAL"] == pytest.approx(recorded[str(p)][0], abs=1e-4)


def test_cam_examples_are_the_recorded_most_confident_of_each_kind(chest, tmp_path):
    from lightlayers.deploy.examples import cam_examples, write_cam_figure

    run_dir, _ = chest
    _, preds = _trial(run_dir, "study-light-k2")
    p_pos = preds["probs"][:, 1]  # PNEUMONIA, the positive class
    labels, predicted = preds["labels"], preds["probs"].argmax(1)
    examples = cam_examples(run_dir, "study-light-k2", per_kind=2)
    assert list(examples) == ["true positive", "false positive", "false negative"]
    want = {"true positive": (labels == 1) & (predicted == 1),
            "false positive": (labels == 0) & (predicted == 1),
            "false negative": (labels == 1) & (predicted == 0)}
    for kind, found in examples.items():
        candidates = np.flatnonzero(want[kind])
        assert [e.index for e in found] == sorted(
            candidates, key=lambda i: p_pos[i] if kind == "false negative" else -p_pos[i])[:2]
        for e in found:
            assert e.label == ("NORMAL", "PNEUMONIA")[labels[e.index]]
            assert e.probability == pytest.approx(preds["probs"][e.index].max())
            assert e.overlay.shape == (224, 224, 3) and e.overlay.dtype == np.uint8
    assert sum(len(v) for v in examples.values()) >= 2
    fig = write_cam_figure(examples, tmp_path / "cams.png", "study-light-k2 seed 0")
    assert Image.open(fig).format == "PNG"


# --- Grad-CAM points at the bright square -------------------------------------------------

SIDE, SQUARE = 32, 12


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """Noisy dark images, each with a grey 8-px distractor square; the class "square" has a
    bright 12-px square too. Returns (trained run folder, test images of "square" with their
    squares' top-left corners)."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    corners: dict[str, tuple[int, int]] = {}
    for split, n in (("train", 150), ("test", 30)):
        for cls in ("plain", "square"):
            folder = root / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 90, (SIDE, SIDE)).astype(np.uint8)
                r, c = rng.integers(0, SIDE - SQUARE + 1, 2)
                r2, c2 = rng.integers(0, SIDE - 8 + 1, 2)
                img[r2:r2 + 8, c2:c2 + 8] = 140
                if cls == "square":
                    img[r:r + SQUARE, c:c + SQUARE] = 250
                path = folder / f"{i:03d}.png"
                Image.fromarray(img).save(path)
                if split == "test" and cls == "square":
                    corners[str(path)] = (int(r), int(c))
    run_dir = _run(root / "data", root / "run", "study-residual-conv,study-light-k2",
                   "--epochs", "6", "--batch-size", "16", "--lr", "3e-3")
    return run_dir, corners


def _peaks(run_dir: Path, model: str, corners: dict[str, tuple[int, int]],
           tmp_path: Path) -> list[tuple[int, int]]:
    out = tmp_path / f"{model}.onnx"
    assert cli(["export", str(run_dir), "--model", model, "--out", str(out)]) == 0
    card = ex.read_card(out)
    run = ex.run_model(out)
    images = np.stack([np.asarray(Image.open(p))[None] for p in corners])
    x = next(ex.batches(Split(images, np.zeros(len(images), np.int64), None), card))[0]
    probs, cams = run(x)
    square = card.classes.index("square")
    assert (probs.argmax(1) == square).mean() >= 0.9  # it learnt the task
    return [peak(cams[i, square], SIDE) for i in range(len(images))]


def _inside(peaks, corners, margin: int = 0) -> float:
    """Share of ``peaks`` inside their image's square (grown by ``margin`` pixels)."""
    hits = [r - margin <= pr < r + SQUARE + margin and c - margin <= pc < c + SQUARE + margin
            for (pr, pc), (r, c) in zip(peaks, corners.values(), strict=True)]
    return float(np.mean(hits))


def test_gradcam_peaks_inside_the_deciding_square(squares, tmp_path, capsys):
    run_dir, corners = squares
    peaks = _peaks(run_dir, "study-residual-conv", corners, tmp_path)
    assert _inside(peaks, corners) >= 0.6
    # The same maps against the squares of other images: the hits above are no accident.
    shifted = dict(zip(corners, [*list(corners.values())[1:], next(iter(corners.values()))],
                       strict=True))
    assert _inside(peaks, shifted) <= 0.3


def test_gradcam_of_a_light_model_points_at_the_square(squares, tmp_path):
    """LightConv2d sees 5x5 per layer: its last 4x4 map is coarser. Within half a cell (4 px)
    of the square for most images."""
    run_dir, corners = squares
    peaks = _peaks(run_dir, "study-light-k2", corners, tmp_path)
    assert _inside(peaks, corners, margin=4) >= 0.6


# --- bad input: one line, exit 2 ------------------------------------------------------------

def test_bad_input_is_one_clear_line(pneumonia_run, tmp_path, capsys):
    missing = tmp_path / "nope"
    line = _error_line(capsys, ["export", str(missing)])
    assert str(missing) in line and "does not exist" in line
    line = _error_line(capsys, ["export", str(tmp_path)])
    assert "not a run folder" in line
    line = _error_line(capsys, ["export", str(pneumonia_run), "--model", "study-conv"])
    assert "no finished trial of study-conv" in line and "study-light-k3" in line
    line = _error_line(capsys, ["export", str(pneumonia_run), "--seed", "7"])
    assert "seed 7" in line and "finished seeds: 0" in line
    line = _error_line(capsys, ["export", str(pneumonia_run), "--int8", "--format",
                                "torchscript"])
    assert "--int8 needs --format onnx" in line
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    line = _error_line(capsys, ["predict", str(pneumonia_run), str(broken), "--quiet"])
    assert "none of the 1 input image(s) could be decoded" in line
    line = _error_line(capsys, ["predict", str(missing / "m.onnx"), str(broken)])
    assert str(missing / "m.onnx") in line
    line = _error_line(capsys, ["predict", str(pneumonia_run), str(missing)])
    assert str(missing) in line and "does not exist" in line
    not_onnx = tmp_path / "m.onnx"
    not_onnx.write_bytes(b"\x00 not a model")
    line = _error_line(capsys, ["predict", str(not_onnx), str(broken)])
    assert str(not_onnx) in line
    # An ONNX file that `lightlayers export` did not write: no model card to preprocess by.
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    line = _error_line(capsys, ["predict", str(foreign), str(broken)])
    assert "holds no lightlayers metadata" in line and "lightlayers export" in line
    # Other data than the run's.
    line = _error_line(capsys, ["export", str(pneumonia_run), "--data", "digits"])
    assert "is not the data" in line and str(pneumonia_run) in line


# --- the deployment benchmark ---------------------------------------------------------------

def test_alternate_runs_the_contestants_in_turn():
    from lightlayers.deploy.bench import alternate

    order: list[str] = []
    times = alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                      budget_s=0, min_rounds=4, max_rounds=10)
    assert order == ["a", "b"] * 5  # one warm-up round, then four timed ones
    assert [len(v) for v in times.values()] == [4, 4]
    assert all(t >= 0 for v in times.values() for t in v)


def test_bench_deploy_script_measures_every_contestant(tmp_path, capsys):
    import importlib.util

    from lightlayers.deploy.bench import DEPLOYMENT_METRICS

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_deploy.py"
    spec = importlib.util.spec_from_file_location("bench_deploy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "deploy.json"
    assert bench.main(["--models", "study-light-k3", "--budget-s", "0.2", "--threads", "1",
                       "--json", str(out)]) == 0
    row = json.loads(out.read_text())["models"][0]
    assert row["model"] == "study-light-k3" and row["params_total"] == 6447
    assert set(DEPLOYMENT_METRICS) <= set(row)
    assert row["onnx_int8_mb"] <= 0.5 * row["onnx_fp32_mb"]
    for k in ("torch_cpu", "ort", "ort_int8"):
        assert 0 < row[f"{k}_latency_ms"] <= row[f"{k}_latency_p95_ms"]
        assert row[f"{k}_img_s"] > 0
    assert row["ratio_img_s_ort_torch"] == row["ort_img_s"] / row["torch_cpu_img_s"]
    assert "study-light-k3" in capsys.readouterr().out
