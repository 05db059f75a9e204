"""Grad-CAM says what it can: the map drawn is the last layer's that is at least 7x7 over the
image; a model with no such layer, or an exported file whose map is smaller, gets one line
saying so instead of a heatmap; heatmaps carry their class, probability and colour scale.
Also the model card's preprocessing entry and the predictions CSV's model columns."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from data_fixtures import pneumonia_subset
from PIL import Image

import lightlayers as L
from lightlayers.cli import main as cli
from lightlayers.deploy import DeployError
from lightlayers.deploy.card import CARD_FORMAT, ModelCard
from lightlayers.deploy.graph import CAM_MIN_SIDE, Deployable, choose_cam_layer, layer_cam


def _deployable(name: str, size: int) -> tuple[Deployable, torch.Tensor]:
    torch.manual_seed(0)
    model = L.create_model(name).eval()
    x = torch.rand(3, model.model_info.in_chans, size, size)
    return Deployable(model, x).eval(), x


@pytest.mark.parametrize(("size", "last"), [(28, False), (64, True)])
def test_the_map_is_the_last_layers_of_at_least_7x7(size, last):
    deployable, x = _deployable("paper-light-k1", size)
    with torch.no_grad():
        file_side = deployable(x)[1].shape[-1]  # the exported file's map
    layer = choose_cam_layer(deployable, x)
    assert not isinstance(layer, str)
    assert layer.side >= CAM_MIN_SIDE
    # At 28 px the last feature map is 3x3: an earlier, finer one is drawn; at 64 px the
    # last map is 8x8 and is the file's own.
    assert (layer.module is None) == last == (file_side >= CAM_MIN_SIDE)
    maps = layer_cam(deployable, layer, x, torch.tensor([0, 1, 1]))
    assert maps.shape == (3, layer.side, layer.side)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    # Asking for a finer map than any layer has: one line, no heatmap.
    note = choose_cam_layer(deployable, x, min_side=size + 1)
    assert isinstance(note, str) and note.startswith("map too coarse: the last layer")
    assert f"at {size} px" in note and "\n" not in note


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """study-conv and paper-light-k1 on PneumoniaMNIST's 28 px chest X-rays, one seed."""
    root = tmp_path_factory.mktemp("gradcam")
    data = pneumonia_subset(root / "pneumoniamnist_28_subset.npz", train=300, val=80, test=120)
    out = root / "run"
    threads = torch.get_num_threads()
    try:
        assert cli(["run", "--data", str(data), "--models", "study-conv,paper-light-k1",
                    "--seeds", "0", "--epochs", "1", "--quiet", "--no-report", "--threads",
                    "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    with np.load(data) as z:
        images = z["test_images"][:3]
    paths = []
    for i, img in enumerate(images):
        path = root / f"xray{i}.png"
        # A wide X-ray: the model card must cut its centre square as the source did.
        Image.fromarray(np.hstack([img, img[:, :14]])).save(path)
        paths.append(path)
    return out, paths


def test_study_conv_at_28_px_draws_its_8x8_layer_or_says_the_map_is_too_coarse(
        small_run, tmp_path, capsys):
    """study-conv pads a 28 px input to 50: its last map is 1x1, the last layer of at least
    7x7 over the image is 8x8. The report and the exported file draw that one alike; asked
    for a finer map than any layer has, both say so in one line instead of a wash."""
    from lightlayers.deploy.examples import cam_examples

    run_dir, images = small_run
    examples = cam_examples(run_dir, "study-conv", per_kind=1)
    assert {e.layer for v in examples.values() for e in v} == {
        "input of stages.19, 8x8 map at 28 px"}
    with pytest.raises(DeployError, match=r"^map too coarse: the last layer with a map is"):
        cam_examples(run_dir, "study-conv", cam_min_side=29)

    cams, out = tmp_path / "cams", tmp_path / "p.csv"
    assert cli(["predict", f"{run_dir}:study-conv", *map(str, images), "--cam", str(cams),
                "--out", str(out), "--quiet"]) == 0
    assert "map too coarse" not in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 3 and all(r["cam"] for r in rows)
    heat = np.asarray(Image.open(rows[0]["cam"]).convert("RGB"), dtype=np.int16)
    assert heat.std(axis=(0, 1)).max() > 10  # not a uniform wash

    cams9, out9 = tmp_path / "cams9", tmp_path / "p9.csv"
    assert cli(["predict", f"{run_dir}:study-conv", *map(str, images), "--cam", str(cams9),
                "--out", str(out9), "--quiet", "--cam-min-side", "9"]) == 0
    err = capsys.readouterr().err
    assert ("map too coarse: the last layer with a map is 8x8 at 28 px; no layer reaches "
            "9x9") in err
    assert len([ln for ln in err.splitlines() if "map too coarse" in ln]) == 1
    assert not list(cams9.glob("*.png"))
    rows = list(csv.DictReader(io.StringIO(out9.read_text())))
    assert len(rows) == 3 and all(not r.get("cam") for r in rows)
    # The two models' heatmaps share one decode of the data.
    shared: dict = {}
    examples = cam_examples(run_dir, "paper-light-k1", per_kind=1, datasets=shared)
    layers = {e.layer for v in examples.values() for e in v}
    assert layers == {"input of stages.20, 7x7 map at 28 px"}
    first = next(iter(shared.values()))[0]
    again = cam_examples(run_dir, "study-conv", per_kind=1, datasets=shared)
    assert len(shared) == 1 and next(iter(shared.values()))[0] is first
    assert {e.layer for v in again.values() for e in v} == {
        "input of stages.19, 8x8 map at 28 px"}


def test_predict_heatmaps_are_labelled(small_run, tmp_path, capsys):
    run_dir, images = small_run
    cams = tmp_path / "cams"
    out = tmp_path / "p.csv"
    # paper-light-k1's last map is 3x3 at 28 px: its file carries the 7x7 map of an earlier
    # layer instead, the gradients traced into the graph.
    assert cli(["predict", f"{run_dir}:paper-light-k1", *map(str, images), "--cam", str(cams),
                "--out", str(out), "--quiet"]) == 0
    assert "map too coarse" not in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    for r in rows:
        png = Image.open(r["cam"]).convert("RGB")
        # The overlay (224 px) with a title above it and a colour bar beside it.
        assert png.width > 224 + 60 and png.height > 224 + 20
        bar = np.asarray(png)[:, png.width - 120:]
        assert (bar[..., 0].astype(int) - bar[..., 2] > 120).any()  # the bar's red end
        assert (bar[..., 2].astype(int) - bar[..., 0] > 120).any()  # and its blue end


def test_card_records_the_cut_scaling_and_csv_names_model_and_threshold(small_run, tmp_path):
    run_dir, images = small_run
    from lightlayers.deploy.trial import trial_card
    from lightlayers.runfolder.trials import choose_trial

    trial, _, _ = choose_trial(run_dir, "paper-light-k1")
    card = trial_card(trial, trial.build_model())
    pre = card.preprocessing
    # PneumoniaMNIST's images are the centre squares of the X-rays: new ones are cut so.
    assert pre["source_cut"].startswith("centre square") and card.resize == "crop"
    assert pre["scaling"] == "uint8 0-255 to float 0-1 (x / 255)"
    assert pre["channels"] == "1 decoded" and "mean" in pre and "std" in pre
    props = card.to_props()
    assert {k: json.loads(v) for k, v in props.items()}["format"] == CARD_FORMAT
    assert ModelCard.from_props(props, "f.onnx") == card
    # Files written before the format entry was JSON still read.
    assert ModelCard.from_props({**props, "format": CARD_FORMAT}, "f.onnx") == card
    onnx = tmp_path / "m.onnx"
    assert cli(["export", str(run_dir), "--model", "paper-light-k1", "--out", str(onnx)]) == 0
    out = tmp_path / "p.csv"
    assert cli(["predict", str(onnx), *map(str, images), "--out", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert text.startswith("path,predicted,")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["model"] for r in rows] == ["paper-light-k1"] * 3
    assert {r["trial"] for r in rows} == {card.trial} and card.trial
    want = "argmax" if card.threshold is None else repr(card.threshold)
    assert {r["threshold"] for r in rows} == {want}


def test_report_says_in_its_grad_cam_section_when_no_map_is_fine_enough(small_run, tmp_path):
    import shutil

    run_dir, _ = small_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    # Finer than any map at 28 px.
    assert cli(["report", str(copy), "--format", "html", "--quiet", "--cam-min-side",
                "29"]) == 0
    html = (copy / "report" / "report.html").read_text()
    section = html.split("Where the models looked (Grad-CAM)")[1].split("<h3>")[0]
    for model in ("study-conv", "paper-light-k1"):
        assert (f"<p class='cam-note'>{model}: no Grad-CAM figure: map too coarse: the last "
                "layer with a map is") in section
    assert "id='fig-cam_" not in html
    assert "no Grad-CAM figure" not in html.split("Where the models looked")[0]


def test_export_carries_the_finer_layers_map_checked_against_captum(small_run, tmp_path):
    from lightlayers.data import Split
    from lightlayers.deploy import export as ex
    from lightlayers.deploy.graph import LayerCamDeployable, reference_cam
    from lightlayers.deploy.trial import trial_card
    from lightlayers.runfolder.trials import choose_trial

    run_dir, _ = small_run
    trial, _, _ = choose_trial(run_dir, "paper-light-k1")
    net = trial.build_model()
    card = trial_card(trial, net)
    deployable, example = ex.deployable_for(net, card)
    assert isinstance(deployable, LayerCamDeployable)
    assert deployable.cam_layer.label == "input of stages.20, 7x7 map at 28 px"
    blob = ex.to_onnx(deployable, example, card)
    run = ex.run_model(blob)
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    x = next(ex.batches(Split(images, np.zeros(5, np.int64), None), card))[0]
    probs, cams = run(x)
    assert cams.shape == (5, 2, 7, 7)  # the batch axis stays dynamic: 5, traced with 2
    target = torch.from_numpy(probs.argmax(1))
    want = reference_cam(deployable, torch.from_numpy(x), target).numpy()
    got = cams[np.arange(5), target.numpy()]
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    check = ex.verify(run, deployable, Split(images, np.zeros(5, np.int64), None), card)
    assert check.cam_rel_diff is not None and check.cam_rel_diff <= ex.CAM_TOLERANCE
    # study-conv pads a 28 px input to 50: the file's map is its 8x8 layer's, stretched over
    # the padded input with the image's square cut out, as Captum's maps are; the card says 8.
    trial, _, _ = choose_trial(run_dir, "study-conv")
    net = trial.build_model()
    card = trial_card(trial, net)
    deployable, example = ex.deployable_for(net, card)
    assert isinstance(deployable, LayerCamDeployable)
    assert deployable.cam_layer.padded == 50
    blob = ex.to_onnx(deployable, example, card)
    (tmp_path / "study-conv.onnx").write_bytes(blob)
    assert ex.read_card(tmp_path / "study-conv.onnx").cam_side == 8
    run = ex.run_model(blob)
    split = Split(images, np.zeros(5, np.int64), None)
    probs, cams = run(next(ex.batches(split, card))[0])
    assert cams.shape == (5, 2, 28, 28)
    check = ex.verify(run, deployable, split, card)
    assert check.cam_rel_diff is not None and check.cam_rel_diff <= ex.CAM_TOLERANCE
