"""The default thread count leaves room for the machine's other work."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from lightlayers import runtime
from lightlayers.config import StudyConfig


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def test_physical_cores_are_within_the_cpus_this_process_may_use():
    n = runtime.physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_a_busy_process_is_counted_and_the_default_leaves_its_core(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    stop = mp.Event()
    spinner = mp.Process(target=_spin, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(0.5)
        assert runtime.busy_cores(0.5) >= 0.6  # the spinner's core, whatever else runs
        runtime.default_threads.cache_clear()  # measured once per process: measure now
        threads = runtime.default_threads()
        assert 1 <= threads <= max(1, runtime.physical_cores() - 1)
        cfg = runtime.resolve_threads(StudyConfig())
        assert 1 <= cfg.threads <= max(1, runtime.physical_cores() - 1)
    finally:
        stop.set()
        spinner.join(5)
        runtime.default_threads.cache_clear()  # later tests measure a machine without it


def test_niced_work_is_not_counted_as_busy(monkeypatch):
    stop = mp.Event()

    def niced(stop) -> None:
        os.nice(19)
        _spin(stop)

    before = runtime.busy_cores(0.5)
    spinner = mp.get_context("fork").Process(target=niced, args=(stop,), daemon=True)
    spinner.start()
    try:
        time.sleep(0.5)
        # The niced spinner takes a whole core, yet yields it to any other work: counted, it
        # would add about 1.
        assert runtime.busy_cores(0.5) - before < 0.5
    finally:
        stop.set()
        spinner.join(5)


@pytest.mark.parametrize("given", [1, 3])
def test_an_explicit_or_omp_thread_count_wins(monkeypatch, given):
    assert runtime.resolve_threads(StudyConfig(threads=given)).threads == given
    monkeypatch.setenv("OMP_NUM_THREADS", str(given))
    runtime.default_threads.cache_clear()
    # torch read OMP_NUM_THREADS when it started: its own count stands.
    assert runtime.default_threads() == runtime._TORCH_THREADS
    runtime.default_threads.cache_clear()
