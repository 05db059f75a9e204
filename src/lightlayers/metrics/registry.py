"""Every metric lightlayers records, declared once.

A :class:`Metric` says what a number is (name, scope, type, which direction is better, label
and unit), how it is printed, where the report shows it and, for a score of the test
predictions, how it is computed. Every consumer reads this registry rather than a list of its
own: the results store (the names it accepts, the types it returns), ``results.csv`` (its
columns, in declaration order), the report (table columns, criterion charts, the lines with
95% intervals) and ``scripts/ablation.py`` and ``scripts/results_table.py``.

Adding a score of the test predictions is its function and one entry; the study then computes
it for every trial and the store, ``results.csv`` and the report carry it:

    >>> from sklearn.metrics import matthews_corrcoef
    >>> def mcc(labels, preds, **_):
    ...     return float(matthews_corrcoef(labels, preds))
    >>> register_metric(Metric("mcc", float, direction="higher", label="Matthews correlation",
    ...                        header="MCC", compute=mcc))

``compute`` receives keyword arguments (see :mod:`lightlayers.metrics.scores`): ``labels``,
``probs``, ``preds``, ``positive_class``, ``threshold`` and ``confusion``.

A metric registered at run time lives in this process only: with ``--executor ray`` register
it in a module the workers import as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from lightlayers.metrics import calibration, scores

Scope = Literal["trial", "epoch"]
Direction = Literal["higher", "lower"]
SCOPES = ("trial", "epoch")
DIRECTIONS = ("higher", "lower", None)
TYPES = (int, float, bool)
_NAME = re.compile(r"[a-z][a-z0-9_]*")


# --- formats ------------------------------------------------------------------------------
def fmt_int(v: float) -> str:
    return f"{v:,.0f}"


def fmt_f4(v: float) -> str:
    return f"{v:.4f}"


def fmt_f2(v: float) -> str:
    return f"{v:.2f}"


def fmt_size(v: float) -> str:
    """A size given in MB (10^6 bytes) with its unit: kB below 1 MB, where "0.0183 MB" hides
    the number in its zeros."""
    if abs(v) < 1:
        return f"{v * 1e3:.1f} kB"
    return f"{v:.2f} MB" if v < 10 else f"{v:.1f} MB"


@dataclass(frozen=True)
class Metric:
    """One recorded number.

    ``scope``: ``"trial"`` (one value per trial: the store's trial metrics, a column of
    results.csv) or ``"epoch"`` (one value per training epoch: the store's history).
    ``type``: ``int``, ``float`` or ``bool``; the store returns values of this type.
    ``direction``: which values are better, ``"higher"``, ``"lower"`` or None (neither).
    ``fmt``: the number as the report prints it. ``label`` and ``unit``: what it is, for
    titles and axis labels ("Test accuracy", "fraction correct").
    ``header``: its column in the report's table (None: not in the table); ``chart``: a bar
    chart of its own among the report's criterion figures; ``ci``: its name in the lines with
    95% intervals (None: no such line); ``short``: a shorter name for narrow tables
    (scripts/results_table.py; default ``ci``); ``ablation``: compared across the variants of
    scripts/ablation.py. ``spread``: it varies over seeds, so the report shows a ``± std``
    (False: fixed by the architecture, a ``± 0`` would be noise).
    ``order``: its place in the report's table, charts, interval lines and the ablation
    (lower first; None: after those with one, in declaration order). The declaration order
    itself is the column order of results.csv.
    ``compute``: for a score of the test predictions, the function that computes it (called
    with keyword arguments, see :mod:`lightlayers.metrics.scores`); None for numbers the trial
    measures itself (parameters, times).
    ``optional``: recorded only when a study asks for it (the deployment numbers); the report's
    table leaves its column out when no model has it.
    """

    name: str
    type: type = float
    scope: Scope = "trial"
    direction: Direction | None = None
    fmt: Callable[[float], str] = fmt_f4
    label: str = ""
    unit: str = ""
    header: str | None = None
    chart: bool = False
    ci: str | None = None
    short: str | None = None
    ablation: bool = False
    spread: bool = True
    order: int | None = None
    compute: Callable[..., Any] | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"metric name {self.name!r}: lower-case letters, digits and _, "
                             "starting with a letter")
        if self.scope not in SCOPES:
            raise ValueError(f"metric {self.name}: scope must be one of {SCOPES}, "
                             f"got {self.scope!r}")
        if self.type not in TYPES:
            raise ValueError(f"metric {self.name}: type must be int, float or bool, "
                             f"got {self.type!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name}: direction must be one of {DIRECTIONS}, "
                             f"got {self.direction!r}")
        if self.scope == "epoch" and (self.header or self.chart or self.ci or self.ablation
                                      or self.compute):
            raise ValueError(f"metric {self.name}: a per-epoch value has no table column, "
                             "chart, interval, ablation or compute function")
        if self.scope == "epoch" and self.name == "epoch":
            raise ValueError("metric name 'epoch' is the epoch number of the history rows")
        if self.chart and not self.label:
            raise ValueError(f"metric {self.name}: a chart needs a label")

    @property
    def ylabel(self) -> str:
        """Axis label: the label and, in brackets, the unit."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    @property
    def title(self) -> str:
        return self.label or self.name

    def convert(self, value: Any) -> Any:
        """``value`` as this metric's type; None and non-finite floats stay as they are."""
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return value
        return self.type(value)


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (after every metric registered before it)."""
    if not isinstance(metric, Metric):
        raise TypeError(f"register_metric takes a Metric, got {type(metric).__name__}")
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is already registered")
    _REGISTRY[metric.name] = metric
    return metric


def unregister_metric(name: str) -> Metric:
    """Remove the metric ``name`` from the registry; returns it."""
    try:
        return _REGISTRY.pop(name)
    except KeyError:
        raise KeyError(f"no metric {name!r} is registered") from None


@contextmanager
def registered(*metrics: Metric) -> Iterator[tuple[Metric, ...]]:
    """``metrics`` registered for the ``with`` block only (tests, experiments)."""
    done: list[Metric] = []
    try:
        for m in metrics:
            done.append(register_metric(m))
        yield tuple(done)
    finally:
        for m in reversed(done):
            if _REGISTRY.get(m.name) is m:
                del _REGISTRY[m.name]


def get_metric(name: str) -> Metric:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no metric {name!r} is registered") from None


def all_metrics(scope: Scope | None = None) -> tuple[Metric, ...]:
    """Registered metrics of ``scope`` (all when None), in declaration order."""
    return tuple(m for m in _REGISTRY.values() if scope is None or m.scope == scope)


def trial_metrics() -> tuple[Metric, ...]:
    """One value per trial, in declaration order: the metric columns of results.csv."""
    return all_metrics("trial")


def epoch_metrics() -> tuple[Metric, ...]:
    """One value per training epoch (the store's history), in declaration order."""
    return all_metrics("epoch")


def computed_metrics() -> tuple[Metric, ...]:
    """Scores of the test predictions: the trial metrics with a ``compute`` function."""
    return tuple(m for m in trial_metrics() if m.compute is not None)


def _ranked(metrics: tuple[Metric, ...]) -> tuple[Metric, ...]:
    place = {m.name: i for i, m in enumerate(_REGISTRY.values())}
    return tuple(sorted(metrics, key=lambda m: (m.order is None, m.order or 0, place[m.name])))


def table_metrics() -> tuple[Metric, ...]:
    """The report table's columns, in their order."""
    return _ranked(tuple(m for m in trial_metrics() if m.header))


def chart_metrics() -> tuple[Metric, ...]:
    """The report's criterion charts, in their order."""
    return _ranked(tuple(m for m in trial_metrics() if m.chart))


def ci_metrics() -> tuple[Metric, ...]:
    """The scores the report gives a 95% interval line for, in their order."""
    return _ranked(tuple(m for m in trial_metrics() if m.ci))


def ablation_metrics() -> tuple[Metric, ...]:
    """The scores scripts/ablation.py compares across variants, in their order."""
    return _ranked(tuple(m for m in trial_metrics() if m.ablation))


# --- the metrics of lightlayers -------------------------------------------------------------
# Declaration order is the column order of results.csv; ``order`` that of the report's table.
for _m in (
    Metric("params_total", int, direction="lower", fmt=fmt_int, label="Total parameters",
           unit="count, incl. BN running stats", header="Total params", chart=True,
           spread=False, order=1),
    Metric("params_trainable", int, direction="lower", fmt=fmt_int,
           label="Trainable parameters", unit="count", header="Trainable params", chart=True,
           spread=False, order=2),
    Metric("size_mb", float, direction="lower", fmt=fmt_size, label="Model size",
           unit="MB = 10⁶ bytes, float32 weights file", header="Size", chart=True,
           spread=False, order=3),
    Metric("macs", int, direction="lower", fmt=fmt_int, label="Multiply-accumulates",
           unit="count per image", header="MACs", spread=False, order=11),
    Metric("accuracy", float, direction="higher", label="Test accuracy",
           unit="fraction correct", header="Accuracy", chart=True, ci="accuracy",
           ablation=True, order=4, compute=scores.accuracy),
    Metric("balanced_accuracy", float, direction="higher", label="Test balanced accuracy",
           unit="mean recall over classes", ablation=True, compute=scores.balanced_accuracy),
    Metric("sensitivity", float, direction="higher", label="Test sensitivity",
           unit="recall of the positive class; macro mean when multiclass",
           header="Sensitivity", ci="sensitivity", short="sens.", ablation=True, order=8,
           compute=scores.sensitivity),
    Metric("specificity", float, direction="higher", label="Test specificity",
           unit="recall of the negative class; macro mean when multiclass",
           header="Specificity", ci="specificity", short="spec.", ablation=True, order=9,
           compute=scores.specificity),
    Metric("precision", float, direction="higher", label="Test precision",
           unit="of the positive class; macro mean when multiclass",
           compute=scores.precision),
    Metric("f1", float, direction="higher", label="Test F1",
           unit="of the positive class; macro mean when multiclass", header="F1", order=10,
           compute=scores.f1),
    Metric("auc", float, direction="higher", label="Test ROC AUC",
           unit="one-vs-rest macro mean when multiclass", header="AUC", ci="AUC",
           ablation=True, order=7, compute=scores.auc),
    Metric("collapsed", bool, direction="lower", fmt=fmt_int,
           label="Collapsed (one class predicted)", compute=scores.collapsed),
    Metric("threshold", float, label="Decision threshold",
           unit="positive-class probability; none when argmax", compute=scores.threshold),
    Metric("ece", float, direction="lower", label="Test expected calibration error",
           unit="top label, 15 equal-width bins", header="ECE", compute=calibration.ece),
    Metric("test_loss", float, direction="lower", label="Test loss", unit="cross-entropy"),
    Metric("total_time_s", float, direction="lower", fmt=fmt_f2, label="Total training time",
           unit="s, wall clock", header="Total time (s)", chart=True, order=5),
    Metric("epoch_time_s", float, direction="lower", fmt=fmt_f2, label="Time per epoch",
           unit="s, wall clock, train + val", header="Time per epoch (s)", chart=True,
           order=6),
    Metric("first_epoch_s", float, direction="lower", fmt=fmt_f2, label="First epoch time",
           unit="s, wall clock, incl. warm-up and compiling"),
    Metric("feature_time_s", float, direction="lower", fmt=fmt_f2,
           label="Backbone feature time", unit="s, once per trial; none when not cached"),
    Metric("infer_img_s", float, direction="higher", fmt=fmt_int, label="Inference throughput",
           unit="images/s", header="Inference (img/s)", order=12),
    Metric("latency_ms", float, direction="lower", fmt=fmt_f2, label="Inference latency",
           unit="ms, median of batch 1"),
    # Deployment (StudyConfig.deployment; lightlayers.deploy.bench): the trained model
    # exported as `lightlayers export` writes it, timed on the CPU beside PyTorch.
    Metric("onnx_fp32_mb", float, direction="lower", fmt=fmt_size, label="ONNX fp32 file",
           unit="MB = 10⁶ bytes", spread=False, optional=True),
    Metric("onnx_int8_mb", float, direction="lower", fmt=fmt_size, label="ONNX int8 file",
           unit="MB = 10⁶ bytes, static quantization", header="int8 ONNX", order=3,
           spread=False, optional=True),
    Metric("ort_latency_ms", float, direction="lower", fmt=fmt_f2,
           label="ONNX Runtime latency", unit="ms, fp32, CPU, batch 1, median",
           header="ORT latency (ms)", order=12, optional=True),
    Metric("ort_latency_p95_ms", float, direction="lower", fmt=fmt_f2,
           label="ONNX Runtime latency p95", unit="ms, fp32, CPU, batch 1", optional=True),
    Metric("ort_img_s", float, direction="higher", fmt=fmt_int,
           label="ONNX Runtime throughput", unit="images/s, fp32, CPU, batch 64",
           optional=True),
    Metric("ort_int8_latency_ms", float, direction="lower", fmt=fmt_f2,
           label="ONNX Runtime int8 latency", unit="ms, CPU, batch 1, median",
           header="ORT int8 latency (ms)", order=12, optional=True),
    Metric("ort_int8_latency_p95_ms", float, direction="lower", fmt=fmt_f2,
           label="ONNX Runtime int8 latency p95", unit="ms, CPU, batch 1", optional=True),
    Metric("ort_int8_img_s", float, direction="higher", fmt=fmt_int,
           label="ONNX Runtime int8 throughput", unit="images/s, CPU, batch 64",
           optional=True),
    Metric("torch_cpu_latency_ms", float, direction="lower", fmt=fmt_f2,
           label="PyTorch CPU latency", unit="ms, fp32, batch 1, median, timed beside ONNX "
           "Runtime", header="PyTorch CPU latency (ms)", order=12, optional=True),
    Metric("torch_cpu_latency_p95_ms", float, direction="lower", fmt=fmt_f2,
           label="PyTorch CPU latency p95", unit="ms, fp32, batch 1", optional=True),
    Metric("torch_cpu_img_s", float, direction="higher", fmt=fmt_int,
           label="PyTorch CPU throughput", unit="images/s, fp32, batch 64", optional=True),
    Metric("best_epoch", int, fmt=fmt_int, label="Selected epoch"),
    Metric("epochs_run", int, fmt=fmt_int, label="Epochs run"),
    # One value per training epoch (train.fit's history rows).
    Metric("train_loss", float, "epoch", "lower", label="Training loss", unit="cross-entropy"),
    Metric("train_acc", float, "epoch", "higher", label="Training accuracy",
           unit="fraction correct"),
    Metric("val_loss", float, "epoch", "lower", label="Validation loss", unit="cross-entropy"),
    Metric("val_acc", float, "epoch", "higher", label="Validation accuracy",
           unit="fraction correct"),
    Metric("lr", float, "epoch", label="Learning rate"),
    Metric("time_s", float, "epoch", "lower", fmt=fmt_f2, label="Epoch time",
           unit="s, wall clock, train + val"),
    Metric("compiled", bool, "epoch", fmt=fmt_int, label="Compiled training step"),
    Metric("compile_s", float, "epoch", "lower", fmt=fmt_f2, label="Compile time",
           unit="s, first compiled epoch only"),
    Metric("val_auc", float, "epoch", "higher", label="Validation ROC AUC",
           unit="binary tasks only"),
):
    register_metric(_m)
del _m
