"""A study: plan trials (models x seeds), run each, record everything in the run folder.

The run folder (:mod:`lightlayers.runfolder`) is written only through its own package: the
store, results.csv, config.yaml, the checkpoints and the lock.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightlayers import csvsafe
from lightlayers.config import ConfigError, Protocol, StudyConfig
from lightlayers.config import comparable_settings as _settings
from lightlayers.data import Dataset, load_dataset
from lightlayers.data.subsets import sized_key
from lightlayers.executors import Executor, Task, executor_info
from lightlayers.fingerprint import (
    _data_change,
    _jsonable,
    data_fingerprint,
    data_key,
    same_data,
)
from lightlayers.ledger import StudyLedger
from lightlayers.progress import ProgressReporter
from lightlayers.runfolder.layout import RunFolder
from lightlayers.runfolder.results_csv import write_results_csv
from lightlayers.runfolder.settings import local_inputs, settings_diff
from lightlayers.runfolder.store import ResultsStore
from lightlayers.runtime import resolve_device, resolve_threads
from lightlayers.trial import TrialSpec, data_size_for, model_kwargs, resolve_study_weights


def _record_skipped(folder: RunFolder, datasets: Any, log: Any) -> None:
    """Undecodable files left out (``on_bad_image: skip``): listed in the run folder."""
    rows = sorted({(f, r) for ds in datasets for f, r in ds.skipped})
    if not rows:
        return
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")  # file names are the data's, not ours
    w.writerow(["file", "reason"])
    w.writerows(rows)
    path = folder.write("skipped_images.csv", buf.getvalue())
    log(f"{len(rows)} undecodable image file(s) skipped, listed in {path}")


@dataclass
class StudyOutcome:
    out_dir: Path
    counts: dict[str, int]
    ran: int
    skipped: int


def create_executor(cfg: StudyConfig, protocol: Protocol, device: torch.device,
                    out: Path) -> Executor:
    """The executor ``cfg.executor`` names; built before any data is loaded, so that a missing
    optional dependency (Ray) is reported at once."""
    executor = executor_info(cfg.executor).load()(cfg, protocol, device, out)
    if not isinstance(executor, Executor):
        raise TypeError(f"executor {cfg.executor!r} built {type(executor).__name__}, which has no "
                        "run(tasks, start) or reporter (see lightlayers.executors.base.Executor)")
    return executor


def run_study(cfg: StudyConfig, progress: bool = True) -> StudyOutcome:
    """Run every pending trial of ``cfg``; done trials in the run folder are skipped."""
    import yaml

    cfg = resolve_threads(cfg)
    tuned: dict[str, Any] = {}
    if cfg.tuned is not None:  # each model's best settings from `lightlayers tune`
        from lightlayers.tuned import apply_tuned, check_tuned_data, tuned_record

        cfg = apply_tuned(cfg)
        tuned = {m: tuned_record(cfg, m) for m in cfg.models}
    # Not resolved: a link given as --out is refused by the folder's claim, never followed.
    out = Path(cfg.out).expanduser().absolute()
    # With Ray the trials run on the workers' devices: a head node without a GPU must not
    # refuse --device cuda, so the driver only describes its own.
    device = resolve_device(cfg.device if executor_info(cfg.executor).runs_here else "auto")
    torch.set_num_threads(cfg.threads or 1)  # resolve_threads set it
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    protocol = cfg.resolved_protocol()
    executor = create_executor(cfg, protocol, device, out)
    if cfg.log:  # a tracker's missing package is said now, not after the training
        from lightlayers.trackers import check_trackers

        check_trackers(cfg.log)
    folder = RunFolder(out, inputs=local_inputs(cfg))
    store = folder.store
    sizes = cfg.train_size_plan()
    reporter = ProgressReporter(len(cfg.models) * len(cfg.seeds) * len(sizes),
                                enabled=progress)
    try:
        previous = store.meta().get("settings")
        now = _settings(cfg)
        diff = settings_diff(previous, now)
        if diff:
            from lightlayers.schema import shown

            # The folder's value beside this run's, for a few plain settings: `protocol: seed
            # there, improved now` says at once which flag resumes it.
            before = previous or {}
            shown_diff = [f"{k}: {shown(before.get(k), 20)} there, {shown(now.get(k), 20)} now"
                          if not isinstance(now.get(k), dict | list) else k for k in diff[:3]]
            raise ConfigError(
                f"{out} holds a study with other settings ({'; '.join(shown_diff)}"
                f"{'; ...' if len(diff) > 3 else ''}); use another --out folder, or the same "
                "settings to resume or extend it"
            )
        # Weights first: a transfer model that cannot have its weights is known (and said) before
        # any data is decoded or any model trains.
        weights, weight_errors = resolve_study_weights(cfg, reporter.log, progress)
        datasets: dict[int | None, Dataset] = {}

        def dataset_for(model: str) -> Dataset:
            size = data_size_for(cfg, model)
            if size not in datasets:
                reporter.log(f"loading data {cfg.data}" + (f" at {size}px" if size else ""))
                datasets[size] = load_dataset(
                    cfg.data, size=size, in_chans=cfg.in_chans, resize=cfg.resize,
                    val_fraction=cfg.val_fraction, seed=cfg.split_seed, progress=progress,
                    on_bad_image=cfg.on_bad_image,
                    allow_missing_classes=cfg.allow_missing_classes)
                check_data(datasets[size])
                if tuned:
                    check_tuned_data(cfg, datasets[size])
            return datasets[size]

        recorded = store.meta().get("data_fingerprint")

        def check_data(ds: Dataset) -> None:
            nonlocal recorded
            now = data_fingerprint(ds)
            manifest = ds.details.get("manifest")
            if recorded is None:
                recorded = now
                store.set_meta(data_fingerprint=now, data_manifest=manifest)
            elif not same_data(recorded, now):
                change = _data_change(recorded, now, store.meta().get("data_manifest"), manifest)
                raise ConfigError(
                    f"{out} was made with other data: {cfg.data} has changed since "
                    f"({change}). Its trials are kept as they are; run the changed data into "
                    "a new folder with --out NEW_FOLDER")

        specs = [TrialSpec(m, s, cfg.protocol, None if size.full else size.label)
                 for size in sizes for m in cfg.models for s in cfg.seeds]
        keyed = []
        for spec in specs:
            ds = dataset_for(spec.model)
            keyed.append((spec, ds, sized_key(data_key(ds), spec.train_size)))
        first = datasets[next(iter(datasets))]
        _check_sizes(sizes, first, cfg.split_seed, reporter.log)
        _record_skipped(folder, datasets.values(), reporter.log)
        store.set_meta(
            settings=_settings(cfg), config=cfg.to_dict(),
            protocol=dataclasses.asdict(protocol), environment=_env(device),
            data=_jsonable(first.summary()),
            # Where the models' settings came from (the report says it): a tuning or the
            # protocol's fixed recipe.
            settings_source=_tuned_source(tuned),
        )
        folder.write("config.yaml", yaml.safe_dump(
            {**cfg.to_dict(), "resolved_protocol": dataclasses.asdict(protocol)},
            sort_keys=False))
        redo = store.reset_interrupted()
        if redo:
            reporter.log(f"redoing {len(redo)} trial(s) interrupted by an earlier crash")
        folder.recorded = True
        store.add_trials({"model": sp.model, "seed": sp.seed, "protocol": sp.protocol,
                          "data": dk, "config": {"model_options": model_kwargs(cfg, sp.model),
                                                 **({"tuned": tuned[sp.model]} if tuned
                                                    else {}),
                                                 **({"train_size": sp.train_size}
                                                    if sp.train_size is not None else {})}}
                         for sp, _, dk in keyed)
        status = {t["key"]: t["status"] for t in store.trials()}
        todo = [(sp, ds, dk) for sp, ds, dk in keyed if status[sp.key(dk)] != "done"]
        skipped = len(keyed) - len(todo)
        if skipped:
            reporter.log(f"{skipped} trial(s) already done in {out}: skipped")
        for sp, _, dk in todo:
            if sp.model in weight_errors:
                store.mark_running(sp.key(dk))  # an attempt, counted as any other
                store.record_failed(sp.key(dk), weight_errors[sp.model],
                                    {"error": weight_errors[sp.model], "stage": "weights"})
        todo = [t for t in todo if t[0].model not in weight_errors]
        reporter.total = len(todo)
        tasks = [Task(spec, ds, dk, weights.get(spec.model)) for spec, ds, dk in todo]
        executor.reporter = reporter
        ledger = StudyLedger(cfg, protocol, out)
        trackers = _trackers(cfg, folder)
        try:
            for task, res, error in executor.run(tasks, start=lambda t: store.mark_running(t.key)):
                spec = task.spec
                # The cache pages this trial read leave the process (the page cache keeps
                # them): a study's sizes are never resident together.
                task.data.release()
                if error is not None:
                    store.record_failed(task.key, error["error"], error)
                    reporter.end_trial(f"  FAILED {spec.label}: {error['error']}")
                    continue
                assert res is not None
                store.record_done(task.key, res.metrics, res.history, res.predictions.as_dict(),
                                  res.confusion, res.extra, res.checkpoint)
                ledger.scored(spec.model, spec.seed, task.data, task.data_key)
                reporter.end_trial(_done_line(spec, res.metrics))
                trackers.trial_done(spec, task.key, res)  # after the record: never logged twice
        except KeyboardInterrupt:
            # Finished trials stay recorded; the interrupted one is redone by the next run.
            store.reset_interrupted()
            raise
        finally:
            trackers.close()
        if cfg.deployment:
            _measure_finished(out, store, keyed, cfg.split_seed, reporter)
        write_results_csv(store, folder)
        counts = store.counts()
        return StudyOutcome(out, counts, ran=len(todo), skipped=skipped)
    finally:
        reporter.close()
        folder.close()


def _measure_finished(out: Path, store: ResultsStore, keyed: list[Any], split_seed: int,
                      reporter: ProgressReporter) -> None:
    """``--deployment``: the study's finished trials that lack the deployment numbers (done
    before the flag was given) are measured from their checkpoints (lightlayers.deploy.backfill)."""
    from lightlayers.deploy.backfill import measure_finished, missing

    data = {dk: ds for _, ds, dk in keyed}
    rows = missing(store.trials(status="done", keys=[sp.key(dk) for sp, _, dk in keyed]))
    if not rows:
        return
    reporter.log(f"measuring the deployment numbers of {len(rows)} trial(s) finished without "
                 "them, from their checkpoints")
    done = measure_finished(out, store, rows, lambda row: data[row["data"]], split_seed,
                            reporter.steps("deployment numbers", len(rows)))
    for line in done.failed:  # a warning: shown under --quiet too, the trial stays as it was
        warnings.warn(f"deployment numbers not measured for {line}", stacklevel=2)


def _trackers(cfg: StudyConfig, folder: RunFolder) -> Any:
    """The study's experiment trackers (``log``), which write nothing until a trial is done."""
    from lightlayers.trackers import StudyContext, TrackerSet

    return TrackerSet(cfg.log, StudyContext(folder.path, cfg.to_dict(), folder.claim))


def _check_sizes(sizes: Any, ds: Dataset, seed: int, log: Any) -> None:
    """Every training size drawn once before any trial trains: a size the data cannot give
    is an error now, and each size says how many images it holds."""
    if len(sizes) == 1 and sizes[0].full:
        return
    from lightlayers.data.subsets import SubsetError, draw_subset

    for size in sizes:
        try:
            sub = draw_subset(ds, size, seed)
        except SubsetError as e:
            raise ConfigError(str(e)) from None
        log(f"train size {size.label}: {len(sub.members)} of {sub.available} training images "
            f"({', '.join(f'{c} {n}' for c, n in zip(ds.classes, sub.per_class, strict=True))})")


def _tuned_source(tuned: dict[str, Any]) -> dict[str, Any]:
    if not tuned:
        return {"kind": "fixed"}
    first = next(iter(tuned.values()))
    return {"kind": "tuned", **{k: first[k] for k in ("folder", "data_fingerprint", "budget",
                                                      "folds", "objective")},
            # Each model's decisions on the folds (tune --decide), or none made for any.
            "decisions_made": all(t.get("decisions_made") for t in tuned.values())}


def _done_line(spec: TrialSpec, m: dict[str, Any]) -> str:
    auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
    return (f"  done {spec.label}: acc {m['accuracy']:.4f} auc {auc} "
            f"({m['total_time_s']:.1f}s, {m['epoch_time_s']:.2f}s/epoch)"
            + ("  [collapsed: one class predicted]" if m["collapsed"] else ""))


def _env(device: torch.device) -> dict[str, Any]:
    from lightlayers.environment import environment

    return environment(device)
