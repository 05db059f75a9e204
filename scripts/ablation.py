"""Ablation of the `improved` protocol: the recipe minus one ingredient at a time.

Each variant is one `lightlayers run` of configs/results-improved.yaml with `--set` flags, in its
own run folder (runs/ablation/<variant>), so an interrupted ablation resumes where it stopped.
The table (mean ± std over seeds, and the change of the mean against the full recipe) is written
to results/ablation.csv and results/ablation.md.

    python scripts/ablation.py --data ../shared/data/chest_xray_pneumonia/chest_xray_224.tar.gz
"""

from __future__ import annotations

import argparse
import csv
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
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


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


def write_tables(rows: dict[str, dict[str, object]], results: Path, args: argparse.Namespace
                 ) -> None:
    results.mkdir(parents=True, exist_ok=True)
    base = rows["improved"]
    metrics = [m for m, _ in scored()]
    shown = [(m, name) for m, name in scored() if name]
    fields = ["variant", "seeds", "collapsed"]
    for m in metrics:
        fields += [f"{m}_mean", f"{m}_std", f"{m}_delta"]
    with open(results / "ablation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for name, row in rows.items():
            deltas = {f"{m}_delta": float(row[f"{m}_mean"]) - float(base[f"{m}_mean"])  # type: ignore[arg-type]
                      for m in metrics}
            w.writerow({"variant": name, **row, **deltas})
    lines = [f"Ablation of `improved` on {args.model}, seeds {args.seeds} (mean ± std; "
             "in brackets the change of the mean against the full recipe).", "",
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
    (results / "ablation.md").write_text("\n".join(lines) + "\n")
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
    args = p.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    rows = {}
    for name, sets in VARIANTS.items():
        if wanted is None or slug(name) in wanted or name == "improved":
            rows[name] = summarize_variant(run_variant(name, sets, args))
    write_tables(rows, Path(args.results), args)


if __name__ == "__main__":
    main()
