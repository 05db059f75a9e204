"""Plug-ins other installed packages declare as entry points (executors, trackers)."""

from __future__ import annotations

import warnings

__all__ = ["load_entry_points"]

_loaded: set[str] = set()


def load_entry_points(group: str, what: str, category: type[Warning] = UserWarning) -> None:
    """Call every entry point of ``group`` once per process (each registers its plug-in). A
    plug-in that fails to load is one warning naming it: it must not take the built-in
    ``what`` (e.g. "executor") down with it."""
    if group in _loaded:
        return
    _loaded.add(group)
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            ep.load()()
        except Exception as e:  # a plug-in's errors have no common base class
            warnings.warn(f"{what} plugin {ep.name} ({ep.value}) failed to load: {e}",
                          category, stacklevel=3)
