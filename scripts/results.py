"""The Results tables of docs/results.md, rebuilt from the committed files in results/; and the
per-image test predictions of a run folder, exported for committing.

    python scripts/results.py build            # rewrite the generated tables (make results)
    python scripts/results.py build --check    # exit 1, naming the file, if one would change
    python scripts/results.py export RUN_DIR [RUN_DIR ...] --out results/NAME/predictions.csv.gz
    python scripts/results.py targets results/study-npz/improved   # or a run folder
    python scripts/results.py collect NAME RUN_DIR TUNE_DIR   # a tuned study -> results/headline

docs/results.md and README.md mark each generated table with ``<!-- results.py: NAME -->`` and
``<!-- /results.py -->``; ``build`` replaces what lies between with the table NAME computes

from results/ (per-trial rows, ``results.csv``; a report's ``ensembles.csv``,
``comparisons.csv`` and ``ablation.csv`` where the rows alone cannot give the numbers) and
leaves every other line as it is. Where a folder holds ``predictions.csv.gz``, its seed
ensembles and pairwise differences (with Holm-adjusted p-values) are recomputed from the
per-image probabilities, and each trial's accuracy, AUC and ECE recomputed from them must
match its row. Means and standard deviations are computed from the rows and rounded once.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The documents whose generated tables `build` rewrites (README.md: the tuned headline).
DOCS = (Path("docs/results.md"), Path("README.md"))
START = re.compile(r"^<!-- results\.py: ([\w-]+) -->$")
END = "<!-- /results.py -->"
PREDICTIONS = "predictions.csv.gz"
# The chest X-rays' positive class (PNEUMONIA) is class index 1 in every run in results/.
META = {"data": {"positive_class": 1}}
TOLERANCE = 1e-6  # probabilities are stored with 9 decimals


class BuildError(Exception):
    """What is wrong, where, and how to fix it, in one line."""


# --- reading results/ -------------------------------------------------------------------------
def load(root: Path, folder: str):  # -> RunData
    from lightlayers.report.load import ReportError
    from lightlayers.report.predictions import run_from_files

    where = root / folder
    preds = where / PREDICTIONS
    try:
        run = run_from_files(where / "results.csv", preds if preds.is_file() else None, META)
    except ReportError as e:
        raise BuildError(str(e)) from None
    if run.predictions:
        check_rows(run, preds)
    return run


def check_rows(run, path: Path) -> None:
    """Each trial's accuracy, AUC and ECE, recomputed from its probabilities, match its row:
    the two committed files describe the same trials."""
    from lightlayers.metrics import classification_metrics
    from lightlayers.metrics.calibration import ece

    for g in run.groups:
        for t in g.done:
            p = run.predictions[t["id"]]
            got = classification_metrics(p["labels"], p["probs"], 1, t.get("threshold"))
            got["ece"] = ece(p["labels"], p["probs"])
            for k in ("accuracy", "auc", "ece"):
                want = t.get(k)
                if want is not None and abs(float(got[k]) - float(want)) > TOLERANCE:
                    raise BuildError(
                        f"{path}: {t['model']} seed {t['seed']} gives {k} {got[k]:.6f} from its "
                        f"probabilities, its row in results.csv says {want:.6f}; export both "
                        "files from the same run folder")


def summary(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    from lightlayers.report.stats import summarize

    s = summarize(values)
    return s.mean, s.std


def mean_std(trials: Sequence[dict], key: str) -> str:
    mean, std = summary([t.get(key) for t in trials])
    if mean is None:
        return "—"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def mean_only(trials: Sequence[dict], key: str) -> str:
    mean, _ = summary([t.get(key) for t in trials])
    return "—" if mean is None else f"{mean:.3f}"


def group(run, model: str) -> list[dict]:
    for g in run.groups:
        if g.model == model:
            return g.done
    raise BuildError(f"{run.run_dir}/results.csv holds no finished trial of {model}; "
                     "name a model it holds in scripts/results.py")


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise BuildError(f"{path} does not exist; restore it from git or rerun what wrote it")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table(header: Sequence[str], align: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- the tables -------------------------------------------------------------------------------
TARGET_SOURCES = (
    ("PneumoniaMNIST's images, 28 px, `improved`, 5 seeds", "results/study-npz/improved"),
    ("the same images, study-light-k3 with test-time augmentation (`tta: 4`), 5 seeds",
     "results/tta/npz"),
    ("the study's JPEGs, 28 px, `improved`, 5 seeds", "results/improved"),
)


def targets_block(root: Path) -> str:
    from lightlayers.report.targets import candidates, evaluate, targets_markdown

    parts = []
    for title, folder in TARGET_SOURCES:
        run = load(root, folder)
        ens = root / folder / "ensembles.csv"
        cands = candidates(run, ens if ens.is_file() else None)
        parts.append(f"**{title}** (`{folder}`):\n\n" + targets_markdown(evaluate(cands)))
    return "\n".join(parts).rstrip("\n")


# Published numbers as their sources state them: (source, model, resolution, recipe, runs,
# accuracy, AUC, what differs from our rows).
MEDMNIST = "MedMNIST v2, PneumoniaMNIST (Yang et al. 2023)"
MEDMNIST_RECIPE = "the benchmark's own training"
PUBLISHED = (
    (MEDMNIST, "ResNet-18", "28 px", MEDMNIST_RECIPE, "as published", "0.854", "0.944",
     "about 11M parameters; same split"),
    (MEDMNIST, "ResNet-50", "28 px", MEDMNIST_RECIPE, "as published", "0.854", "0.948",
     "about 23M parameters; same split"),
    (MEDMNIST, "auto-sklearn", "28 px", "AutoML search", "as published", "0.855", "0.942",
     "searched model; same split"),
    (MEDMNIST, "AutoKeras", "28 px", "AutoML search", "as published", "0.878", "0.947",
     "searched model; same split"),
    (MEDMNIST, "Google AutoML Vision", "28 px", "AutoML search", "as published", "0.946",
     "0.991", "searched model, size not given; same split"),
    (MEDMNIST, "ResNet-18", "\"224\": the 28 px images upsampled", MEDMNIST_RECIPE,
     "as published", "0.864", "0.956", "about 11M parameters; no more detail than 28 px"),
    (MEDMNIST, "ResNet-50", "\"224\": the 28 px images upsampled", MEDMNIST_RECIPE,
     "as published", "0.884", "0.962", "about 23M parameters; no more detail than 28 px"),
    ("Kermany et al. 2018", "InceptionV3, ImageNet-pretrained", "full size", "transfer learning",
     "as published", "0.928", "0.968", "full-size images; checkpoint chosen on test"),
    ("the original study", "Conv2D CNN", "224 px",
     "batch 64, 20 epochs, Adam 1e-3, best checkpoint on a 16-image validation set",
     "3 runs of one notebook", "0.62-0.86", "—", "runs disagree; two runs hold collapsed models"),
    ("the original study", "LightLayers k=1", "224 px",
     "the same", "3 runs of one notebook", "0.375-0.81", "—",
     "0.375 = every image called NORMAL"),
    ("the original study", "InceptionV3, frozen", "224 px",
     "the same", "3 runs of one notebook", "~0.80", "—", "as reported, one value"),
)
# Our rows: (folder, model, resolution, recipe, what differs).
OURS = (
    ("results/study-npz/improved", "study-light-k3", "28 px, PneumoniaMNIST's images",
     "`improved`, 20 epochs", "6,447 parameters; selection on validation AUC"),
    ("results/study-npz/improved", "study-light-k5", "28 px, PneumoniaMNIST's images",
     "`improved`, 20 epochs", "10,141 parameters"),
    ("results/study-npz/improved", "study-residual-conv", "28 px, PneumoniaMNIST's images",
     "`improved`, 20 epochs", "19,642 parameters"),
    ("results/tta/npz", "study-light-k3", "28 px, PneumoniaMNIST's images",
     "`improved` + `tta: 4`", "the same weights as the first row, 5 views averaged"),
    ("results/improved", "study-light-k3", "28 px, the study's JPEGs stretched",
     "`improved`, 20 epochs", "the original study's images at 28 px"),
    ("results/seed", "study-conv", "28 px, the study's JPEGs stretched",
     "`seed` (the study's), 20 epochs", "524-image validation split, 28 px not 224"),
)


# The tuned headline's sources, as the anchors name them.
HEADLINE_SOURCES = (("pmnist", "28 px, PneumoniaMNIST's images"),
                    ("jpeg", "28 px, the study's JPEGs stretched"))
# How each source's folds keep related images together (make_folds: by patient where the file
# names say who, and identical images always in one fold).
HEADLINE_FOLDS = {"pmnist": "validation folds of the training images (this file names no "
                            "patients: identical images kept in one fold)",
                  "jpeg": "patient-grouped validation folds of the training images"}


def headline_anchor_rows(root: Path) -> list[list[str]]:
    """The tuned headline's models, once measured, as anchor rows (none before)."""
    rows = []
    for name, res in HEADLINE_SOURCES:
        folder = f"{HEADLINE}/{name}"
        if not (root / folder / "results.csv").is_file():
            continue
        tuning = read_json(root / folder / "tuning.json")
        recipe = (f"`improved`, tuned per model ({tuning['budget']} trials, "
                  f"{tuning['folds']} folds) and decided on the folds")
        for g in load(root, folder).groups:
            rows.append([f"this repository (`{folder}`)", g.model, res, recipe,
                         f"{len(g.done)} seeds, mean ± std", mean_std(g.done, "accuracy"),
                         mean_std(g.done, "auc"),
                         f"{int(g.done[0]['params_total']):,} parameters; tested once"])
    return rows


def anchors_block(root: Path) -> str:
    rows = headline_anchor_rows(root)
    for folder, model, res, recipe, differs in OURS:
        trials = group(load(root, folder), model)
        rows.append([f"this repository (`{folder}`)", model, res, recipe,
                     f"{len(trials)} seeds, mean ± std", mean_std(trials, "accuracy"),
                     mean_std(trials, "auc"), differs])
    return anchors_table(rows)


def headline_anchors_block(root: Path) -> str:
    """The README's anchors: the published numbers beside the tuned headline alone."""
    return anchors_table(headline_anchor_rows(root))


def anchors_table(ours: list[list[str]]) -> str:
    rows = [list(r) for r in PUBLISHED] + ours
    return table(("source", "model", "resolution", "recipe", "single run or seeds", "accuracy",
                  "AUC", "what differs"),
                 ("---", "---", "---", "---", "---", "---:", "---:", "---"), rows)


PROTOCOL_SCORES = (("accuracy", "accuracy"), ("auc", "AUC"), ("sensitivity", "sens."),
                   ("specificity", "spec."))


def protocols_block(folders: Sequence[str]) -> Callable[[Path], str]:
    def build(root: Path) -> str:
        runs = [load(root, f) for f in folders]
        names = [" / ".join(sorted({g.protocol for g in r.groups})) for r in runs]
        models = list(dict.fromkeys(g.model for r in runs for g in r.groups))
        header = ["model", "params"]
        for n in names:
            header += [f"{label} ({n})" for _, label in PROTOCOL_SCORES] + [f"collapsed ({n})"]
        rows = []
        for m in models:
            done = [next((g.done for g in r.groups if g.model == m), []) for r in runs]
            params = next(t["params_total"] for d in done for t in d)
            cells = [m, f"{int(params):,}"]
            for d in done:
                cells += [mean_std(d, k) for k, _ in PROTOCOL_SCORES]
                cells.append(f"{sum(bool(t.get('collapsed')) for t in d)}/{len(d)}")
            rows.append(cells)
        return table(header, ["---", "---:", *["---:"] * (len(header) - 2)], rows)

    return build


def ensembles_block(folder: str) -> Callable[[Path], str]:
    def build(root: Path) -> str:
        run = load(root, folder)
        if run.predictions:
            from lightlayers.report.ensemble import ensembles

            items = [(e.group.model, e.params_total, e.metrics["accuracy"], e.metrics["auc"],
                      e.metrics.get("ece"), len(e.seeds), e.member_accuracy)
                     for e in ensembles(run)[0]]
        else:
            items = [(r["model"], int(r["params_total"]), float(r["accuracy"]), float(r["auc"]),
                      float(r["ece"]) if r.get("ece") else None, int(r["members"]),
                      float(r["member_mean_accuracy"]))
                     for r in read_csv(root / folder / "ensembles.csv")]
        n = sorted({i[5] for i in items})
        rows = [[m, f"{p:,}", f"{a:.3f}", f"{u:.3f}", "—" if e is None else f"{e:.3f}",
                 f"{ma:.3f}"] for m, p, a, u, e, _, ma in items]
        return table((f"ensemble of {'/'.join(map(str, n))}", "parameters", "accuracy", "AUC",
                      "ECE", "members' mean accuracy"),
                     ("---", "---:", "---:", "---:", "---:", "---:"), rows)

    return build


def pairs_block(folder: str) -> Callable[[Path], str]:
    def build(root: Path) -> str:
        from lightlayers.report.compare import Comparison, distinguishable_sentence, pairwise

        run = load(root, folder)
        if run.predictions:
            comps, _, n_boot = pairwise(run)
            source = f"recomputed from `{folder}/{PREDICTIONS}`"
        else:
            comps = [Comparison(r["protocol"], r["model_a"], r["model_b"], r["metric"],
                                float(r["mean_a"]), float(r["mean_b"]), float(r["difference"]),
                                float(r["ci95_low"]), float(r["ci95_high"]), int(r["n_images"]),
                                int(r["seeds_a"]), int(r["seeds_b"]),
                                float(r.get("p_bootstrap") or "nan"),
                                float(r.get("p_holm") or "nan"))
                     for r in read_csv(root / folder / "comparisons.csv")]
            n_boot = int(read_csv(root / folder / "comparisons.csv")[0]["bootstrap_replicates"])
            source = f"`{folder}/comparisons.csv`"
        pairs: dict[tuple[str, str], dict[str, Comparison]] = {}
        for c in comps:
            pairs.setdefault((c.model_a, c.model_b), {})[c.metric] = c
        rows = []
        for (a, b), by in pairs.items():
            cells = [a, b]
            for k in ("accuracy", "auc"):
                c = by[k]
                diff = f"{c.difference:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
                cells += [f"**{diff}**" if c.real else diff,
                          "—" if math.isnan(c.p_holm) else f"{c.p_holm:.3f}"]
            rows.append(cells)
        out = table(("A", "B", "accuracy A - B [95% interval]", "p, Holm-adjusted",
                     "AUC A - B [95% interval]", "p, Holm-adjusted"),
                    ("---", "---", "---", "---:", "---", "---:"), rows)
        note = (f"\n\n{source}: paired bootstrap over the test images, {n_boot:,} replicates, "
                "seeds resampled; bold: the interval excludes 0 for that pair alone. ")
        if all(math.isnan(c.p_holm) for c in comps):
            note += (f"These {len(pairs)} pairs per score carry no Holm-adjusted p-value: that "
                     "needs the per-image test probabilities, which this folder does not hold "
                     f"({PREDICTIONS}). Unadjusted, about {len(pairs) * 0.05:.0f} of "
                     f"{len(pairs)} intervals per score would exclude 0 by chance if no model "
                     "differed, so a bold entry here is not yet a finding.")
        else:
            note += distinguishable_sentence(comps)
        return out + note

    return build


ABLATION_SCORES = ("accuracy", "auc", "sensitivity", "specificity")


def ablation_block(root: Path) -> str:
    return ablation_table(read_csv(root / "results/ablation.csv"))


def ablation_folds_block(root: Path) -> str:
    """The ablation on validation folds, from its per-fold rows (means and stds rounded once)."""
    path = root / "results/ablation-folds-rows.csv"
    if not path.is_file():
        return ("Not measured yet: `results/ablation-folds-rows.csv` does not exist (`python "
                "scripts/ablation.py --folds 3` writes it).")
    by: dict[str, list[dict]] = {}
    for r in read_csv(path):
        by.setdefault(r["variant"], []).append({k: float(v) for k, v in r.items()
                                                if k != "variant" and v != ""})
    if "improved" not in by:
        raise BuildError(f"{path} holds no rows of the full recipe (improved); rerun "
                         "`python scripts/ablation.py --folds 3`")
    rows = []
    for name, folds in by.items():
        summary_row = {"variant": name, "collapsed": str(int(sum(f["collapsed"] for f in folds)))}
        for k in ABLATION_SCORES:
            mean, std = summary([f.get(k) for f in folds])
            base, _ = summary([f.get(k) for f in by["improved"]])
            delta = math.nan if mean is None or base is None else mean - base
            summary_row |= {f"{k}_mean": str(math.nan if mean is None else mean),
                            f"{k}_std": str(math.nan if std is None else std),
                            f"{k}_delta": str(delta)}
        rows.append(summary_row)
    return ablation_table(rows)


def ablation_table(csv_rows: list[dict[str, str]]) -> str:
    rows = []
    for r in csv_rows:
        cells = [r["variant"]]
        for k in ABLATION_SCORES:
            text = f"{float(r[f'{k}_mean']):.3f} ± {float(r[f'{k}_std']):.3f}"
            if r["variant"] != "improved":
                text += f" ({float(r[f'{k}_delta']):+.3f})"
            cells.append(text)
        cells.append(r["collapsed"])
        rows.append(cells)
    return table(("variant", "accuracy", "AUC", "sensitivity", "specificity", "collapsed"),
                 ("---", "---", "---", "---", "---", "---:"), rows)


PREPROCESSING = (
    ("the study's JPEGs, stretched", "28", "results/improved"),
    ("the JPEGs, central 70% of the width (`--resize center:0.7x1`)", "28",
     "results/preprocessing/center07"),
    ("PneumoniaMNIST's (center square of each original, then resized)", "28",
     "results/preprocessing/npz"),
    ("the JPEGs, stretched (an AMD EPYC CPU)", "64", "results/improved-64"),
    ("the JPEGs, central 70% of the width", "64", "results/preprocessing/center07-64"),
    ("the JPEGs, stretched", "128", "results/preprocessing/stretch-128"),
    ("the JPEGs, central 70% of the width", "128", "results/preprocessing/center07-128"),
)


def preprocessing_block(root: Path) -> str:
    rows = []
    for label, px, folder in PREPROCESSING:
        trials = group(load(root, folder), "study-light-k3")
        rows.append([label, px, mean_std(trials, "accuracy"), mean_std(trials, "auc"),
                     mean_only(trials, "sensitivity"), mean_only(trials, "specificity")])
    return table(("images, cut", "px", "accuracy", "AUC", "sensitivity", "specificity"),
                 ("---", "---:", "---", "---", "---:", "---:"), rows)


def predictions_block(root: Path) -> str:
    """Which committed runs carry their per-image test predictions, and which do not."""
    folders = sorted(p.parent.relative_to(root).as_posix()
                     for p in (root / "results").rglob("results.csv"))
    have = [f for f in folders if (root / f / PREDICTIONS).is_file()]
    lack = [f for f in folders if f not in have]
    lines = [f"- with `{PREDICTIONS}`: " + (", ".join(f"`{f}`" for f in have) or "none"),
             "- without (per-trial rows only): " + (", ".join(f"`{f}`" for f in lack) or "none")]
    found = sorted(p.relative_to(root).as_posix()
                   for p in [*(root / "results").glob("ablation*.csv"),
                             *(root / "results").glob("ablation*/*.csv")])
    folds = [f for f in found if f.startswith("results/ablation-folds")]
    summaries = [f for f in found if f not in folds]
    if summaries:
        lines.append("- per-variant summaries only, no per-trial rows: "
                     + ", ".join(f"`{f}`" for f in summaries))
    if folds:
        lines.append("- scored on validation folds, not on test (per-fold rows and their "
                     "summary): " + ", ".join(f"`{f}`" for f in folds))
    return "\n".join(lines)


CURVE_SIZES = ("25/class", "50/class", "100/class", "250/class", "500/class", "all")


def curves_block(folder: str) -> Callable[[Path], str]:
    """Balanced accuracy and AUC per model and training size (means over the seeds), with the
    int8 CPU latency where the run measured it, from a learning curve's ``learning_curve.csv``."""
    def build(root: Path) -> str:
        rows = read_csv(root / folder / "learning_curve.csv")
        by_model: dict[str, dict[str, dict[str, str]]] = {}
        for r in rows:
            by_model.setdefault(r["model"], {})[r["train_size"]] = r
        missing = [(m, s) for m, sizes in by_model.items() for s in CURVE_SIZES
                   if s not in sizes]
        if missing:
            raise BuildError(f"{folder}/learning_curve.csv has no row for {missing[0][0]} at "
                             f"{missing[0][1]}; rerun the curve's study")
        whole = {r["train_images"] for r in rows if r["train_size"] == "all"}
        latency = all(r["ort_int8_latency_ms"] for r in rows)
        trial_latency: dict[str, float] = {}
        if latency:
            per_trial: dict[str, list[float]] = {}
            for r in read_csv(root / folder / "results.csv"):
                if r["status"] == "done" and r["ort_int8_latency_ms"]:
                    per_trial.setdefault(r["model"], []).append(float(r["ort_int8_latency_ms"]))
            trial_latency = {m: sum(v) / len(v) for m, v in per_trial.items()}
        header = ["model", "params", *(("int8 ms",) if latency else ()),
                  *(s.removesuffix("/class") for s in CURVE_SIZES)]
        align = ["---", "---:", *(("---:",) if latency else ()), *("---:" for _ in CURVE_SIZES)]
        out = []
        for key, name in (("balanced_accuracy", "Balanced accuracy"), ("auc", "AUC")):
            body = []
            for model, sizes in by_model.items():
                first = sizes[CURVE_SIZES[-1]]
                lat = [f"{trial_latency[model]:.3f}"] if latency else []
                body.append([model, f"{float(first['params_total']):,.0f}", *lat,
                             *(f"{float(sizes[s][f'{key}_mean']):.3f}" for s in CURVE_SIZES)])
            out.append(f"{name}, mean over the seeds (training images per class; all = "
                       f"{', '.join(sorted(whole))} images):\n\n" + table(header, align, body))
        if latency:
            out.append("int8 ms: ONNX Runtime int8 on the CPU, batch 1, median, mean over every\n"
                       "trial of the model (the architecture's cost: the training size does not "
                       "change it).")
        return "\n\n".join(out)
    return build


# --- the tuned headline ---------------------------------------------------------------------
HEADLINE = "results/headline"
HEADLINE_SCORES = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                   ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                   ("auc", "AUC"), ("ece", "ECE"))


def mean_std_ci(trials: Sequence[dict], key: str) -> str:
    """``mean ± std [95% interval]`` over the seeds (Student-t, as the report's)."""
    from lightlayers.report.stats import summarize

    s = summarize([t.get(key) for t in trials])
    if s.mean is None:
        return "—"
    if s.std is None or s.ci_low is None or s.ci_high is None:
        return f"{s.mean:.3f}"
    return f"{s.mean:.3f} ± {s.std:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]"


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise BuildError(f"{path} does not exist; rerun `python scripts/results.py collect` "
                         "for its folder")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise BuildError(f"{path} is not JSON ({e}); rerun `python scripts/results.py "
                         "collect` for its folder") from None


def _kept(decided: dict | None) -> str:
    if decided is None:
        return "none made"
    names = {"ema": "EMA", "tta": "TTA", "epochs": "epochs", "threshold": "threshold"}
    kept = [f"{names.get(k, k)} {v}" for k, v in sorted(decided.items())]
    return ", ".join(kept) if kept else "nothing kept"


def headline_block(name: str) -> Callable[[Path], str]:
    """One image source of the tuned headline: per model, the six scores over its seeds, how
    the settings were chosen, which models differ (Holm), the ledger count and the targets."""
    def build(root: Path) -> str:
        from lightlayers.report.compare import distinguishable_sentence, pairwise
        from lightlayers.report.targets import candidates, evaluate, targets_markdown

        folder = f"{HEADLINE}/{name}"
        if not (root / folder / "results.csv").is_file():
            return (f"Not measured yet: `{folder}` holds no results (`make headline` tunes, "
                    "trains and collects them).")
        run = load(root, folder)
        tuning = read_json(root / folder / "tuning.json")
        ledger = read_json(root / folder / "ledger.json")
        rows, seeds = [], set()
        for g in run.groups:
            seeds.add(len(g.done))
            params = g.done[0]["params_total"] if g.done else None
            rows.append([g.model, "—" if params is None else f"{int(params):,}",
                         *(mean_std_ci(g.done, k) for k, _ in HEADLINE_SCORES)])
        out = table(("model", "parameters", *(label for _, label in HEADLINE_SCORES)),
                    ("---", "---:", *["---:"] * len(HEADLINE_SCORES)), rows)
        decided = {m["model"]: m.get("decided") for m in tuning["models"]}
        n_test = len(next(iter(run.predictions.values()))["labels"]) if run.predictions \
            else None
        objective = {"auc": "AUC", "balanced_accuracy": "balanced accuracy"}.get(
            tuning["objective"], tuning["objective"])
        lines = [
            "",
            "",
            f"Mean ± std [95% interval] over {'/'.join(map(str, sorted(seeds)))} seeds per "
            f"model, each scored once on the {n_test or 'test'} test images. Settings: each "
            f"model tuned with the same budget ({tuning['budget']} trials, "
            f"{tuning['folds']} {HEADLINE_FOLDS.get(name, 'validation folds')}, "
            f"objective validation {objective}); then, on the same folds, EMA, "
            "test-time augmentation, twice the epochs and the threshold kept only where they "
            "beat the tuned settings on every fold: "
            + "; ".join(f"{m}: {_kept(d)}" for m, d in decided.items()) + ".",
        ]
        if run.predictions:
            comps, _, _ = pairwise(run)
            lines += ["", distinguishable_sentence(comps)]
        lines += ["", f"When these were recorded, this test split had been scored under "
                      f"{ledger['settings']:,} distinct settings ({ledger['scores']:,} scores, "
                      "test-split ledger): the more settings compared on one test split, the "
                      "more optimistic the best of them.",
                  "", targets_markdown(evaluate(candidates(run))).rstrip("\n")]
        return out + "\n".join(lines)

    return build


def _fold_cell(values: Sequence[float], balanced: Sequence[float], base: Sequence[float],
               maximize: bool, kept: bool, where: str) -> str:
    wins = sum(v > b if maximize else v < b for v, b in zip(values, base, strict=True))
    _check_kept(kept, wins, len(values), where)
    cell = (f"{sum(values) / len(values):.3f} / {sum(balanced) / len(balanced):.3f} "
            f"({wins}/{len(values)})")
    return f"**{cell} kept**" if kept else cell


def _check_kept(kept: bool, wins: int, folds: int, where: str) -> None:
    # Decisions recorded under another rule (a mean that one fold can tip) are not shown as
    # if made under this one.
    if kept != (wins == folds):
        raise BuildError(f"{where}: {'kept' if kept else 'not kept'} though it won on {wins} "
                         f"of {folds} folds; decide the tuning again (`lightlayers tune ... "
                         "--decide`) and collect it")


def decisions_block(name: str) -> Callable[[Path], str]:
    """The numbers behind the tuned headline's decisions on the validation folds, per model:
    the tuned settings, each candidate added alone, and the threshold, so that TTA is always
    seen beside what a threshold shift does to balanced accuracy."""
    def build(root: Path) -> str:
        from lightlayers.decisions import CANDIDATES

        folder = f"{HEADLINE}/{name}"
        if not (root / folder / "tuning.json").is_file():
            return (f"Not measured yet: `{folder}` holds no tuning summary (`make headline` "
                    "tunes, decides and collects it).")
        tuning = read_json(root / folder / "tuning.json")
        objective = {"auc": "AUC", "balanced_accuracy": "balanced accuracy"}.get(
            tuning["objective"], tuning["objective"])
        maximize = tuning["objective"] != "loss"
        names = [c for m in tuning["models"] if m.get("decisions")
                 for c in m["decisions"]["candidates"]]
        # In the order they are tried (tuning.json's keys are sorted).
        candidates = sorted(dict.fromkeys(names), key=lambda c: (
            list(CANDIDATES).index(c) if c in CANDIDATES else len(CANDIDATES), c))
        # The header names each candidate's value; a model whose value differs says its own.
        shown: dict[str, Any] = {}
        for m in tuning["models"]:
            for c, got in ((m.get("decisions") or {}).get("candidates") or {}).items():
                shown.setdefault(c, got["settings"].get(c))
        labels = {"ema": "+ EMA {}", "tta": "+ TTA, {} views", "epochs": "{} epochs"}
        rows = []
        for m in tuning["models"]:
            d = m.get("decisions")
            if not d:
                rows.append([m["model"], "not decided", *["—"] * (len(candidates) + 1)])
                continue
            base = d["base"]["objective"]
            balanced = d["base"]["balanced_accuracy"]
            row = [m["model"], f"{sum(base) / len(base):.3f} / "
                               f"{sum(balanced) / len(balanced):.3f}"]
            for c in candidates:
                got = d["candidates"].get(c)
                if got is None or "not_applicable" in got:
                    row.append("n/a")
                    continue
                value = got["settings"].get(c)
                cell = _fold_cell(got["objective"], got["balanced_accuracy"], base, maximize,
                                  got["kept"], f"{folder}/tuning.json, {m['model']}, {c}")
                row.append(cell if value == shown[c] else f"{value}: {cell}")
            thr = d.get("threshold") or {}
            if "not_applicable" in thr or not thr:
                row.append("n/a")
            else:
                half, youden = thr["argmax"], thr["val_youden"]
                wins = sum(y > h for y, h in zip(youden, half, strict=True))
                _check_kept(thr["chosen"] == "val_youden", wins, len(half),
                            f"{folder}/tuning.json, {m['model']}, threshold")
                cell = (f"{sum(half) / len(half):.3f} -> {sum(youden) / len(youden):.3f} "
                        f"({wins}/{len(half)})")
                row.append(f"**{cell} kept**" if thr["chosen"] == "val_youden" else cell)
            rows.append(row)
        header = ("model", "tuned",
                  *(labels.get(c, f"+ {c} {{}}").format(shown[c]) for c in candidates),
                  "threshold 0.5 -> Youden")
        out = table(header, ("---", *["---:"] * (len(header) - 1)), rows)
        return out + (
            f"\n\nEach cell: validation {objective} / balanced accuracy at 0.5, means over "
            f"the {tuning['folds']} folds, and (in brackets) on how many folds the "
            f"{objective} beat the tuned settings'; a candidate (added alone: EMA decay, TTA "
            "views, epochs) is kept, in bold, only when it wins on every fold. Threshold: "
            "balanced accuracy at 0.5 -> at the Youden threshold chosen on the other folds' "
            "held-out images, and on how many folds it was higher. TTA and the threshold both "
            "move the operating point; balanced accuracy shows what either buys beyond it.")

    return build


BLOCKS: dict[str, Callable[[Path], str]] = {
    "predictions": predictions_block,
    "targets": targets_block,
    "anchors": anchors_block,
    "anchors-headline": headline_anchors_block,
    "protocols-npz": protocols_block(("results/study-npz/seed", "results/study-npz/improved")),
    "ensembles-npz": ensembles_block("results/study-npz/improved"),
    "pairs-npz": pairs_block("results/study-npz/improved"),
    "protocols-jpeg": protocols_block(("results/seed", "results/improved")),
    "ablation": ablation_block,
    "ablation-folds": ablation_folds_block,
    "preprocessing": preprocessing_block,
    "curves-pmnist": curves_block("results/curves/pmnist"),
    "curves-jpeg": curves_block("results/curves/jpeg"),
    "headline-pmnist": headline_block("pmnist"),
    "headline-jpeg": headline_block("jpeg"),
    "decisions-pmnist": decisions_block("pmnist"),
    "decisions-jpeg": decisions_block("jpeg"),
}


# --- build ------------------------------------------------------------------------------------
def rebuild(text: str, root: Path, where: str) -> str:
    """``text`` with every generated block recomputed from ``root``'s results/."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        m = START.match(lines[i])
        i += 1
        if not m:
            continue
        name = m.group(1)
        if name not in BLOCKS:
            raise BuildError(f"{where} line {i}: unknown table {name!r}; name one of "
                             f"{', '.join(BLOCKS)} or add it to scripts/results.py")
        try:
            end = lines.index(END, i)
        except ValueError:
            raise BuildError(f"{where} line {i}: table {name!r} has no closing line {END!r}; "
                             "add it after the table") from None
        out += BLOCKS[name](root).split("\n")
        out.append(END)
        i = end + 1
    return "\n".join(out)


def first_difference(a: str, b: str) -> int:
    for n, (x, y) in enumerate(zip(a.split("\n"), b.split("\n"), strict=False), start=1):
        if x != y:
            return n
    return min(a.count("\n"), b.count("\n")) + 1


def build(root: Path, check: bool) -> int:
    status = 0
    for doc in DOCS:
        path = root / doc
        if not path.is_file():
            if doc != DOCS[0]:  # a copy of docs/ and results/ alone is rebuilt without it
                continue
            raise BuildError(f"{path} does not exist; run from the repository or give --root")
        old = path.read_text()
        new = rebuild(old, root, str(doc))
        if new == old:
            print(f"results: {doc} is what results/ gives")
        elif check:
            print(f"results: {doc} differs from what the committed files in results/ give "
                  f"(first at line {first_difference(old, new)}); run `make results` and "
                  "commit both", file=sys.stderr)
            status = 1
        else:
            path.write_text(new)
            print(f"results: rewrote {doc}")
    return status


# --- export and targets -----------------------------------------------------------------------
def export(run_dirs: Sequence[str], out: Path) -> int:
    from lightlayers.report.load import load_run
    from lightlayers.report.pool import pool_runs
    from lightlayers.report.predictions import predictions_csv_gz

    run = pool_runs(run_dirs) if len(run_dirs) > 1 else load_run(run_dirs[0])
    data = predictions_csv_gz(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    trials = len(run.curve) or sum(len(g.done) for g in run.groups)
    print(f"results: {trials} trials' test predictions -> {out} ({len(data):,} bytes)")
    return 0


def collect(name: str, run_dir: Path, tune_dir: Path, root: Path) -> int:
    """A finished tuned study into ``results/headline/NAME``: its results.csv, its per-image
    test predictions, its tuning folder's summary (best settings, decisions and the numbers
    behind them) and the test-split ledger's count, without any local path."""
    from lightlayers.ledger import split_uses, test_fingerprint
    from lightlayers.runfolder.store import ResultsStore
    from lightlayers.tuned import tune_summary

    if not re.fullmatch(r"[\w-]+", name):
        raise BuildError(f"collect: {name!r} is not a plain folder name; use letters, digits, "
                         "- or _")
    out = root / HEADLINE / name
    with ResultsStore(run_dir / "results.db", create=False, readonly=True) as store:
        meta = store.meta()
        counts = store.counts()
    if counts["done"] == 0 or any(n for status, n in counts.items() if status != "done"):
        raise BuildError(f"collect: {run_dir} has unfinished or failed trials ({counts}); "
                         "finish the study (rerun the same `lightlayers run`) first")
    test = test_fingerprint(meta.get("data_fingerprint") or {})
    uses = split_uses(test) if test else []
    if not uses:
        raise BuildError(f"collect: the test-split ledger holds no score of {run_dir}'s test "
                         "split; collect on the machine that ran the study")
    summary = tune_summary(tune_dir)
    summary["folder"] = Path(summary["folder"]).name
    for m in summary["models"]:
        m["decided"] = None if m.get("decisions") is None else m["decisions"]["settings"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.csv").write_text((run_dir / "results.csv").read_text())
    export([str(run_dir)], out / PREDICTIONS)
    (out / "tuning.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    u = uses[0]
    (out / "ledger.json").write_text(json.dumps(
        {"test": u.test, "settings": u.settings, "scores": u.scores, "first": u.first,
         "last": u.last}, indent=1, sort_keys=True) + "\n")
    print(f"results: collected {run_dir} and {tune_dir} into {out}")
    return 0


def targets(path: Path) -> int:
    from lightlayers.report.load import load_run
    from lightlayers.report.predictions import run_from_files
    from lightlayers.report.targets import candidates, evaluate, targets_markdown

    if (path / "results.db").is_file():
        run, ens = load_run(path), None
    else:
        preds = path / PREDICTIONS
        run = run_from_files(path / "results.csv", preds if preds.is_file() else None, META)
        ens = path / "ensembles.csv" if (path / "ensembles.csv").is_file() else None
    print(targets_markdown(evaluate(candidates(run, ens))), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from lightlayers.report.load import ReportError

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="rebuild the generated tables of docs/results.md and "
                                     "README.md")
    b.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming the file if a rebuilt one differs")
    b.add_argument("--root", type=Path, default=ROOT,
                   help="the folder holding docs/ and results/ (default: this repository)")
    e = sub.add_parser("export", help="a run folder's per-image test predictions")
    e.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="one run folder, or several of one study to pool")
    e.add_argument("--out", type=Path, required=True, help="the .csv.gz written")
    t = sub.add_parser("targets", help="the targets, met or missed, of a run or results folder")
    t.add_argument("path", type=Path)
    c = sub.add_parser("collect", help=f"a finished tuned study into {HEADLINE}/NAME")
    c.add_argument("name", help="the folder's name: pmnist or jpeg")
    c.add_argument("run_dir", type=Path, help="the run folder of `lightlayers run --tuned`")
    c.add_argument("tune_dir", type=Path, help="the tuning folder it used")
    c.add_argument("--root", type=Path, default=ROOT,
                   help="the folder holding results/ (default: this repository)")
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            return build(args.root, args.check)
        if args.command == "export":
            return export(args.runs, args.out)
        if args.command == "collect":
            return collect(args.name, args.run_dir, args.tune_dir, args.root)
        return targets(args.path)
    except (BuildError, ReportError) as err:
        print(f"results: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
