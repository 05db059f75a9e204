"""Helpers for the report tests: results stores filled with real numbers, and headless Chromium.

The stores hold real computations, not invented values: linear classifiers (SGD, log loss)
trained epoch by epoch on scikit-learn's digits, their per-epoch losses and accuracies as the
history, their test probabilities, and the metrics lightlayers computes from them.

Not a conftest: the report test modules import what they need from here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightlayers.metrics import classification_metrics
from lightlayers.runfolder.store import ResultsStore

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PNEUMONIA_NPZ = SHARED / "chest_xray_pneumonia" / "pneumoniamnist_28_reconstructed.npz"

# "model" name -> image pooling factor: 1 keeps the 8x8 digits (65 weights with the bias),
# 2 averages 2x2 blocks (17 weights), 4 leaves 2x2 pixels (5 weights).
POOLS = {"linear-8x8": 1, "linear-4x4": 2, "linear-2x2": 4}


def _digits(task: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    if task == "binary":
        return x, (y % 2).astype(np.int64), ["even", "odd"]
    keep = y < 3
    return x[keep], y[keep].astype(np.int64), ["zero", "one", "two"]


def _pool(x: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return x
    img = x.reshape(-1, 8, 8)
    return img.reshape(len(x), 8 // f, f, 8 // f, f).mean(axis=(2, 4)).reshape(len(x), -1)


def train_trial(task: str, pool: int, seed: int, epochs: int) -> dict[str, Any]:
    """One real trial: what a study would record for it."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import log_loss

    x, y, classes = _digits(task)
    x = _pool(x, pool)
    # One split for every trial, as in a study; the seed changes the training only.
    order = np.random.default_rng(12345).permutation(len(x))
    n_test, n_val = len(x) // 4, len(x) // 8
    test, val, train = (order[:n_test], order[n_test:n_test + n_val],
                        order[n_test + n_val:])
    train = np.random.default_rng(seed).permutation(train)
    clf = SGDClassifier(loss="log_loss", alpha=1e-3, learning_rate="constant", eta0=0.05,
                        random_state=seed)
    labels = np.arange(len(classes))
    history = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        clf.partial_fit(x[train], y[train], classes=labels)
        row = {"epoch": epoch, "lr": 0.05}
        for split, idx in (("train", train), ("val", val)):
            p = clf.predict_proba(x[idx])
            row[f"{split}_loss"] = float(log_loss(y[idx], p, labels=labels))
            row[f"{split}_acc"] = float((p.argmax(1) == y[idx]).mean())
        row["time_s"] = time.perf_counter() - t0
        history.append(row)
    total = time.perf_counter() - start
    t0 = time.perf_counter()
    probs = clf.predict_proba(x[test])
    infer = len(test) / max(time.perf_counter() - t0, 1e-9)
    positive = 1 if task == "binary" else None
    m = classification_metrics(y[test], probs, positive)
    n_weights = clf.coef_.size + clf.intercept_.size
    metrics = {
        "params_total": n_weights, "params_trainable": n_weights,
        "size_mb": n_weights * 4 / 1e6, "macs": int(clf.coef_.size),
        "test_loss": float(log_loss(y[test], probs, labels=labels)),
        **{k: v for k, v in m.items() if k != "confusion"},  # every registered test score
        "total_time_s": total, "epoch_time_s": total / epochs,
        "first_epoch_s": history[0]["time_s"], "infer_img_s": infer, "latency_ms": 0.01,
        "best_epoch": int(np.argmin([h["val_loss"] for h in history])) + 1,
        "epochs_run": epochs,
    }
    return {"metrics": metrics, "history": history, "confusion": m["confusion"],
            "predictions": {"classes": classes, "labels": y[test], "probs": probs},
            "extra": {"device": "cpu"}}


def build_store(
    run_dir: Path,
    models: Sequence[str] = ("linear-8x8", "linear-4x4"),
    seeds: Sequence[int] = (0, 1, 2),
    task: str = "binary",
    epochs: int = 4,
    failed: dict[tuple[str, int], str] | None = None,
    pending: Sequence[tuple[str, int]] = (),
    protocols: Sequence[str] = ("seed",),
    meta: bool = True,
) -> Path:
    """A run folder whose ``results.db`` holds models x seeds x protocols, as a study
    records them; ``failed`` trials get their error, ``pending`` ones stay unrun."""
    failed = failed or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    with ResultsStore(run_dir / "results.db") as store:
        specs = [{"model": m, "seed": s, "protocol": p, "data": "digits@test"}
                 for p in protocols for m in models for s in seeds]
        store.add_trials(specs)
        if meta:
            _, _, classes = _digits(task)
            store.set_meta(
                config={"models": list(models), "seeds": list(seeds), "epochs": epochs},
                protocol={"name": protocols[0], "epochs": epochs, "lr": 0.05},
                environment={"python": "3.x", "numpy": np.__version__, "device": "cpu",
                             "cpu": "test cpu", "gpu": None},
                data={"name": "digits", "source": "sklearn.datasets.load_digits",
                      "classes": classes, "positive_class": 1 if task == "binary" else None,
                      "identity": {"sha256": "ab" * 32, "kind": "sklearn"},
                      "splits": {"test": {c: 10 for c in classes},
                                 "train": {c: 30 for c in classes}}},
            )
        for spec in specs:
            key = f"{spec['model']}|seed={spec['seed']}|{spec['protocol']}|digits@test"
            if (spec["model"], spec["seed"]) in pending:
                continue
            store.mark_running(key)
            if (spec["model"], spec["seed"]) in failed:
                store.record_failed(key, failed[(spec["model"], spec["seed"])])
                continue
            res = train_trial(task, POOLS.get(spec["model"], 1), spec["seed"], epochs)
            store.record_done(key, res["metrics"], res["history"], res["predictions"],
                              res["confusion"], res["extra"])
    return run_dir


# --- headless Chromium --------------------------------------------------------------------
def chromium_binary() -> str:
    """The browser, or fail (CI) / skip (elsewhere) with the way to install it."""
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    msg = "chromium is not installed: run `make chromium` (Debian's chromium package)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def browser_check(html: Path, tmp: Path, width: int = 1280) -> dict[str, str]:
    """Open ``html`` in headless Chromium in a window ``width`` pixels wide; the attributes
    the page's script set on <body>."""
    binary = chromium_binary()
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp / 'chromium-profile'}",
           f"--window-size={width},900",
           "--virtual-time-budget=5000", "--dump-dom", html.resolve().as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    body = re.search(r"<body([^>]*)>", out.stdout)
    assert body, f"chromium dumped no <body> (rc {out.returncode}): {out.stderr[-2000:]}"
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body.group(1)))
