"""The finished trials of a run folder: find them, choose one on validation, verify and read
its checkpoint, rebuild its model and reload its data.

Every reader of a checkpoint (export, predict, distillation, the report's Grad-CAM figure)
gets it through :attr:`FinishedTrial.checkpoint`, which first checks that the file is the one
the trial wrote: its SHA-256 against the one the trial recorded (trials recorded before
checkpoints were hashed have none) and the trial key in its metadata against the trial's own.

Choosing: among the finished trials (optionally of one model and/or seed), the best on the
validation score of the epoch each trial kept: ``val_auc`` when every candidate recorded one
(binary tasks), else ``val_acc``; ties go to the lower ``val_loss``, then to the order of the
study. Test numbers are never looked at to choose.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightlayers.runfolder.errors import CheckpointMismatchError, RunFolderError

__all__ = ["CheckpointMismatchError", "FinishedTrial", "choose_trial", "find_trials"]

# Checkpoints found to be what their trial wrote, by the file's identity (path, inode, size,
# mtime, ctime) and the trial's record: each file is read and hashed once per process.
_VERIFIED: dict[tuple[Any, ...], dict[str, str]] = {}


@dataclass
class FinishedTrial:
    """One finished trial of a run folder, as the results store recorded it."""

    run_dir: Path
    row: dict[str, Any]
    history: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def model_name(self) -> str:
        return str(self.row["model"])

    @property
    def seed(self) -> int:
        return int(self.row["seed"])

    @property
    def label(self) -> str:
        return f"{self.model_name} seed {self.seed}"

    @property
    def extra(self) -> dict[str, Any]:
        return self.row.get("extra") or {}

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config") or {}

    @property
    def checkpoint(self) -> Path:
        """The trial's checkpoint file, verified to be the one the trial wrote."""
        path = self._checkpoint_path()
        self._verified_metadata(path)
        return path

    @property
    def checkpoint_sha256(self) -> str:
        """The SHA-256 of the trial's (verified) checkpoint file."""
        from lightlayers.runfolder.checkpoint import checkpoint_sha256

        return checkpoint_sha256(self.checkpoint)

    def _checkpoint_path(self) -> Path:
        rel = self.row.get("checkpoint")
        if not rel:
            raise RunFolderError(f"{self.run_dir}: trial {self.label} recorded no checkpoint; "
                              "rerun it with `lightlayers run` to have one")
        path = self.run_dir / rel
        if not path.is_file():
            raise RunFolderError(f"{path} (the checkpoint of {self.label}) is missing; restore it "
                              "or rerun the trial into a new run folder")
        return path

    def _verified_metadata(self, path: Path) -> dict[str, str]:
        """The safetensors metadata of ``path`` once the file is checked against this trial's
        record, or a :class:`CheckpointMismatchError` naming the file and the trial."""
        from lightlayers.runfolder.checkpoint import checkpoint_sha256

        recorded = self.extra.get("checkpoint_sha256")
        key = str(self.row.get("key") or "")
        st = path.stat()
        ident = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                 st.st_ctime_ns, recorded, key)
        if ident in _VERIFIED:
            return _VERIFIED[ident]
        problems = []
        if recorded:
            found = checkpoint_sha256(path)
            if found != recorded:
                problems.append(f"SHA-256 {recorded[:12]}... recorded, {found[:12]}... found")
        try:
            meta = _read_metadata(path)
        except Exception as e:  # safetensors raises its own error types
            if not problems:
                raise RunFolderError(f"{path}: cannot read the checkpoint ({_first_line(e)}); "
                                  "restore it or rerun the trial") from e
            meta = None
            problems.append("it is no readable safetensors file")
        if meta is not None and key and meta.get("trial") != key:
            named = meta.get("trial")
            problems.append(f"its metadata names trial {named}" if named
                            else "its metadata names no trial")
        if problems:
            raise CheckpointMismatchError(
                f"{path} does not match what trial {self.label} wrote "
                f"({'; '.join(problems)}); restore the file or rerun that trial")
        assert meta is not None
        _VERIFIED[ident] = meta
        return meta

    def selected_epoch(self) -> dict[str, Any]:
        """The history row of the epoch whose weights the trial kept (its best_epoch)."""
        best = self.row.get("best_epoch")
        for h in self.history:
            if h.get("epoch") == best:
                return h
        return self.history[-1] if self.history else {}

    # --- the model --------------------------------------------------------------------------
    def checkpoint_metadata(self) -> dict[str, str]:
        return dict(self._verified_metadata(self._checkpoint_path()))

    def build_model(self) -> Any:
        """The trial's model with its checkpoint's weights, in eval mode on the CPU.

        A transfer model is rebuilt from the checkpoint alone (no pretrained weights are
        fetched): the backbone's state comes from the checkpoint, with the architecture its
        weights were trained in (pretrained or random).
        """
        from safetensors.torch import load_file

        from lightlayers.models import create_model, model_info

        meta = self.checkpoint_metadata()
        state = load_file(str(self.checkpoint))
        classes = json.loads(meta.get("classes", "[]")) or self.classes()
        in_chans = int(meta.get("in_chans", self.extra.get("in_chans", 0)) or 0) or None
        options = dict((self.row.get("config") or {}).get("model_options") or {})
        try:
            takes_weights = bool(model_info(self.model_name).extra.get("takes_weights"))
        except ValueError as e:
            raise RunFolderError(f"{self.run_dir}: {e}") from e
        if takes_weights:
            from lightlayers.models.weights import ResolvedWeights

            label = str(self.extra.get("weights") or options.get("weights") or "none")
            backbone = {k.removeprefix("backbone."): v for k, v in state.items()
                        if k.startswith("backbone.")}
            pretrained = label.lower() != "none"
            options["weights"] = ResolvedWeights(label, backbone if pretrained else None)
        try:
            model = create_model(self.model_name, num_classes=len(classes), in_chans=in_chans,
                                 **options)
            model.load_state_dict(state, strict=True)
        except (ValueError, RuntimeError) as e:
            raise RunFolderError(f"{self.checkpoint} does not fit {self.model_name} as this "
                              f"lightlayers builds it ({str(e).splitlines()[0]}); export it "
                              "with the lightlayers version that trained it") from e
        return model.float().eval()

    def classes(self) -> list[str]:
        data = self.meta.get("data") or {}
        classes = data.get("classes") or (self.meta.get("data_fingerprint") or {}).get("classes")
        if not classes:
            raise RunFolderError(f"{self.run_dir}: the results store names no classes")
        return list(classes)

    def recorded_predictions(self) -> dict[str, Any] | None:
        """The trial's recorded test probabilities and labels (None when it stored none)."""
        from lightlayers.runfolder.store import ResultsStore, StoreError

        try:
            with ResultsStore(self.run_dir / "results.db", create=False,
                              readonly=True) as store:
                return store.predictions(int(self.row["id"]))
        except (StoreError, KeyError, ValueError):
            return None

    def chosen_on(self) -> dict[str, Any]:
        h = self.selected_epoch()
        return {k: h.get(k) for k in ("epoch", "val_acc", "val_loss", "val_auc")
                if h.get(k) is not None}

    # --- the data ---------------------------------------------------------------------------
    def load_data(self, data: str | None = None, progress: bool = False,
                  cache: dict[Any, Any] | None = None) -> Any:
        """The run's dataset, decoded as this trial's model saw it, checked to be the data
        the run was made with (by content, whatever the path). ``cache``: datasets already
        loaded for other trials (a report's models share one decode)."""
        from lightlayers.fingerprint import data_fingerprint

        cfg = self.config
        source = data or cfg.get("data")
        if not source:
            raise RunFolderError(f"{self.run_dir}: the results store does not say which data the "
                              "run used; pass --data PATH")
        side = self.checkpoint_metadata().get("image_size") or self.extra.get("image_size")
        if side is None:
            raise RunFolderError(f"{self.run_dir}: {self.label} records no image size; rerun it "
                              "with `lightlayers run` into a new folder")
        size = int(side)
        key = (source, size, cfg.get("in_chans"), cfg.get("resize") or "stretch",
               cfg.get("val_fraction", 0.1), cfg.get("split_seed", 0),
               cfg.get("on_bad_image") or "error", bool(cfg.get("allow_missing_classes", False)))
        if cache is not None and key in cache:
            ds, now = cache[key]
        else:
            ds = self._decode(source, size, cfg, data, progress)
            now = data_fingerprint(ds)
            if cache is not None:
                cache[key] = ds, now
        # Bound by content (the fingerprint leaves out the decode size and the path's
        # spelling), as `lightlayers run` binds the folder; the trial's data key names the
        # decode size the study used, which may have been the data's own (size None).
        recorded = self.meta.get("data_fingerprint") or {}
        from lightlayers.fingerprint import same_data

        if recorded and not same_data(recorded, now):
            from lightlayers.fingerprint import _data_change

            raise RunFolderError(
                f"{source} is not the data {self.run_dir} was made with "
                f"({_data_change(recorded, now)}); pass --data with the run's data")
        return ds

    def _decode(self, source: str, size: int, cfg: dict[str, Any], data: str | None,
                progress: bool) -> Any:
        from lightlayers.data import DataError, DuplicateImagesWarning, load_dataset

        try:
            with warnings.catch_warnings():
                # `lightlayers run` told about duplicates when it loaded this data.
                warnings.simplefilter("ignore", DuplicateImagesWarning)
                ds = load_dataset(
                    source, size=size, in_chans=cfg.get("in_chans"),
                    resize=cfg.get("resize") or "stretch",
                    val_fraction=cfg.get("val_fraction", 0.1), seed=cfg.get("split_seed", 0),
                    on_bad_image=cfg.get("on_bad_image") or "error",
                    allow_missing_classes=bool(cfg.get("allow_missing_classes", False)),
                    progress=progress)
        except DataError as e:
            hint = "" if data else " (the run's own data; pass --data PATH where it moved)"
            raise RunFolderError(f"{e}{hint}") from e
        return ds


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _score(t: FinishedTrial, key: str) -> tuple[float, float]:
    h = t.selected_epoch()
    value = h.get(key)
    loss = h.get("val_loss")
    value = -math.inf if value is None or not math.isfinite(value) else float(value)
    loss = math.inf if loss is None or not math.isfinite(loss) else float(loss)
    return value, -loss


def find_trials(run_dir: str | Path, model: str | None = None,
                seed: int | None = None) -> list[FinishedTrial]:
    """The finished trials of ``run_dir`` (of ``model`` and ``seed`` when given)."""
    from lightlayers.runfolder.store import ResultsStore, StoreError

    run_dir = Path(run_dir)
    if run_dir.name == "results.db" and run_dir.is_file():
        run_dir = run_dir.parent
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist; give a folder written by "
                          "`lightlayers run`")
    if not (run_dir / "results.db").is_file():
        raise RunFolderError(f"{run_dir} holds no results.db: not a run folder; give a folder "
                          "written by `lightlayers run`")
    try:
        with ResultsStore(run_dir / "results.db", create=False) as store:
            rows = store.trials(status="done")
            meta = store.meta()
            histories = {r["id"]: store.history(r["id"]) for r in rows}
    except StoreError as e:
        raise RunFolderError(str(e)) from e
    if not rows:
        raise RunFolderError(f"{run_dir} holds no finished trial; finish its study with "
                          "`lightlayers run` first")
    from lightlayers.data.subsets import main_size, train_size

    # A learning-curve study: the trials of the size its tables show (the whole training
    # split when it has it), as its report compares them; smaller sizes are its curve.
    shown = main_size(rows)
    rows = [r for r in rows if train_size(r) == shown]
    trials = [FinishedTrial(run_dir, r, histories[r["id"]], meta) for r in rows]
    models = sorted({t.model_name for t in trials})
    if model is not None:
        trials = [t for t in trials if t.model_name == model]
        if not trials:
            raise RunFolderError(f"{run_dir} has no finished trial of {model}; its models: "
                              f"{', '.join(models)}")
    if seed is not None:
        seeds = sorted({t.seed for t in trials})
        trials = [t for t in trials if t.seed == seed]
        if not trials:
            raise RunFolderError(f"{run_dir} has no finished trial with seed {seed}"
                              + (f" of {model}" if model else "")
                              + f"; finished seeds: {', '.join(map(str, seeds))}")
    return trials


def choose_trial(run_dir: str | Path, model: str | None = None,
                 seed: int | None = None) -> tuple[FinishedTrial, str, int]:
    """The best trial on validation (see the module docstring), the validation key it was
    chosen on, and the number of candidates."""
    trials = find_trials(run_dir, model, seed)
    key = "val_auc" if all(t.selected_epoch().get("val_auc") is not None for t in trials) \
        else "val_acc"
    best = max(trials, key=lambda t: _score(t, key))  # max keeps the first of equals
    return best, key, len(trials)
