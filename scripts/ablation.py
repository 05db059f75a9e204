"""Ablation of the `improved` protocol: the recipe minus one ingredient at a time.

Each variant is one `lightlayers run` of configs/results-improved.yaml with `--set` flags, in its
own run folder (runs/ablation/<variant>), so an interrupted ablation resumes where it stopped.
The table (mean ± std over seeds, and the change of the mean against the full recipe) is written
to results/ablation.csv and results/ablation.md. Those are test scores.

With ``--folds K`` the variants are scored on K patient-grouped validation folds of the training
images instead, trained as `lightlayers tune` trains (fold k seeded k), and the test split is
never loaded into a loader: results/ablation-folds.csv and .md, mean ± std over the folds, and
the per-fold rows behind them in results/ablation-folds-rows.csv. The
threshold variant needs no training: on each fold, the Youden threshold chosen on the other
folds' held-out images is applied to the full recipe's probabilities. Each variant's fold
scores are kept in runs/ablation-folds/<variant>.json, so an interrupted ablation resumes.

    python scripts/ablation.py --data ../shared/data/chest_xray_pneumonia/chest_xray_224.tar.gz
    python scripts/ablation.py --folds 3        # the same variants on validation folds
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# variant -> the --set flags that take one ingredient out of the recipe (or, for the threshold,
# swap the decision rule), or add a candidate ingredient.
VARIANTS: dict[str, list[str]] = {
    "improved": [],
    "no augmentation": [f"augment.{k}=0" for k in
                        ("rotate_deg", "translate", "scale", "brightness", "contrast")],
    "no class weighting": ["class_weighting=false"],
    "no label smoothing": ["label_smoothing=0"],
    "constant lr (no cosine, no warm-up)": ["schedule=constant", "warmup_epochs=0"],
    "Adam, no weight decay (not AdamW)": ["optimizer=adam", "weight_decay=0"],
    "Keras BatchNorm momentum (0.01)": ["bn_momentum=null"],
    "select on val loss (not val AUC)": ["select=val_loss"],
    "threshold from val (Youden), not 0.5": ["threshold=val_youden"],
    # Candidates to add to the recipe, measured the same way.
    "plus EMA of the weights (0.999)": ["ema=0.999"],
    # 0.999 averages over ~1,000 of a 28 px run's ~1,500 steps, so early weights still count.
    "plus EMA of the weights (0.99)": ["ema=0.99"],
    "plus 40 epochs (cosine over all of them)": ["epochs=40"],
    "plus test-time augmentation (4 views)": ["tta=4"],
}


def scored() -> list[tuple[str, str | None]]:
    """(metric, name in ablation.md or None) of each score compared across the variants: the
    registry's metrics marked ``ablation`` (lightlayers.metrics.registry), in their order;
    ablation.md shows those with a 95%-interval name, ablation.csv all of them."""
    from lightlayers.metrics.registry import ablation_metrics

    return [(m.name, m.ci) for m in ablation_metrics()]


def slug(name: str) -> str:
    import re

    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name.lower())).strip("-")


def run_variant(name: str, sets: list[str], args: argparse.Namespace) -> Path:
    from lightlayers.cli import main as cli

    out = Path(args.runs) / slug(name)
    argv = ["run", str(ROOT / "configs" / "results-improved.yaml"), "--data", args.data,
            "--models", args.model, "--seeds", args.seeds, "--out", str(out), "--no-report"]
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    for s in sets:
        argv += ["--set", s]
    print(f"== {name}: lightlayers {' '.join(argv)}", flush=True)
    rc = cli(argv)
    if rc != 0:
        sys.exit(f"ablation: the run of variant {name!r} failed (exit {rc}); see {out}")
    return out


THRESHOLD_VARIANT = "threshold from val (Youden), not 0.5"


def fold_scores(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Per variant, the scores of each validation fold (see the module docstring)."""
    import torch

    from lightlayers.config import load_config, parse_overrides
    from lightlayers.data import load_dataset
    from lightlayers.decisions import NotApplicable, cross_fold_threshold
    from lightlayers.metrics import classification_metrics
    from lightlayers.runtime import resolve_device, resolve_threads
    from lightlayers.trial import data_size_for
    from lightlayers.tune import fold_evaluations, make_folds

    base = {"epochs": args.epochs} if args.epochs else {}
    cfg = resolve_threads(load_config(str(ROOT / "configs" / "results-improved.yaml"),
                                      data=args.data, models=[args.model],
                                      protocol_overrides=base or None))
    torch.set_num_threads(cfg.threads or 1)
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.data, size=data_size_for(cfg, args.model), in_chans=cfg.in_chans,
                      resize=cfg.resize, val_fraction=cfg.val_fraction, seed=cfg.split_seed,
                      progress=True, on_bad_image=cfg.on_bad_image,
                      allow_missing_classes=cfg.allow_missing_classes)
    folds = make_folds(ds, args.folds, cfg.split_seed)
    keep = Path(args.runs + "-folds")
    keep.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else None
    names = [n for n in VARIANTS if wanted is None or slug(n) in wanted or n == "improved"]
    base_evs = None
    out: dict[str, list[dict[str, float]]] = {}
    for name in names:
        saved = keep / f"{slug(name)}.json"
        if saved.is_file() and name != "improved":
            out[name] = json.loads(saved.read_text())
            print(f"== {name}: kept from {saved}", flush=True)
            continue
        print(f"== {name}: {args.folds} folds", flush=True)
        if name == THRESHOLD_VARIANT:
            if base_evs is None:
                raise SystemExit("ablation: the threshold variant needs the full recipe's "
                                 "folds; run it with improved")
            cuts = cross_fold_threshold(base_evs, ds.positive_class)["thresholds"]
            evs, thresholds = base_evs, cuts
        else:
            try:
                evs = fold_evaluations(cfg, args.model, ds, folds, device,
                                       extra=parse_overrides(VARIANTS[name]))
            except NotApplicable as e:
                print(f"   not applicable: {e}", flush=True)
                continue
            thresholds = [None] * len(evs)
            if name == "improved":
                base_evs = evs
        out[name] = [{k: float(v) for k, v in classification_metrics(
            ev.labels, ev.probs, ds.positive_class, t).items()
            if isinstance(v, bool | int | float)} for ev, t in zip(evs, thresholds, strict=True)]
        saved.write_text(json.dumps(out[name], indent=1) + "\n")
    return out


def summarize_folds(scores: list[dict[str, float]]) -> dict[str, object]:
    from lightlayers.report.stats import summarize

    row: dict[str, object] = {"seeds": len(scores),
                              "collapsed": sum(bool(s.get("collapsed")) for s in scores)}
    for m, _ in scored():
        s = summarize(x.get(m) for x in scores)
        row[f"{m}_mean"], row[f"{m}_std"] = s.mean, s.std
    return row


def write_fold_rows(scores: dict[str, list[dict[str, float]]], path: Path) -> None:
    """One row per variant and fold: the rows behind ablation-folds.csv's means."""
    metrics = [m for m, _ in scored()]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["variant", "fold", "collapsed", *metrics],
                           lineterminator="\n")
        w.writeheader()
        for name, folds in scores.items():
            for k, x in enumerate(folds):
                w.writerow({"variant": name, "fold": k, "collapsed": int(bool(x["collapsed"])),
                            **{m: x.get(m) for m in metrics}})


def summarize_variant(out: Path) -> dict[str, object]:
    from lightlayers.report.stats import summarize
    from lightlayers.runfolder.store import ResultsStore

    with ResultsStore(out / "results.db", create=False) as store:
        done = [t for t in store.trials() if t["status"] == "done"]
    row: dict[str, object] = {"seeds": len(done),
                              "collapsed": sum(bool(t["collapsed"]) for t in done)}
    for m, _ in scored():
        s = summarize(t.get(m) for t in done)
        row[f"{m}_mean"], row[f"{m}_std"] = s.mean, s.std
    return row


def write_tables(rows: dict[str, dict[str, object]], results: Path, args: argparse.Namespace,
                 stem: str = "ablation") -> None:
    results.mkdir(parents=True, exist_ok=True)
    base = rows["improved"]
    metrics = [m for m, _ in scored()]
    shown = [(m, name) for m, name in scored() if name]
    fields = ["variant", "folds" if args.folds else "seeds", "collapsed"]
    for m in metrics:
        fields += [f"{m}_mean", f"{m}_std", f"{m}_delta"]
    with open(results / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for name, row in rows.items():
            deltas = {f"{m}_delta": float(row[f"{m}_mean"]) - float(base[f"{m}_mean"])  # type: ignore[arg-type]
                      for m in metrics}
            count = {fields[1]: row["seeds"]}
            w.writerow({"variant": name, **row, **count, **deltas} if not args.folds else
                       {"variant": name, **{k: v for k, v in row.items() if k != "seeds"},
                        **count, **deltas})
    over = (f"{args.folds} patient-grouped validation folds of the training images, the test "
            "split unused" if args.folds else f"seeds {args.seeds}")
    lines = [f"Ablation of `improved` on {args.model}, {over} (mean ± std; in brackets the "
             "change of the mean against the full recipe).", "",
             "| variant | " + " | ".join(name for _, name in shown) + " | collapsed |",
             "| --- | " + "--- | " * len(shown) + "---: |"]
    for name, row in rows.items():
        cells = []
        for m, _ in shown:
            mean, std = float(row[f"{m}_mean"]), row[f"{m}_std"]  # type: ignore[arg-type]
            delta = mean - float(base[f"{m}_mean"])  # type: ignore[arg-type]
            spread = "" if std is None else f" ± {std:.3f}"
            cells.append(f"{mean:.3f}{spread}" + ("" if name == "improved"
                                                  else f" ({delta:+.3f})"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['collapsed']} |")
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "chest_xray_pneumonia"
                                         / "chest_xray_224.tar.gz"))
    p.add_argument("--model", default="study-light-k2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (smoke runs)")
    p.add_argument("--only", help="comma-separated variant slugs to run (default: all)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "ablation"))
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--folds", type=int, default=0,
                   help="score the variants on this many validation folds, not on test")
    args = p.parse_args()
    if args.folds:
        if args.folds < 2:
            raise SystemExit("ablation: --folds needs 2 or more folds (the threshold variant "
                             "is chosen on the other folds)")
        scores = fold_scores(args)
        rows = {name: summarize_folds(s) for name, s in scores.items()}
        write_tables(rows, Path(args.results), args, stem="ablation-folds")
        write_fold_rows(scores, Path(args.results) / "ablation-folds-rows.csv")
        return
    wanted = set(args.only.split(",")) if args.only else None
    rows = {}
    for name, sets in VARIANTS.items():
        if wanted is None or slug(name) in wanted or name == "improved":
            rows[name] = summarize_variant(run_variant(name, sets, args))
    write_tables(rows, Path(args.results), args)


if __name__ == "__main__":
    main()
