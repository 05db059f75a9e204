"""``lightlayers export`` writes a Markdown model card beside the file (Hugging Face's layout),
from a tiny real run on digits; a card it did not write is never replaced."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from lightlayers.cli import main
from lightlayers.runfolder.store import ResultsStore

pytest.importorskip("onnxruntime", reason="install lightlayers[test]")
pytest.importorskip("captum", reason="install lightlayers[test]")

SECTIONS = ["## Model details", "## Intended use and limits", "## Training data and its cut",
            "## Evaluation", "## Limitations", "## How to use"]


def cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("card") / "run"
    code, _, err = cli(["run", "--data", "digits", "--models", "paper-conv", "--seeds", "0,1",
                        "--epochs", "1", "--threads", "1", "--protocol", "seed", "--quiet",
                        "--no-report", "--out", str(path)])
    assert code == 0, err
    return path


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, sep, _ = text[4:].partition("\n---\n")
    assert sep, "no closing --- of the front matter"
    return yaml.safe_load(head)


def test_export_writes_a_model_card_beside_the_file(run, tmp_path):
    out = tmp_path / "model.onnx"
    code, stdout, err = cli(["export", str(run), "--out", str(out), "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    card = tmp_path / "model.md"
    assert result["model_card"] == str(card)
    with ResultsStore(run / "results.db", create=False) as store:
        (trial,) = [t for t in store.trials(status="done") if t["seed"] == result["seed"]]
        accuracies = [t["accuracy"] for t in store.trials(status="done")]

    text = card.read_text(encoding="utf-8")
    meta = front_matter(text)
    assert meta["license"] == "other" and meta["pipeline_tag"] == "image-classification"
    assert meta["datasets"] == ["digits"] and "accuracy" in meta["metrics"]
    assert {"lightlayers", "onnx", "fp32", "paper-conv"} <= set(meta["tags"])
    (entry,) = meta["model-index"]
    assert entry["name"] == "paper-conv"
    scores = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
    assert scores["accuracy"] == trial["accuracy"]
    assert scores["roc_auc"] == trial["auc"]

    assert [line for line in text.splitlines() if line.startswith("## ")] == SECTIONS
    assert "# paper-conv: digits classifier" in text
    assert "**It is not a medical device**" in text
    # Two seeds: the mean over both, with its interval, beside the exported seed's score.
    mean = sum(accuracies) / 2
    assert "mean ± std over 2 seeds (0, 1) [95% CI]" in text
    (acc_row,) = [line for line in text.splitlines() if line.startswith("| accuracy |")]
    assert acc_row.startswith(f"| accuracy | {trial['accuracy']:.4f} | {mean:.4f} ± ")
    assert "expected calibration error" in text and "**Threshold**: none" in text
    assert "lightlayers predict model.onnx IMAGES_OR_FOLDERS" in text
    assert "1. **Resize**: stretch" in text  # the card's preprocessing, step by step

    # Exported again to the same place: both files are the tool's own and are replaced.
    card.write_text(text + "\nedited\n", encoding="utf-8")
    code, _, err = cli(["export", str(run), "--out", str(out)])
    assert code == 0, err
    assert card.read_text(encoding="utf-8") == text


def test_a_foreign_card_is_refused_and_left_alone(run, tmp_path):
    card = tmp_path / "model.md"
    card.write_text("# my notes\n", encoding="utf-8")
    code, _, err = cli(["export", str(run), "--out", str(tmp_path / "model.onnx")])
    assert code == 2, err
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert f"model card {card} exists and was not written by lightlayers" in lines[0]
    assert "move that file away" in lines[0]
    assert card.read_text(encoding="utf-8") == "# my notes\n"
    assert not (tmp_path / "model.onnx").exists()


def test_the_exports_folder_gets_the_card_too(run):
    code, stdout, err = cli(["export", str(run), "--model", "paper-conv", "--seed", "0",
                             "--json"])
    assert code == 0, err
    result = json.loads(stdout)
    card = Path(result["model_card"])
    assert card == run / "exports" / "paper-conv__seed0.md"
    assert front_matter(card.read_text(encoding="utf-8"))["model-index"][0]["name"] == \
        "paper-conv"
    manifest = json.loads((run / "exports" / ".lightlayers.json").read_text())
    assert "paper-conv__seed0.md" in manifest["files"]
