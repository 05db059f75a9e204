"""The ``mlflow`` tracker: one MLflow run per trial, in one experiment per study.

Where: ``MLFLOW_TRACKING_URI`` when it is set (a server, a database), else a SQLite store in
the run folder, ``RUN/mlruns/mlflow.db``, with the artifacts beside it in
``RUN/mlruns/artifacts`` (MLflow's plain-folder store refuses new use from MLflow 3 on). The
experiment is ``MLFLOW_EXPERIMENT_NAME`` when set, else the run folder's name. Each run holds
the trial's settings (params), its history (metrics by epoch, as ``step``), its test metrics
(step 0), tags naming the trial and the run folder, and as artifacts its checkpoint and its
record (``trial.json``). After the study, the report's files go to one more run of the
experiment, named ``report``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lightlayers.trackers.base import StudyContext, TrialRecord

# MLflow's limits for one log_batch call, and for a param value in its older servers.
_BATCH_METRICS, _BATCH_PARAMS, _PARAM_CHARS = 1000, 100, 500


def local_store(root: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the SQLite store in folder ``root``."""
    return f"sqlite:///{root.absolute() / 'mlflow.db'}", (root.absolute() / "artifacts").as_uri()


class MlflowTracker:
    def __init__(self, ctx: StudyContext) -> None:
        from mlflow.tracking import MlflowClient

        self.ctx = ctx
        uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        artifacts: str | None = None
        if not uri:
            root = ctx.claim("mlruns")
            root.mkdir(exist_ok=True)
            uri, artifacts = local_store(root)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or ctx.name
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            # A database or server of the user's: its own artifact root, which MLflow takes
            # from the server, or ./mlruns of the working folder for a database URI.
            self.experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        elif exp.lifecycle_stage != "active":
            raise RuntimeError(f"the MLflow experiment {name!r} at {uri} is deleted; restore it "
                               "(mlflow experiments restore) or set MLFLOW_EXPERIMENT_NAME")
        else:
            self.experiment_id = exp.experiment_id

    def log_trial(self, trial: TrialRecord) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        took = trial.metrics.get("total_time_s")
        run = self.client.create_run(
            self.experiment_id, run_name=trial.name,
            start_time=now - int(took * 1000) if took is not None else now,
            tags={"lightlayers.trial": trial.key, "lightlayers.model": trial.model,
                  "lightlayers.seed": str(trial.seed), "lightlayers.protocol": trial.protocol,
                  "lightlayers.train_size": trial.train_size or "all",
                  "lightlayers.run_dir": str(self.ctx.run_dir)})
        rid = run.info.run_id
        try:
            params = [Param(k, str(v)[:_PARAM_CHARS]) for k, v in trial.params.items()]
            for i in range(0, len(params), _BATCH_PARAMS):
                self.client.log_batch(rid, params=params[i:i + _BATCH_PARAMS])
            metrics = [Metric(name, value, now, step)
                       for step, name, value in trial.epoch_metrics()]
            metrics += [Metric(name, value, now, 0) for name, value in trial.metrics.items()]
            for i in range(0, len(metrics), _BATCH_METRICS):
                self.client.log_batch(rid, metrics=metrics[i:i + _BATCH_METRICS])
            for folder, path in trial.files.items():
                if path.is_file():  # a Ray cluster's checkpoint may live on another machine
                    self.client.log_artifact(rid, str(path), artifact_path=folder)
            with tempfile.TemporaryDirectory(prefix="lightlayers-mlflow-") as tmp:
                record = Path(tmp) / "trial.json"
                record.write_text(json.dumps(trial.record, indent=1, allow_nan=False) + "\n",
                                  encoding="utf-8")
                self.client.log_artifact(rid, str(record))
        except BaseException:
            self.client.set_terminated(rid, "FAILED")
            raise
        self.client.set_terminated(rid, "FINISHED")

    def log_report(self, report_dir: Path) -> None:
        """The study's report as the artifacts of one run named ``report``, the same run each
        time the report is written again (found by its tags), its files replaced."""
        folder = str(self.ctx.run_dir)
        found = [r for r in self.client.search_runs(
                     [self.experiment_id], "tags.`lightlayers.kind` = 'report'")
                 if r.data.tags.get("lightlayers.run_dir") == folder]
        if found:
            rid = found[0].info.run_id
        else:
            rid = self.client.create_run(
                self.experiment_id, run_name="report",
                tags={"lightlayers.kind": "report", "lightlayers.run_dir": folder}).info.run_id
        root = Path(report_dir)
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            # The folder's manifest and temporary files are the tool's bookkeeping; links are
            # never followed.
            if any(p.startswith(".") for p in rel.parts) or path.is_symlink() \
                    or not path.is_file():
                continue
            parent = Path("report", *rel.parts[:-1]).as_posix()
            self.client.log_artifact(rid, str(path), artifact_path=parent)
        self.client.set_terminated(rid, "FINISHED")

    def close(self) -> None:
        pass


def create(ctx: StudyContext) -> Any:
    return MlflowTracker(ctx)
