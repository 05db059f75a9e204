"""Knowledge distillation: a finished run's models as the teacher of a new trial.

``teacher: RUN_DIR[:MODEL[+MODEL...]]`` names the finished trials whose checkpoints teach:
every finished seed of the named models (of the run's only model when none is named). Their
softened class probabilities, averaged over all of them, are the soft target of each
training batch (Hinton et al. 2015): the loss is

    (1 - w) * CE(student, labels) + w * T^2 * KL(teacher_T || student_T)

with ``T = distill_temperature`` and ``w = distill_weight``. The teacher sees exactly the
training batches the student sees, augmentation included, and nothing else: not validation,
not test. It must have been trained on the same data (by content) and the same inputs (size,
channels, normalisation) as the student, which a run folder records; anything else is
refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightlayers.models.interface import ClassifierBase


class TeacherError(ValueError):
    """The teacher cannot teach this trial; the message says why and what to do."""


def parse_teacher(spec: str) -> tuple[Path, list[str] | None]:
    """``RUN_DIR[:MODEL[+MODEL...]]`` -> (run folder, models or None)."""
    text = spec.strip()
    run, sep, models = text.rpartition(":") if ":" in text else (text, "", "")
    if not sep or not models or "/" in models:  # a ':' inside the path itself
        return Path(text), None
    names = [m.strip() for m in models.split("+") if m.strip()]
    return Path(run), names or None


@dataclass
class Teacher:
    """The teaching models and what the trial records about them."""

    models: list[ClassifierBase]
    record: dict[str, Any]

    @torch.no_grad()
    def soft_targets(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """Mean over the teaching models of softmax(logits / T), float32."""
        probs = [torch.softmax(m(_channels(x, m.model_info.in_chans)).float() / temperature,
                               dim=1) for m in self.models]
        return torch.stack(probs).mean(0)


def _channels(x: torch.Tensor, wanted: int) -> torch.Tensor:
    """A grey batch as the teacher takes it: the student's copy of the grey channel into 3
    channels undone, or done (see load_teacher: only grey data gets here with a mismatch)."""
    if x.shape[1] == wanted:
        return x
    return x[:, :1] if wanted == 1 else x[:, :1].expand(-1, wanted, -1, -1)


def checkpoint_problem(spec: str) -> str | None:
    """Why a checkpoint of the trials ``spec`` names is not the file its trial wrote (see
    :class:`lightlayers.runfolder.trials.FinishedTrial`), or None. Checked when the study is
    configured, so that a replaced teacher is refused before anything trains; whatever else
    keeps these trials from teaching is said by the trial that loads them
    (:func:`load_teacher`)."""
    from lightlayers.runfolder.errors import CheckpointMismatchError, RunFolderError
    from lightlayers.runfolder.trials import find_trials

    run_dir, models = parse_teacher(spec)
    try:
        wanted: list[str | None] = list(models) if models else [None]
        trials = [t for m in wanted for t in find_trials(run_dir, m)]
    except RunFolderError:
        return None
    for t in trials:
        try:
            t.checkpoint  # noqa: B018  (the property verifies the file)
        except CheckpointMismatchError as e:
            return str(e)
        except RunFolderError:
            continue
    return None


def load_teacher(spec: str, fingerprint: dict[str, Any], image_size: int,
                 loader: dict[str, Any], num_classes: int, device: torch.device,
                 data_chans: int) -> Teacher:
    """The teacher named by ``spec`` for a student trained on data of ``fingerprint``, decoded
    at ``image_size``, fed by a loader with options ``loader`` (mean, std, channels, crop).
    On grey data (``data_chans`` 1) the teacher may take 1 or 3 channels whatever the
    student takes: the grey channel is the same image either way."""
    from lightlayers.runfolder.errors import RunFolderError
    from lightlayers.runfolder.trials import find_trials

    run_dir, models = parse_teacher(spec)
    try:
        trials = find_trials(run_dir)
        names = sorted({t.model_name for t in trials})
        if models is None:
            if len(names) > 1:
                raise TeacherError(
                    f"teacher {spec}: the run has several models ({', '.join(names)}); name "
                    f"them, e.g. teacher: {run_dir}:{names[0]} (several: A+B)")
            models = names
        chosen = [t for m in models for t in find_trials(run_dir, m)]
    except RunFolderError as e:
        raise TeacherError(f"teacher {spec}: {e}") from e
    recorded = chosen[0].meta.get("data_fingerprint") or {}
    from lightlayers.fingerprint import same_data

    if not same_data(recorded, fingerprint):
        raise TeacherError(
            f"teacher {spec} was trained on other data than this study's; distill from a run "
            "on the same data (by content)")
    built = []
    for t in chosen:
        try:
            meta = t.checkpoint_metadata()
        except RunFolderError as e:
            raise TeacherError(f"teacher {spec}: {e}") from e
        size = int(meta.get("image_size") or t.extra.get("image_size") or 0)
        theirs = dict(t.extra.get("loader") or {})
        if data_chans == 1:  # channel copies of a grey image are adapted (see _channels)
            theirs.pop("out_chans", None)
            ours = {k: v for k, v in loader.items() if k != "out_chans"}
        else:
            ours = loader
        if size != image_size or theirs != ours:
            raise TeacherError(
                f"teacher {t.label} of {run_dir} saw other inputs ({size} px, loader {theirs}) "
                f"than this trial ({image_size} px, loader {loader}); distill from a model "
                "trained at the same size with the same channels and normalisation")
        try:
            model = t.build_model()
        except RunFolderError as e:
            raise TeacherError(f"teacher {spec}: {e}") from e
        if model.model_info.num_classes != num_classes:
            raise TeacherError(f"teacher {t.label} has {model.model_info.num_classes} classes, "
                               f"this study {num_classes}")
        built.append(model.to(device).eval())
    record = {"spec": spec, "run": str(run_dir.resolve()),
              "trials": [str(t.row.get("key")) for t in chosen],
              "checkpoint_sha256": [t.checkpoint_sha256 for t in chosen]}
    return Teacher(built, record)
