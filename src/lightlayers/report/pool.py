"""Several run folders of one study, read as one: the seeds of a model that ran side by side in
separate folders (one process per core, or one folder per machine) pooled into one table.

Pooling is refused unless every folder was made from the same data and split, with the same
settings and protocol; a seed finished in two folders is refused too, since it would count
twice. A seed that failed or was stopped in one folder and finished in another counts once,
finished.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightlayers.data.subsets import train_size
from lightlayers.report.load import Group, ReportError, RunData, load_run


def _differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """Keys of two recorded dicts whose values differ; a key only one of them records (a field
    added to lightlayers after the other folder was written) is not a difference."""
    a, b = a or {}, b or {}
    return sorted(k for k in set(a) & set(b) if a[k] != b[k])


def _check_same_study(first: RunData, run: RunData) -> None:
    from lightlayers.runfolder.settings import settings_diff

    where = f"{run.run_dir} and {first.run_dir}"
    fix = "pool only folders of one study that differ in their seeds"
    from lightlayers.fingerprint import essential

    a, b = first.meta.get("data_fingerprint"), run.meta.get("data_fingerprint")
    data = _differences(essential(a) if a else None, essential(b) if b else None)
    if data or not first.meta.get("data_fingerprint"):
        raise ReportError(f"{where} were not made from the same data and split "
                          f"({', '.join(data) or 'no data recorded'} differ); {fix}")
    settings = settings_diff(first.meta.get("settings") or {}, run.meta.get("settings") or {})
    if settings:
        raise ReportError(f"{where} were run with other settings ({', '.join(settings)} "
                          f"differ); {fix}")
    if first.main_size != run.main_size:
        # Their tables would mix models trained on different amounts of data.
        raise ReportError(f"{where} show other training sizes in their tables ("
                          f"{first.main_size or 'all'} and {run.main_size or 'all'}); {fix}")
    protocol = _differences(first.meta.get("protocol"), run.meta.get("protocol"))
    if protocol:
        raise ReportError(f"{where} trained under other protocols ({', '.join(protocol)} "
                          f"differ); {fix}")


def pool_runs(run_dirs: Sequence[str | Path]) -> RunData:
    """The run folders ``run_dirs`` as one run: per model (and protocol) the finished seeds of
    all of them, with new trial ids so that ids of different folders cannot collide. The
    result's ``run_dir`` is the first folder (whose checkpoints the Grad-CAM figure uses) and
    its ``sources`` all of them. Raises :class:`ReportError` as described in the module."""
    if not run_dirs:
        raise ReportError("no run folder to report on")
    paths = [Path(d) for d in run_dirs]
    if len({p.resolve() for p in paths}) < len(paths):
        raise ReportError("a run folder is named twice; name each folder once")
    runs = [load_run(p) for p in paths]
    first = runs[0]
    for run in runs[1:]:
        _check_same_study(first, run)

    groups: dict[str, Group] = {}
    owner: dict[tuple[str, int], Path] = {}
    histories: dict[int, list[dict[str, Any]]] = {}
    predictions: dict[int, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    unfinished: list[dict[str, Any]] = []
    ids = itertools.count(1)
    curve: list[dict[str, Any]] = []
    curve_owner: dict[tuple[str, str, str | None, int], Path] = {}
    for run in runs:
        new_ids: dict[int, int] = {}  # a trial of the main size is also on the curve

        def renumber(t: dict[str, Any], run: RunData = run,
                     new_ids: dict[int, int] = new_ids) -> dict[str, Any]:
            if t["id"] not in new_ids:
                new_ids[t["id"]] = next(ids)
            return {**t, "id": new_ids[t["id"]], "run_dir": str(run.run_dir)}

        for g in run.groups:
            pooled = groups.setdefault(g.label, Group(g.label, g.model, g.protocol))
            for t in g.done:
                seen = owner.get((g.label, t["seed"]))
                if seen is not None:
                    raise ReportError(
                        f"seed {t['seed']} of {g.label} finished in both {seen} and "
                        f"{run.run_dir}; it would count twice: leave one of the folders out")
                owner[(g.label, t["seed"])] = run.run_dir
                new = renumber(t)
                pooled.done.append(new)
                if t["id"] in run.histories:
                    histories[new["id"]] = run.histories[t["id"]]
                if t["id"] in run.predictions:
                    predictions[new["id"]] = run.predictions[t["id"]]
            pooled.planned_seeds += [s for s in g.planned_seeds if s not in pooled.planned_seeds]
        for t in run.curve or [t for g in run.groups for t in g.done]:
            at = (t["model"], t["protocol"], train_size(t), t["seed"])
            if at in curve_owner and at[2] != run.main_size:
                raise ReportError(
                    f"seed {t['seed']} of {t['model']} at training size {at[2]} finished in "
                    f"both {curve_owner[at]} and {run.run_dir}; it would count twice: leave "
                    "one of the folders out")
            curve_owner[at] = run.run_dir
            new = renumber(t)
            curve.append(new)
            if t["id"] in run.predictions:
                predictions[new["id"]] = run.predictions[t["id"]]
        failed += [renumber(t) for t in run.failed]
        unfinished += [renumber(t) for t in run.unfinished]

    def finished_elsewhere(t: dict[str, Any]) -> bool:
        if train_size(t) != first.main_size:  # a size of the curve only
            return (t["model"], t["protocol"], train_size(t), t["seed"]) in curve_owner
        return any((g.model, g.protocol) == (t["model"], t["protocol"]) and t["seed"] in g.seeds
                   for g in groups.values())

    if not any(r.curve for r in runs):
        curve = []
    failed = [t for t in failed if not finished_elsewhere(t)]
    unfinished = [t for t in unfinished if not finished_elsewhere(t)]
    for g in groups.values():
        order = sorted(range(len(g.done)), key=lambda j: g.done[j]["seed"])
        g.done = [g.done[j] for j in order]
        g.planned_seeds.sort()
    counts = {k: 0 for k in first.counts}
    counts.update(done=sum(len(g.done) for g in groups.values()), failed=len(failed))
    for t in unfinished:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    data = RunData(first.run_dir, list(groups.values()), failed, unfinished, first.meta,
                   histories, predictions, counts, sources=tuple(r.run_dir for r in runs),
                   main_size=first.main_size, curve=curve)
    for g in data.groups:
        g.incomplete = len(g.done) < data.max_seeds or bool(g.missing_seeds)
    return data
