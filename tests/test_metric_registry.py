"""One metric registry: every consumer (results.csv, the store, the report's table, charts and
interval lines, the scripts) reads it, and a metric added there is computed for every trial and
shown everywhere without another change."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from lightlayers import runfolder
from lightlayers.cli import main as cli
from lightlayers.metrics import classification_metrics
from lightlayers.metrics.registry import (
    Metric,
    ablation_metrics,
    all_metrics,
    chart_metrics,
    ci_metrics,
    computed_metrics,
    register_metric,
    registered,
    table_metrics,
    trial_metrics,
    unregister_metric,
)
from lightlayers.report import figures, table
from lightlayers.runfolder.store import ResultsStore, StoreError

ROOT = Path(__file__).resolve().parents[1]

# What each consumer showed before the registry, in its order: pinned, so that reading the
# registry changed nothing. ECE and the deployment numbers were added since, through the
# registry alone.
CSV_BEFORE = [
    "model", "seed", "protocol", "status", "params_total", "params_trainable", "size_mb", "macs",
    "accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1", "auc",
    "collapsed", "threshold", "ece", "test_loss", "total_time_s", "epoch_time_s", "first_epoch_s",
    "feature_time_s", "infer_img_s", "latency_ms",
    # The deployment numbers, added since through the registry alone (optional: a study asks).
    "onnx_fp32_mb", "onnx_int8_mb", "ort_latency_ms", "ort_latency_p95_ms", "ort_img_s",
    "ort_int8_latency_ms", "ort_int8_latency_p95_ms", "ort_int8_img_s", "torch_cpu_latency_ms",
    "torch_cpu_latency_p95_ms", "torch_cpu_img_s",
    "best_epoch", "epochs_run", "attempts", "error",
]
HEADERS_BEFORE = (
    "Model", "Total params", "Trainable params", "Size", "Accuracy", "Total time (s)",
    "Time per epoch (s)", "AUC", "Sensitivity", "Specificity", "F1", "MACs", "Inference (img/s)",
    "ECE", "Seeds", "Collapsed runs")
CRITERIA_BEFORE = (
    ("params_total", "Total parameters (count, incl. BN running stats)", "Total parameters"),
    ("params_trainable", "Trainable parameters (count)", "Trainable parameters"),
    ("size_mb", "Model size (MB = 10⁶ bytes, float32 weights file)", "Model size"),
    ("accuracy", "Test accuracy (fraction correct)", "Test accuracy"),
    ("total_time_s", "Total training time (s, wall clock)", "Total training time"),
    ("epoch_time_s", "Time per epoch (s, wall clock, train + val)", "Time per epoch"),
)
CI_BEFORE = (("accuracy", "accuracy"), ("auc", "AUC"), ("sensitivity", "sensitivity"),
             ("specificity", "specificity"))
ABLATION_BEFORE = [("accuracy", "accuracy"), ("auc", "AUC"), ("sensitivity", "sensitivity"),
                   ("specificity", "specificity"), ("balanced_accuracy", None)]
README_SCORES_BEFORE = [("accuracy", "accuracy"), ("auc", "AUC"), ("sensitivity", "sens."),
                        ("specificity", "spec.")]


def mcc(labels: np.ndarray, preds: np.ndarray, **_: object) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


# Shown everywhere a metric can be: the table, a chart, an interval line, the ablation.
MCC = Metric("mcc", float, direction="higher", label="Matthews correlation",
             unit="-1 to 1", header="MCC", chart=True, ci="MCC", ablation=True, compute=mcc)


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _views() -> dict[str, list]:
    """Each consumer's list of metrics, as the consumer itself reports it."""
    return {
        "csv": runfolder.csv_columns()[4:-2],
        "table": [c.name for c in table.columns()],
        "headers": list(table.headers()[1:-2]),
        "charts": [k for k, _, _ in figures.criteria()],
        "ci": [k for k, _ in table.ci_keys()],
        "computed": sorted(set(classification_metrics([0, 1, 1], np.eye(2)[[0, 1, 0]], 1))
                           - {"confusion"}),
        "ablation": [k for k, _ in _script("ablation").scored()],
        "readme": [k for k, _ in _script("results_table").scores()],
    }


def _registry_views() -> dict[str, list]:
    return {
        "csv": [m.name for m in trial_metrics()],
        "table": [m.name for m in table_metrics()],
        "headers": [m.header for m in table_metrics()],
        "charts": [m.name for m in chart_metrics()],
        "ci": [m.name for m in ci_metrics()],
        "computed": sorted(m.name for m in computed_metrics()),
        "ablation": [m.name for m in ablation_metrics()],
        "readme": [m.name for m in ci_metrics()],
    }


def test_consumers_show_what_they_showed_before() -> None:
    assert runfolder.csv_columns() == CSV_BEFORE
    # A study that measured no deployment numbers shows the table it showed before; one that
    # did gains their columns.
    assert table.headers([]) == HEADERS_BEFORE
    assert [h for h in table.headers() if h not in HEADERS_BEFORE] == [
        "int8 ONNX", "ORT latency (ms)", "ORT int8 latency (ms)",
        "PyTorch CPU latency (ms)"]
    assert figures.criteria() == CRITERIA_BEFORE
    assert table.ci_keys() == CI_BEFORE
    assert _script("ablation").scored() == ABLATION_BEFORE
    assert _script("results_table").scores() == README_SCORES_BEFORE
    assert [c.spread for c in table.columns([])] == [False] * 3 + [True] * 7 + [False, True,
                                                                                True]


def test_every_consumer_reads_the_registry() -> None:
    assert _views() == _registry_views()
    with registered(MCC):
        views = _views()
        assert views == _registry_views()
        # No second list anywhere: the new metric reached each of them.
        assert all("mcc" in names or "MCC" in names for names in views.values()), views
        assert runfolder.csv_columns()[-4:] == ["epochs_run", "mcc", "attempts", "error"]
    assert all("mcc" not in names for names in _views().values())


def test_registering_is_checked_and_undone() -> None:
    before = all_metrics()
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("accuracy"))
    with pytest.raises(ValueError, match="scope"):
        Metric("x", scope="run")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="type"):
        Metric("x", str)
    with pytest.raises(ValueError, match="lower-case"):
        Metric("Bad Name")
    register_metric(MCC)
    try:
        assert all_metrics() == (*before, MCC)
    finally:
        assert unregister_metric("mcc") is MCC
    assert all_metrics() == before
    with pytest.raises(KeyError):
        unregister_metric("mcc")


def test_a_registered_metric_reaches_every_output(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with registered(MCC):
        # One epoch at a rate that gets past predicting one class (whose MCC is 0).
        # Two threads, fixed: the numbers do not depend on how busy or large the machine is.
        assert cli(["run", "--data", "digits", "--models", "paper-light-k1", "--seeds", "0",
                    "--epochs", "1", "--size", "8", "--lr", "0.03", "--set", "bn_momentum=0.1",
                    "--threads", "2", "--out", str(out), "--quiet"]) == 0
    # Computed by the study from the test predictions, as registered.
    with ResultsStore(out / "results.db", create=False) as store:
        (t,) = store.trials()
        pred = store.predictions(t["id"])
    assert pred is not None
    expected = mcc(pred["labels"], pred["probs"].argmax(1))
    assert expected != 0
    # Kept by the store after the metric left the registry, as an unregistered number.
    assert t["mcc"] == expected
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        (row,) = list(reader)
    assert reader.fieldnames == [*CSV_BEFORE[:-2], "mcc", "attempts", "error"]
    assert row["mcc"] == repr(expected)
    report = out / "report"
    with open(report / "table.csv", newline="") as f:
        (summary,) = list(csv.DictReader(f))
    assert summary["mcc_mean"] == repr(expected) and summary["mcc_n"] == "1"
    assert "| MCC |" in (report / "table.md").read_text()
    html = (report / "report.html").read_text()
    assert "<th scope='col'>MCC</th>" in html and f"{expected:.4f}" in html
    assert "id='fig-criterion_mcc'" in html
    assert (report / "figures" / "criterion_mcc.png").is_file()
    # Outside the block the metric is no longer known, and no longer accepted.
    assert "mcc" not in runfolder.csv_columns()
    with ResultsStore(tmp_path / "other.db") as store:
        store.add_trials([{"model": "m", "seed": 0, "protocol": "p", "data": "d"}])
        store.mark_running("m|seed=0|p|d")
        with pytest.raises(StoreError, match="unknown metrics"):
            store.record_done("m|seed=0|p|d", {"mcc": 0.5})
