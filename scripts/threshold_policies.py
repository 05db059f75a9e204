"""Decision-threshold policies of a finished binary run, each chosen on validation only, scored
on the test split.

Accuracy at a fixed 0.5 threshold depends on the class balance the model learnt against; a
threshold chosen on validation inherits the validation split's balance. This script rebuilds
every finished trial of RUN_DIR from its checkpoint, scores the validation split, chooses a
threshold by each policy, and applies it to the test probabilities the run recorded (which
choose nothing):

- ``0.5``: the positive class when its probability is at least 0.5 (the recipe's default);
- ``youden``: the cut maximising sensitivity + specificity - 1 on validation;
- ``equal-error``: the cut where validation sensitivity and specificity are closest;
- ``val-accuracy``: the cut with the best validation accuracy.

    python scripts/threshold_policies.py runs/pre-npz [--out results/thresholds-npz.md]

Mean ± sample std over the run's seeds per model and policy; the table goes to stdout and to
``--out`` when given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

POLICIES = ("0.5", "youden", "equal-error", "val-accuracy")


def choose(policy: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold of ``policy`` on validation ``labels`` (1 = positive) and ``scores``."""
    from sklearn.metrics import roc_curve

    from lightlayers.metrics import choose_threshold

    if policy == "0.5":
        return 0.5
    if policy == "youden":
        return choose_threshold(labels, scores)
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    if policy == "equal-error":
        return float(thr[np.argmin(np.abs(tpr - (1 - fpr)))])
    if policy == "val-accuracy":
        pos, neg = labels.sum(), len(labels) - labels.sum()
        return float(thr[np.argmax(tpr * pos + (1 - fpr) * neg)])
    raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")


def validation_scores(trial, data: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, positive-class probabilities, positive class) of the validation split, from
    the trial's checkpoint, preprocessed as its training was."""
    import torch

    from lightlayers.deploy.export import batches, deployable_for
    from lightlayers.deploy.trial import trial_card

    net = trial.build_model()
    card = trial_card(trial, net)
    if card.positive_class is None:
        raise SystemExit(f"{trial.run_dir}: not a binary task with a positive class")
    deployable, _ = deployable_for(net, card)
    val = trial.load_data(data).splits["val"]
    probs, labels = [], []
    with torch.no_grad():
        for x, y in batches(val, card, batch_size=256):
            p = deployable(torch.from_numpy(x))
            probs.append((p[0] if isinstance(p, tuple) else p).numpy())
            labels.append(y)
    pos = card.positive_class
    return np.concatenate(labels) == pos, np.concatenate(probs)[:, pos], pos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", help="where the run's data is now, when it moved")
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = p.parse_args(argv)

    from lightlayers.deploy.errors import DeployError
    from lightlayers.runfolder.errors import RunFolderError
    from lightlayers.runfolder.store import ResultsStore
    from lightlayers.runfolder.trials import find_trials

    try:
        trials = find_trials(args.run_dir)
        per: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
        with ResultsStore(args.run_dir / "results.db", create=False, readonly=True) as store:
            recorded = {t.row["id"]: store.predictions(int(t.row["id"])) for t in trials}
        for t in trials:
            val_y, val_s, pos = validation_scores(t, args.data)
            test = recorded[t.row["id"]]
            if test is None:
                continue
            test_y, test_s = test["labels"] == pos, test["probs"][:, pos]
            for policy in POLICIES:
                thr = choose(policy, val_y, val_s)
                pred = test_s >= thr
                sens = float(pred[test_y].mean())
                spec = float((~pred[~test_y]).mean())
                per.setdefault((t.model_name, policy), []).append(
                    (float((pred == test_y).mean()), sens, spec, thr))
            print(f"{t.label}: validation {len(val_y)} images, "
                  f"{val_y.mean():.1%} positive; test {test_y.mean():.1%} positive",
                  file=sys.stderr)
    except (DeployError, RunFolderError) as e:
        print(f"threshold_policies: error: {e}", file=sys.stderr)
        return 2

    def cell(values: list[float]) -> str:
        sd = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
        return f"{np.mean(values):.3f}{sd}"

    lines = ["| model | policy (on validation) | seeds | test accuracy | sensitivity | "
             "specificity | threshold |", "| --- | --- | ---: | --- | --- | --- | --- |"]
    for (model, policy), rows in per.items():
        acc, sens, spec, thr = (list(c) for c in zip(*rows, strict=True))
        lines.append(f"| {model} | {policy} | {len(rows)} | {cell(acc)} | {cell(sens)} | "
                     f"{cell(spec)} | {cell(thr)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
