"""The exported model's card for people: a Markdown file beside it (``model.onnx`` ->
``model.md``) in Hugging Face's model-card layout.

YAML front matter (license, tags, datasets, metrics and a ``model-index`` holding the file's
test results), then: model details, intended use and limits, the training data and its cut,
the evaluation (test metrics, with 95% intervals over the run's seeds of the same model when
there are several; calibration; the decision threshold), limitations, and how to use it. Every
number comes from the run folder's record or the export's own measurement; nothing is
re-estimated here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightlayers.deploy.card import ModelCard

__all__ = ["MARKER", "card_path", "is_model_card", "model_card_markdown"]

# The line that tells a card this tool wrote (and may replace) from a user's own Markdown.
MARKER = "<!-- written by `lightlayers export`; replaced when the model is exported again -->"

# The test scores a card reports, in this order, with the name Hugging Face's metrics use.
_SCORES = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy"),
           ("auc", "roc_auc"), ("sensitivity", "recall"), ("specificity", "specificity"),
           ("precision", "precision"), ("f1", "f1"), ("ece", "ece"), ("test_loss", "loss"))


def card_path(model_file: Path | str) -> Path:
    """Where the card of ``model_file`` goes: the same name with ``.md``."""
    return Path(model_file).with_suffix(".md")


def is_model_card(path: Path) -> bool:
    """A card ``lightlayers export`` wrote: front matter, then the marker line."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(65536)
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("---\n") and f"\n{MARKER}\n" in head


def _text(v: Any) -> str:
    """A name from the data (a class, a folder) on one line: a line break in it would start
    a heading or a list of its own."""
    return " ".join(str(v).split())


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _population(card: ModelCard, data: dict[str, Any]) -> str:
    """Who the training images come from, as far as the record knows."""
    name = str(data.get("name") or card.data)
    flag = name.split("_")[0].split(".")[0].split("-")[0].lower()
    if "pneumonia" in flag or name.lower().startswith("chest_xray"):
        return ("pediatric chest X-rays (children aged one to five) from a single hospital, "
                "Guangzhou Women and Children's Medical Center (Kermany et al. 2018), labelled "
                "normal or pneumonia; adults, other hospitals, devices and views are not in it")
    return (f"the images of {_text(name)} only; the record says nothing of who or what they "
            "show beyond their classes")


def model_card_markdown(card: ModelCard, trial: Any, siblings: list[Any], *, file_name: str,
                        file_format: str, file_bytes: int, test_images: int,
                        chosen_key: str, candidates: int,
                        measured: dict[str, Any] | None = None) -> str:
    """The card of the exported file ``file_name``.

    ``trial``: the exported :class:`lightlayers.runfolder.trials.FinishedTrial`; ``siblings``:
    the run's finished trials of the same model and training size (itself included), whose
    spread gives the 95% intervals. ``chosen_key``, ``candidates``: the validation score the
    export chose it on, among how many trials. ``measured``: the file's own test scores when
    they are not the trial's recorded ones (an int8 file); None for an fp32 file, which scored
    what the trial recorded.
    """
    import yaml

    from lightlayers.metrics.registry import get_metric
    from lightlayers.report.stats import summarize
    from lightlayers.report.table import clipped

    row, meta = trial.row, trial.meta
    data = meta.get("data") or {}
    data_name = str(data.get("name") or card.data)
    own = {k: row.get(k) for k, _ in _SCORES if row.get(k) is not None}
    file_scores = own if measured is None else {k: v for k, v in measured.items()
                                                if k in own and v is not None}
    model_index = [{"name": card.model, "results": [{
        "task": {"type": "image-classification", "name": "Image classification"},
        "dataset": {"name": data_name, "type": data_name, "split": "test"},
        "metrics": [{"type": hf, "value": float(file_scores[k]),
                     "name": f"test {k.removeprefix('test_').replace('_', ' ')}"}
                    for k, hf in _SCORES if k in file_scores],
    }]}]
    front = {
        # The weights are the training data's as much as ours: their terms bind them.
        "license": "other", "license_name": "training-data-terms",
        "library_name": "onnx" if file_format == "onnx" else "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "lightlayers", file_format, card.precision,
                 card.model],
        "datasets": [data_name],
        "metrics": [hf for k, hf in _SCORES if k in file_scores],
        "model-index": model_index,
    }
    sizes = (row.get("config") or {}).get("train_size")
    train_set = (trial.extra.get("train_set") or {})
    seeds = sorted(t.seed for t in siblings)
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---",
             MARKER, "", f"# {_text(card.model)}: {_text(data_name)} classifier "
             f"(seed {card.seed}, {card.precision})", ""]
    binary = card.positive_class is not None and len(card.classes) == 2
    lines += [
        f"A {'binary' if binary else f'{len(card.classes)}-class'} image classifier, "
        f"`{_text(card.model)}`, trained by lightlayers {card.lightlayers_version} and exported "
        f"as `{_text(file_name)}`.", "",
        "## Model details", "",
        f"- **Model**: `{_text(card.model)}` ({_int(row.get('params_total'))} parameters); "
        f"pretrained weights: {_text(card.weights)}",
        f"- **File**: `{_text(file_name)}`, {file_format}, {card.precision}, "
        f"{file_bytes:,} bytes",
        f"- **Trial**: seed {card.seed}, protocol `{_text(card.protocol)}`, key "
        f"`{_text(card.trial)}`",
        f"- **Chosen on validation**: {_chosen(card.chosen_on, chosen_key, candidates)}",
        f"- **Input**: {card.input_chans} x {card.input_size} x {card.input_size} float32 "
        f"(batch first); **output**: one probability per class"
        + (", and a Grad-CAM map per class" if card.cam else ""),
        f"- **Classes**: {', '.join(f'`{_text(c)}`' for c in card.classes)}"
        + (f" (positive: `{_text(card.classes[card.positive_class])}`)"
           if card.positive_class is not None else ""),
        "",
        "## Intended use and limits", "",
        "For research and teaching: comparing small image classifiers under tight data and "
        "hardware budgets, and reproducing the study it comes from. **It is not a medical "
        "device**: it has not been validated clinically, is not cleared by any regulator, and "
        "must not be used to diagnose, triage or treat anyone.", "",
        f"Population: {_population(card, data)}. Its numbers hold for images like the test "
        "split's; on others (another site, scanner, age group, view or preprocessing) they are "
        "unknown.", "",
        "## Training data and its cut", "",
        f"- **Data**: {_text(data_name)} (`{_text(card.data)}`), split sizes "
        + ", ".join(f"{s} {n}" for s, n in (data.get("split_sizes") or {}).items()),
    ]
    if sizes:
        lines.append(f"- **Training size**: {_text(sizes)}, {train_set.get('images')} images "
                     "drawn by patient from the training split")
    for note in data.get("notes") or []:
        lines.append(f"- {_text(note)}")
    pre = card.preprocessing or {}
    labels = (("source_cut", "Cut by the source"), ("resize", "Resize"),
              ("center_crop", "Centre crop"), ("scaling", "Scaling"),
              ("normalisation", "Normalisation"), ("channels", "Channels"))
    lines += ["", "Each image, from its file to the model's input:", ""]
    lines += [f"1. **{label}**: {_text(pre[key])}" for key, label in labels if pre.get(key)]
    if card.mean is not None:
        lines.append(f"1. **Mean / std**: {card.mean} / {card.std}")
    lines += ["", "## Evaluation", "",
              f"On the {test_images} images of the test split, which played no part in "
              "training or in choosing this trial."]
    if measured is not None:
        lines.append(f"This {card.precision} file scored "
                     + ", ".join(f"{k.replace('_', ' ')} {_num(v)}"
                                 for k, v in file_scores.items())
                     + "; the table gives the trial's float32 numbers.")
    lines.append("")
    several = len(siblings) >= 2
    head = ["Metric", f"seed {card.seed}"]
    if several:
        head.append(f"mean ± std over {len(siblings)} seeds ({', '.join(map(str, seeds))}) "
                    "[95% CI]")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, _ in _SCORES:
        if key not in own:
            continue
        cells = [key.replace("_", " "), _num(own[key])]
        if several:
            # A score's interval clipped to [0, 1], as the report gives it.
            s = clipped(summarize(t.row.get(key) for t in siblings), get_metric(key))
            cells.append("n/a" if s.std is None else
                         f"{s.mean:.4f} ± {s.std:.4f} [{s.ci_low:.4f}, {s.ci_high:.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    if several and len(siblings) < 3:
        lines += ["With two seeds the interval is wide: it says little.", ""]
    if not several:
        lines += ["One seed: no interval; the spread between seeds is unknown.", ""]
    ece = row.get("ece")
    lines += [f"- **Calibration**: expected calibration error {_num(ece)} (top label, 15 "
              "equal-width bins): the gap between the stated probability and the accuracy "
              "behind it" if ece is not None else
              "- **Calibration**: not recorded for this trial",
              f"- **Threshold**: {_threshold(card, binary)}", ""]
    lines += [
        "## Limitations", "",
        "- Trained and tested on one dataset's split; no external test set.",
        f"- {'Few seeds' if len(siblings) < 5 else 'A handful of seeds'}: the differences "
        "between models of the same study are often within their intervals.",
        "- The probabilities are not calibrated beyond what the ECE above says.",
        "- Grad-CAM maps show where the last layers responded, not why; they are not an "
        "explanation a clinician can rely on.",
    ]
    if card.precision == "int8":
        lines.append("- int8: quantized after training, calibrated on training images; its "
                     "scores differ from the float32 trial's (above).")
    lines += ["", "## How to use", "", "```bash",
              "pip install 'lightlayers[onnx]'" if file_format == "onnx"
              else "pip install lightlayers",
              f"lightlayers predict {_text(file_name)} IMAGES_OR_FOLDERS --out predictions.csv",
              "```", "",
              "predict decodes each image as training did (the steps above, read from the file's "
              "own metadata) and writes one row per image: the predicted class and one "
              "probability per class. `--cam DIR` adds a Grad-CAM heatmap per image.", ""]
    return "\n".join(lines)


def _int(v: Any) -> str:
    return "n/a" if v is None else f"{int(v):,}"


def _chosen(chosen: dict[str, Any], key: str, candidates: int) -> str:
    if chosen.get(key) is None:
        return f"best of {candidates} finished trial(s); the test split was not looked at"
    return (f"{key} {chosen[key]:.4f} at epoch {chosen.get('epoch')}, best of {candidates} "
            "finished trial(s); the test split was not looked at")


def _threshold(card: ModelCard, binary: bool) -> str:
    if not binary:
        return "none: the most probable class is predicted"
    assert card.positive_class is not None
    positive = _text(card.classes[card.positive_class])
    if card.threshold is None:
        return f"0.5: `{positive}` when its probability is at least 0.5"
    return (f"{card.threshold:.4f}, chosen on validation (Youden's J): `{positive}` when its "
            "probability is at least that")
