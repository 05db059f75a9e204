"""Paired differences between models of different run folders, e.g. each distilled model
against the same model trained on labels alone:

    python scripts/compare_runs.py runs/distill-npz-k1245:" distilled" runs/study-npz-improved \
        --same-model --out results/distillation/comparisons

Each RUN[:TAG] adds its models under their names plus TAG; RUN may name several folders of one
study joined by "+" (seeds run side by side), pooled as `lightlayers report A B --out` pools
them. The intervals are the report's (lightlayers.report.compare: 95% paired bootstrap over the
test images, seeds resampled), so every run must have been tested on the same images. Writes
OUT.csv and OUT.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    from lightlayers.report.compare import (
        comparisons_csv,
        distinguishable_sentence,
        merge_runs,
        pairwise,
        with_holm,
    )
    from lightlayers.report.load import ReportError, load_run
    from lightlayers.report.pool import pool_runs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN[:TAG]")
    p.add_argument("--same-model", action="store_true",
                   help="only pairs of the same model from different runs")
    p.add_argument("--out", required=True, help="path stem of the .csv and .md written")
    args = p.parse_args()
    try:
        runs = []
        for spec in args.runs:
            paths, _, tag = spec.partition(":")
            parts = paths.split("+")
            runs.append((pool_runs(parts) if len(parts) > 1 else load_run(parts[0]), tag))
        merged = merge_runs(runs)
        comps, notes, n_boot = pairwise(merged)
    except ReportError as e:
        print(f"compare_runs: {e}", file=sys.stderr)
        return 1
    labels = {g.label: g.model for g in merged.groups}
    if args.same_model:
        # Holm's family is the pairs written, not every pair of the merged runs.
        comps = with_holm([c for c in comps if labels[c.model_a] == labels[c.model_b]])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".csv").write_text(comparisons_csv(comps, n_boot))
    lines = ["| A | B | metric | A | B | A - B [95% interval] | p, Holm-adjusted |",
             "| --- | --- | --- | ---: | ---: | --- | ---: |"]
    for c in comps:
        diff = f"{c.difference:+.3f} [{c.low:+.3f}, {c.high:+.3f}]"
        lines.append(f"| {c.model_a} | {c.model_b} | {c.metric} | {c.mean_a:.3f} | "
                     f"{c.mean_b:.3f} | {f'**{diff}**' if c.real else diff} | {c.p_holm:.3f} |")
    lines += ["", f"Paired bootstrap, {n_boot} replicates: the test images drawn with "
              "replacement (the same draw for both models) and each model's seeds drawn with "
              "replacement. Bold: the interval excludes 0 (that pair alone). p, Holm-adjusted: "
              "the bootstrap p-value adjusted across the pairs of the same score above.",
              "", distinguishable_sentence(comps)]
    lines += [f"- {n}" for n in notes]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
