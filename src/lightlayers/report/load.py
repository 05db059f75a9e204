"""Read a run folder's results store into what the report shows: one group per model
(and protocol, when a study has several), its finished trials, and what did not finish."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightlayers.data.subsets import main_size, train_size
from lightlayers.runfolder.store import ResultsStore, StoreError


class ReportError(Exception):
    """The run folder cannot be reported on; the message names the folder and the fix."""


@dataclass
class Group:
    """The trials of one model under one protocol."""

    label: str
    model: str
    protocol: str
    done: list[dict[str, Any]] = field(default_factory=list)
    planned_seeds: list[int] = field(default_factory=list)
    # Filled in once all groups are known: fewer finished seeds than the fullest group.
    incomplete: bool = False

    @property
    def seeds(self) -> list[int]:
        return [t["seed"] for t in self.done]

    @property
    def missing_seeds(self) -> list[int]:
        done = set(self.seeds)
        return [s for s in self.planned_seeds if s not in done]


@dataclass
class RunData:
    run_dir: Path
    groups: list[Group]
    failed: list[dict[str, Any]]
    unfinished: list[dict[str, Any]]  # pending or running
    meta: dict[str, Any]
    histories: dict[int, list[dict[str, Any]]]
    predictions: dict[int, dict[str, Any]]
    counts: dict[str, int]
    # The run folders pooled into this one (report.pool); empty for a single folder.
    sources: tuple[Path, ...] = ()
    # A study with training sizes (a learning curve): the groups hold the trials of the
    # largest size, ``curve`` the finished trials of every size (report.curves).
    main_size: str | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_seeds(self) -> int:
        return max((len(g.done) for g in self.groups), default=0)


def sized_model(t: dict[str, Any]) -> str:
    """A trial's model, with its training size when it trained on a subset."""
    size = train_size(t)
    return t["model"] if size is None else f"{t['model']} (train size {size})"


def _first_run_hint(run_dir: Path) -> str:
    return f"run `lightlayers run --out {run_dir}` first"


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report needs from ``run_dir/results.db``; raises :class:`ReportError`
    when the folder is missing, holds no store, or the store holds no trials."""
    run_dir = Path(run_dir)
    if run_dir.name == "results.db" and run_dir.is_file():
        run_dir = run_dir.parent
    if not run_dir.exists():
        raise ReportError(f"run folder {run_dir} does not exist; {_first_run_hint(run_dir)}")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a run folder; {_first_run_hint(run_dir)}")
    db = run_dir / "results.db"
    if not db.is_file():
        raise ReportError(
            f"run folder {run_dir} holds no results (no results.db); {_first_run_hint(run_dir)}")
    try:
        # Read-only: a report never changes the record, and works on a read-only folder.
        with ResultsStore(db, create=False, readonly=True) as store:
            trials = store.trials()
            if not trials:
                raise ReportError(
                    f"run folder {run_dir} holds no trials yet; {_first_run_hint(run_dir)}")
            done = [t for t in trials if t["status"] == "done"]
            histories = {t["id"]: store.history(t["id"]) for t in done}
            predictions = {t["id"]: p for t in done
                           if (p := store.predictions(t["id"])) is not None}
            meta = store.meta()
            counts = store.counts()
    except StoreError as e:
        raise ReportError(f"cannot read the results of {run_dir}: {e}") from e

    several_protocols = len({t["protocol"] for t in trials}) > 1
    groups: dict[tuple[str, str], Group] = {}
    main = main_size(trials)
    # Insertion order of the store is the study's plan order (models as listed, then seeds).
    for t in trials:
        if train_size(t) != main:
            continue
        gk = (t["model"], t["protocol"])
        if gk not in groups:
            label = f"{t['model']} [{t['protocol']}]" if several_protocols else t["model"]
            groups[gk] = Group(label, t["model"], t["protocol"])
        g = groups[gk]
        g.planned_seeds.append(t["seed"])
        if t["status"] == "done":
            g.done.append(t)
    for g in groups.values():
        # Random backbone weights are an explicit choice; never let them pass for pretrained.
        if any((t.get("extra") or {}).get("weights") == "none" for t in g.done):
            g.label += " (weights: none)"
    data = RunData(
        run_dir=run_dir,
        groups=list(groups.values()),
        failed=[t for t in trials if t["status"] == "failed"],
        unfinished=[t for t in trials if t["status"] in ("pending", "running")],
        meta=meta,
        histories=histories,
        predictions=predictions,
        counts=counts,
        main_size=main,
        curve=list(done) if len({train_size(t) for t in trials}) > 1 else [],
    )
    for g in data.groups:
        g.incomplete = len(g.done) < data.max_seeds or bool(g.missing_seeds)
    return data
