"""Per-image test probabilities as a committed file, ``predictions.csv.gz``, and back.

A run folder's ``results.db`` holds every trial's test probabilities, but it is not committed
with the results (it is large and binary). ``predictions.csv.gz`` holds the same numbers as
text, one row per trial and test image, so that accuracy, AUC, ECE, seed ensembles and the
paired bootstrap can be recomputed from the committed files alone
(:func:`run_from_files`). The file is deterministic: rows sorted, floats in one fixed format,
gzip without a time stamp or file name, so an unchanged run exports byte-identical bytes.

Columns: ``trial_key`` (the store's ``model|seed=N|protocol|data``), ``model``, ``protocol``,
``seed``, ``image`` (the test image's position in the test split, from 0), ``label`` (its
class index), then for a binary task ``probability`` (of class index 1, the chest X-rays'
PNEUMONIA; class 0's is one minus it), else one ``probability_<i>`` per class index.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.report.load import Group, ReportError, RunData

FIELDS = ("trial_key", "model", "protocol", "seed", "image", "label")
# Nine decimals: more than the float32 softmax the models compute resolves, and fixed-point so
# that the same number is always the same text.
PROB_FORMAT = "{:.9f}"
_IDENTITY = ("model", "protocol", "seed")


def predictions_csv_gz(run: RunData) -> bytes:
    """``predictions.csv.gz`` of every finished trial of ``run`` (of every training size, in a
    learning-curve study). Raises :class:`ReportError` naming the trials that have no stored
    test predictions, or whose class counts differ."""
    trials = list(run.curve) or [t for g in run.groups for t in g.done]
    missing = [t for t in trials if t["id"] not in run.predictions]
    if missing:
        names = ", ".join(f"{t['model']} seed {t['seed']} ({t['protocol']})" for t in missing)
        raise ReportError(f"{run.run_dir}: no stored test predictions for {names}; rerun "
                          "those trials (`lightlayers run` redoes a trial removed from "
                          "results.db) or export without them")
    n_classes = {run.predictions[t["id"]]["probs"].shape[1] for t in trials}
    if len(n_classes) > 1:
        raise ReportError(f"{run.run_dir}: trials with {sorted(n_classes)} classes; export one "
                          "task per file")
    binary = n_classes == {2}
    width = next(iter(n_classes), 2)
    header = [*FIELDS, *(["probability"] if binary else
                         [f"probability_{i}" for i in range(width)])]
    rows: list[tuple[Any, ...]] = []
    for t in trials:
        p = run.predictions[t["id"]]
        probs = np.asarray(p["probs"], dtype=np.float64)
        cols = probs[:, [1]] if binary else probs
        key = t.get("key") or f"{t['model']}|seed={t['seed']}|{t['protocol']}"
        for i, (label, row) in enumerate(zip(np.asarray(p["labels"]), cols, strict=True)):
            rows.append((key, t["model"], t["protocol"], int(t["seed"]), i, int(label),
                         *(PROB_FORMAT.format(float(v)) for v in row)))
    # The key last but one: a learning curve's sizes of one model and seed stay apart.
    rows.sort(key=lambda r: (r[1], r[2], r[3], r[0], r[4]))
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return deterministic_gzip(text.getvalue().encode())


def deterministic_gzip(data: bytes) -> bytes:
    """``data`` gzipped with no time stamp and no file name: the same bytes every time."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def read_predictions(path: str | Path) -> dict[tuple[str, str, int], dict[str, np.ndarray]]:
    """``predictions.csv.gz`` as ``{(model, protocol, seed): {"labels", "probs"}}``, probs of
    shape (images, classes) (a binary file's ``probability`` is class 1's). Raises
    :class:`ReportError` naming the file and the line of a malformed row."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()).decode()
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist; export it with `python scripts/results.py "
                          "export RUN_DIR --out FILE`") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is not a gzipped CSV ({e}); export it again") from None
    reader = csv.reader(io.StringIO(raw))
    header = next(reader, None)
    if header is None or tuple(header[:len(FIELDS)]) != FIELDS or len(header) <= len(FIELDS):
        raise ReportError(f"{path}: the header is not {','.join(FIELDS)},probability...; "
                          "export the file again")
    binary = header[len(FIELDS):] == ["probability"]
    found: dict[tuple[str, str, int], tuple[list[int], list[list[float]]]] = {}
    first_key: dict[tuple[str, str, int], str] = {}
    for line, row in enumerate(reader, start=2):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} cells, the header has {len(header)}")
            seed, image, label = int(row[3]), int(row[4]), int(row[5])
            probs = [float(v) for v in row[len(FIELDS):]]
        except ValueError as e:
            raise ReportError(f"{path} line {line}: {e}; export the file again") from None
        if first_key.setdefault((row[1], row[2], seed), row[0]) != row[0]:
            raise ReportError(f"{path} line {line}: a second trial of {row[1]} seed {seed} "
                              f"({row[0]}): the file holds a learning curve's sizes, which "
                              "are read with their trial keys, not by model and seed")
        labels, rows = found.setdefault((row[1], row[2], seed), ([], []))
        if image != len(labels):
            raise ReportError(f"{path} line {line}: image {image} of {row[1]} seed {seed} "
                              f"out of order (expected {len(labels)}); export the file again")
        labels.append(label)
        rows.append([1.0 - probs[0], probs[0]] if binary else probs)
    return {k: {"labels": np.asarray(lab, dtype=np.int64),
                "probs": np.asarray(pr, dtype=np.float64)} for k, (lab, pr) in found.items()}


def _value(name: str, text: str) -> Any:
    from lightlayers.metrics.registry import get_metric

    if text == "":
        return None
    if name in ("model", "protocol", "status", "error", "run_dir"):
        return text
    if name in ("seed", "attempts"):
        return int(text)
    try:
        metric = get_metric(name)
    except KeyError:
        return text
    if metric.type is bool:
        return bool(int(text))
    return metric.convert(float(text)) if metric.type is not str else text


def read_results_csv(path: str | Path) -> list[dict[str, Any]]:
    """A committed ``results.csv``: one dict per trial, metrics as their registry types."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path} does not exist; copy it from the run folder "
                          "(RUN_DIR/results.csv)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not set(_IDENTITY) <= set(rows[0]):
        raise ReportError(f"{path}: not a results.csv (no model, protocol and seed columns)")
    return [{k: _value(k, v or "") for k, v in r.items()} for r in rows]


def run_from_files(results_csv: str | Path, predictions: str | Path | None = None,
                   meta: dict[str, Any] | None = None) -> RunData:
    """A run rebuilt from committed files: the finished trials of ``results_csv`` grouped as
    :func:`lightlayers.report.load.load_run` groups them, with the test predictions of
    ``predictions`` (a ``predictions.csv.gz``) when given. Every finished trial must have its
    predictions in that file, and the file no trial the CSV lacks."""
    trials = read_results_csv(results_csv)
    preds = read_predictions(predictions) if predictions is not None else {}
    done = [t for t in trials if t.get("status") == "done"]
    if predictions is not None:
        keys = {(t["model"], t["protocol"], t["seed"]) for t in done}
        lacking = sorted(keys - set(preds))
        extra = sorted(set(preds) - keys)
        if lacking or extra:
            what = (f"no predictions for {_names(lacking)}" if lacking
                    else f"predictions of trials not in {results_csv}: {_names(extra)}")
            raise ReportError(f"{predictions}: {what}; export both files from one run folder")
    several = len({t["protocol"] for t in trials}) > 1
    groups: dict[tuple[str, str], Group] = {}
    predictions_by_id: dict[int, dict[str, Any]] = {}
    for i, t in enumerate(trials, start=1):
        gk = (t["model"], t["protocol"])
        label = f"{t['model']} [{t['protocol']}]" if several else t["model"]
        g = groups.setdefault(gk, Group(label, t["model"], t["protocol"]))
        g.planned_seeds.append(t["seed"])
        if t.get("status") == "done":
            g.done.append({**t, "id": i})
            p = preds.get((t["model"], t["protocol"], t["seed"]))
            if p is not None:
                predictions_by_id[i] = p
    run = RunData(Path(results_csv).parent, list(groups.values()),
                  [t for t in trials if t.get("status") == "failed"], [],
                  dict(meta or {}), {}, predictions_by_id, {})
    for g in run.groups:
        g.incomplete = len(g.done) < run.max_seeds or bool(g.missing_seeds)
    return run


def _names(keys: Iterable[tuple[str, str, int]]) -> str:
    return ", ".join(f"{m} seed {s} ({p})" for m, p, s in keys)
