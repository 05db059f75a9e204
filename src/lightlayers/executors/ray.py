"""Run a study's trials as Ray tasks: on a local Ray instance or on an existing cluster.

The driver (``lightlayers run``) stays the only writer of the run folder. Each trial is one Ray
task that gets the dataset from Ray's object store (or loads it from shared storage into the
node's own cache, for large sets), trains with ``trial.run_trial`` exactly as the local executor
does, and returns the result (a :class:`lightlayers.trial_result.TrialResult`, pickled)
together with the checkpoint's bytes; the driver writes the checkpoint and records the result.
See docs/ray.md.

Example::

    cfg = load_config("configs/cpu-study.yaml", executor="ray", cpus_per_trial=2)
    run_study(cfg)
"""

from __future__ import annotations

import logging
import math
import socket
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import torch

from lightlayers.config import ConfigError, Protocol, StudyConfig, config_from_dict
from lightlayers.data import DataError, Dataset, load_dataset
from lightlayers.data.subsets import base_key
from lightlayers.executors import RayOptions
from lightlayers.executors.base import Task, TaskOutcome
from lightlayers.fingerprint import data_key
from lightlayers.models.weights import ResolvedWeights
from lightlayers.outputs import write_atomic
from lightlayers.progress import ProgressReporter
from lightlayers.runtime import resolve_device, resolve_threads
from lightlayers.scratch import scratch_dir, sweep
from lightlayers.signals import reclaim_sigterm
from lightlayers.trial import TrialSpec, data_size_for, failure, run_trial
from lightlayers.trial_result import TrialResult

INSTALL_HINT = "pip install 'lightlayers[ray]'"
# Decoded arrays up to this size go through Ray's object store (by default 30% of a node's
# memory); larger sets are loaded by each node from shared storage into its own cache instead.
OBJECT_STORE_MAX_BYTES = 2 * 1024**3
# Failures of the machinery rather than of the trial: the trial is resubmitted (bounded by
# max_retries). Other Ray errors (e.g. lightlayers missing on a node) would fail again.
_RETRYABLE = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ObjectLostError")

TrialFn = Callable[..., TrialResult]


class TaskReturn(TypedDict, total=False):
    """What one Ray task sends back: ``result`` (with ``extra["node"]``) and the checkpoint's
    bytes (``checkpoint_bytes``, which the driver writes to ``result.checkpoint``) for a
    finished trial; ``failure`` (:func:`lightlayers.trial.failure`'s dict with ``node``) for a
    failed one."""

    result: TrialResult
    checkpoint_bytes: bytes
    failure: dict[str, Any]


def import_ray() -> Any:
    """Ray, or a ConfigError with the install command (Ray is an optional extra)."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError(
            f"the ray executor needs Ray, which is not installed: {INSTALL_HINT} "
            "(or run with --executor local)"
        ) from e
    return ray


@dataclass(frozen=True)
class DataOnNode:
    """How a worker loads the data itself: the same ``load_dataset`` call as the driver.

    The source must be visible on every node (shared storage, or a short name each node can
    download); each node decodes it once into its own cache (``LIGHTLAYERS_CACHE``).
    """

    source: str
    size: int | None
    in_chans: int | None
    resize: str
    val_fraction: float
    split_seed: int
    data_key: str
    on_bad_image: str = "error"
    allow_missing_classes: bool = False

    def load(self) -> Dataset:
        ds = load_dataset(self.source, size=self.size, in_chans=self.in_chans,
                          resize=self.resize, val_fraction=self.val_fraction,
                          seed=self.split_seed, progress=False, on_bad_image=self.on_bad_image,
                          allow_missing_classes=self.allow_missing_classes)
        if data_key(ds) != self.data_key:
            raise DataError(
                f"{self.source} on node {socket.gethostname()} decodes to {data_key(ds)}, the "
                f"driver's is {self.data_key}: every node must see the same files"
            )
        return ds


def trial_task(spec: TrialSpec, data: Dataset | DataOnNode, key: str, cfg_values: dict[str, Any],
               trial_fn: TrialFn | None = None,
               weights: ResolvedWeights | None = None) -> TaskReturn:
    """The body of one Ray task: a :class:`TaskReturn` with the result or the failure; never
    raises.

    A trial's own exception is returned as a failure, not raised, so Ray does not retry it (it
    would fail the same way); only a dying worker or node makes the driver resubmit a trial.
    ``weights``: the driver's resolved pretrained weights (workers never download any).
    """
    node = socket.gethostname()
    try:
        # The config travels as a plain dict and is validated again here (another node may run
        # another lightlayers version).
        cfg = config_from_dict(cfg_values)
        # The driver resolved the thread count (runtime.resolve_threads); Ray's own setting
        # (OMP_NUM_THREADS = the task's CPUs) is only applied at worker start-up.
        torch.set_num_threads(cfg.threads or cfg.executor_options.get("cpus_per_trial") or 1)
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        ds = data.load() if isinstance(data, DataOnNode) else data
        # Workers may run on other machines: the checkpoint is written to a scratch folder
        # here and its bytes go back to the driver, which writes the run folder. The folder
        # is named by this worker's pid: a worker killed by force (a cancelled trial) leaves
        # it to the node's next trial, which removes it.
        with scratch_dir("trial") as scratch:
            res = (trial_fn or run_trial)(spec, ds, key, cfg, cfg.resolved_protocol(), device,
                                          scratch, None, weights=weights)
            checkpoint = (scratch / res.checkpoint).read_bytes()
        return {"result": res.with_extra(node=node), "checkpoint_bytes": checkpoint}
    except Exception as e:  # recorded with the trial; the study goes on
        return {"failure": {**failure(e), "node": node}}


class RayExecutor:
    """Runs each trial as a Ray task with ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs.

    At most as many trials as the cluster has room for are handed to Ray at a time, so a trial
    is marked running when it can actually start. Results are yielded as they arrive.

    Args:
        cfg, protocol, out, reporter: as for :class:`lightlayers.executors.local.LocalExecutor`.
        data_transfer: "object_store" puts each dataset into Ray's object store once;
            "shared_path" has each worker load it from ``cfg.data`` (which every node must
            see); "auto" picks the object store up to ``OBJECT_STORE_MAX_BYTES``.
        trial_fn: what a worker runs instead of ``trial.run_trial`` (same signature); for
            tests that need a worker to crash.
    """

    def __init__(self, cfg: StudyConfig, protocol: Protocol, out: Path,
                 reporter: ProgressReporter | None = None, *,
                 data_transfer: Literal["auto", "object_store", "shared_path"] = "auto",
                 trial_fn: TrialFn | None = None) -> None:
        self.ray = import_ray()  # fail before any data is loaded
        if data_transfer not in ("auto", "object_store", "shared_path"):
            raise ValueError(f"data_transfer must be auto, object_store or shared_path, "
                             f"got {data_transfer!r}")
        self.cfg, self.protocol, self.out = resolve_threads(cfg), protocol, out
        self.opts: RayOptions = self.cfg.executor_settings()
        self.reporter = reporter
        self.data_transfer = data_transfer
        self.trial_fn = trial_fn

    # --- connection -----------------------------------------------------------------------
    def _connect(self) -> bool:
        """Join the cluster or start a local instance; True when this call started Ray."""
        ray = self.ray
        if ray.is_initialized():  # e.g. a notebook or a test that set Ray up itself
            return False
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.opts.ray_address is None:
                ray.init(include_dashboard=False, **quiet)
                # A local instance installs its own SIGTERM handler (exit 1, no message, no
                # trial reset); SIGTERM stays Ctrl-C, whose path below also stops Ray.
                reclaim_sigterm()
            else:
                ray.init(address=self.opts.ray_address, **quiet)
        except ConnectionError as e:
            raise ConfigError(
                f"cannot reach a Ray cluster at {self.opts.ray_address!r}: {e}. Start one with "
                "`ray start --head` or leave out --ray-address for a local instance"
            ) from e
        return True

    def _slots(self, started_here: bool) -> int:
        """How many trials fit on the cluster at once."""
        res = self.ray.cluster_resources()
        cpus, gpus = self.opts.cpus_per_trial, self.opts.gpus_per_trial
        slots = int(res.get("CPU", 0) // cpus)
        if gpus > 0:
            # A small tolerance: Ray counts GPU fractions in steps of 1e-4.
            slots = min(slots, math.floor(res.get("GPU", 0) / gpus + 1e-6))
        if slots < 1:
            msg = (f"one trial asks for {cpus} CPU(s) and {gpus:g} GPU(s); the Ray cluster has "
                   f"{res.get('CPU', 0):g} CPU(s) and {res.get('GPU', 0):g} GPU(s)")
            if started_here:  # a local instance never grows
                raise ConfigError(f"{msg}: lower --cpus-per-trial / --gpus-per-trial")
            self._log(f"{msg}; waiting for Ray to find room (autoscaling)")
            slots = 1
        return slots

    def _log(self, text: str) -> None:
        if self.reporter is not None:
            self.reporter.log(text)

    # --- data -----------------------------------------------------------------------------
    def _data_arg(self, task: Task, cache: dict[int, Any]) -> Any:
        """The object-store reference (put once per dataset) or a :class:`DataOnNode`."""
        ds = task.data
        if id(ds) in cache:
            return cache[id(ds)]
        nbytes = sum(s.images.nbytes + s.labels.nbytes for s in ds.splits.values())
        mode = self.data_transfer
        if mode == "auto":
            mode = "object_store" if nbytes <= OBJECT_STORE_MAX_BYTES else "shared_path"
        if mode == "object_store":
            arg: Any = self.ray.put(ds)
            self._log(f"data {task.data_key}: {nbytes / 1e6:.1f} MB sent to Ray's object store")
        else:
            src = Path(self.cfg.data).expanduser()
            # Workers do not run in this folder: a relative path must be made absolute.
            source = str(src.resolve()) if src.exists() else self.cfg.data
            arg = DataOnNode(source, data_size_for(self.cfg, task.spec.model), self.cfg.in_chans,
                             self.cfg.resize, self.cfg.val_fraction, self.cfg.split_seed,
                             # The decoded data's own key: a trial's training size is drawn
                             # by the trial itself (trial.run_trial).
                             base_key(task.data_key), self.cfg.on_bad_image,
                             self.cfg.allow_missing_classes)
            self._log(f"data {task.data_key}: {nbytes / 1e6:.1f} MB, each node loads {source} "
                      "into its own cache")
        cache[id(ds)] = arg
        return arg

    # --- the loop -------------------------------------------------------------------------
    def run(self, tasks: list[Task], start: Callable[[Task], None]) -> Iterator[TaskOutcome]:
        if not tasks:
            return
        sweep("trial")  # what workers of an earlier, killed study left on this machine
        started_here = self._connect()
        try:
            yield from self._run(tasks, start, started_here)
        finally:
            if started_here:
                self.ray.shutdown()
                # This machine's workers have ended, cancelled ones too, which could not
                # remove their scratch folders.
                sweep("trial")

    def _run(self, tasks: list[Task], start: Callable[[Task], None],
             started_here: bool) -> Iterator[TaskOutcome]:
        ray = self.ray
        # Retries are counted here (max_retries=0 in Ray) so that each one is logged and the
        # number is recorded with the trial.
        remote = ray.remote(trial_task).options(
            num_cpus=self.opts.cpus_per_trial, num_gpus=self.opts.gpus_per_trial, max_retries=0)
        retryable = tuple(getattr(ray.exceptions, n) for n in _RETRYABLE
                          if hasattr(ray.exceptions, n))
        cfg_values = self.cfg.to_dict()
        data_refs: dict[int, Any] = {}
        weights_refs: dict[str, Any] = {}  # model -> its resolved weights, put once
        queue = deque(tasks)
        running: dict[Any, tuple[Task, int]] = {}  # ObjectRef -> (task, retries so far)
        total, handed = len(tasks), 0

        def submit(task: Task, retries: int) -> None:
            weights = None
            if task.weights is not None:
                if task.spec.model not in weights_refs:
                    weights_refs[task.spec.model] = ray.put(task.weights)
                weights = weights_refs[task.spec.model]
            ref = remote.remote(task.spec, self._data_arg(task, data_refs), task.data_key,
                                cfg_values, self.trial_fn, weights)
            running[ref] = (task, retries)

        self._log(f"Ray: {self._slots(started_here)} trial(s) at a time, "
                  f"{self.opts.cpus_per_trial} CPU(s) and {self.opts.gpus_per_trial:g} GPU(s) each")
        try:
            while queue or running:
                if queue:
                    free = self._slots(started_here) - len(running)
                    while queue and free > 0:
                        task = queue.popleft()
                        self._data_arg(task, data_refs)  # put once, before its first trial
                        start(task)
                        handed += 1
                        self._log(f"[{handed}/{total}] {task.spec.label}: "
                                  "started on Ray")
                        submit(task, 0)
                        free -= 1
                # A timeout keeps Ctrl-C responsive while the driver waits.
                done, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if not done:
                    continue
                task, retries = running.pop(done[0])
                try:
                    out: TaskReturn = ray.get(done[0])
                except retryable as e:
                    if retries < self.opts.max_retries:
                        self._log(f"  {task.spec.label}: {type(e).__name__}"
                                  f"; retry {retries + 1}/{self.opts.max_retries}")
                        submit(task, retries + 1)
                        continue
                    yield TaskOutcome(task, None, {**failure(e), "retries": retries})
                    continue
                except ray.exceptions.RayError as e:
                    yield TaskOutcome(task, None, {**failure(e), "retries": retries})
                    continue
                if "failure" in out:
                    yield TaskOutcome(task, None, {**out["failure"], "retries": retries})
                    continue
                res = out["result"]
                # The driver writes every checkpoint, through the run folder's own rules (a
                # fresh file renamed in place; no link followed).
                write_atomic(self.out / res.checkpoint, out.pop("checkpoint_bytes"), root=self.out)
                yield TaskOutcome(task, res.with_extra(retries=retries), None)
        finally:
            # Ctrl-C, or the caller stopped: nothing keeps running on the cluster. Finished
            # trials are already recorded; the cancelled ones go back to pending.
            for ref in running:
                ray.cancel(ref, force=True)


def create(cfg: StudyConfig, protocol: Protocol, device: torch.device,
           out: Path) -> RayExecutor:
    return RayExecutor(cfg, protocol, out)


__all__ = ["OBJECT_STORE_MAX_BYTES", "DataOnNode", "RayExecutor", "TaskReturn", "import_ray",
           "trial_task"]
