"""SIGTERM ends a command the way Ctrl-C does.

A service manager, ``timeout``, a batch scheduler or ``kill`` stop a process with SIGTERM,
whose default action ends it on the spot: no ``finally`` runs, so temporary folders stay, a
trial stays marked running and nothing says why the command stopped. :func:`sigterm_as_interrupt`
turns the signal into :class:`Terminated`, a ``KeyboardInterrupt``, raised in the main thread:
every ``finally`` and ``with`` runs, the study's Ctrl-C path puts the interrupted trial back to
pending, and :func:`lightlayers.cli.main` prints one line and exits 143 (128 + SIGTERM).

The first SIGTERM starts that orderly stop; repeats are ignored while it runs, so that a
supervisor that signals twice does not cut the cleanup short (SIGKILL still ends the process).
:func:`held` defers the signal over a few statements that must not be split (creating a
temporary folder and taking note of it, removing it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["EXIT_TERMINATED", "Terminated", "held", "reclaim_sigterm", "sigterm_as_interrupt",
           "sigterm_received"]

EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised in the main thread, like Ctrl-C's interrupt)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _State:
    installed_by: int | None = None  # the pid whose handler is installed
    fired = False  # the orderly stop has begun
    held = 0  # depth of held() blocks
    pending: int | None = None  # a signal that arrived inside held()


_state = _State()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _state.installed_by:
        # A forked child (the decoding pool) inherits the handler but not the parent's
        # cleanup: it ends the usual way, silently.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _state.fired:
        return
    if _state.held:
        _state.pending = signum
        return
    _state.fired = True
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread. Outside the
    main thread (where Python cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Any = signal.signal(signal.SIGTERM, _on_sigterm)
    before = (_state.installed_by, _state.fired, _state.pending)
    _state.installed_by, _state.fired, _state.pending = os.getpid(), False, None
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        _state.installed_by, _state.fired, _state.pending = before


def sigterm_received() -> bool:
    """Whether SIGTERM started the stop under way: some libraries (Ray's ``ray.get`` and
    ``ray.wait``) catch the interrupt and raise a plain ``KeyboardInterrupt`` of their own."""
    return _state.fired and _state.installed_by == os.getpid()


def reclaim_sigterm() -> None:
    """Put the handler back after a library replaced it (``ray.init`` starting a local
    instance installs one that exits with status 1 and no message), when it was installed."""
    if (_state.installed_by == os.getpid()
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is not _on_sigterm):
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Defer SIGTERM until the block ends, then raise it: for steps that must happen together
    (a temporary folder made and its name kept, so that a ``finally`` can remove it)."""
    _state.held += 1
    try:
        yield
    finally:
        _state.held -= 1
        if not _state.held and _state.pending is not None and not _state.fired:
            signum, _state.pending = _state.pending, None
            _state.fired = True
            raise Terminated(signum)
