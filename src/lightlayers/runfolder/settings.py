"""A run folder's settings check: a folder resumes only with the settings it was started with,
and never lies inside the data it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightlayers.config import StudyConfig
from lightlayers.config import comparable_settings as _settings

__all__ = ["local_inputs", "settings_diff"]


def settings_diff(previous: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """Settings that differ from a run folder's. A setting the folder predates counts as its
    default value, so folders written before it was added still resume."""
    if previous is None:
        return []
    defaults = _settings(StudyConfig())
    return sorted(k for k in set(previous) | set(now)
                  if previous.get(k, defaults.get(k)) != now.get(k, defaults.get(k)))


def local_inputs(cfg: StudyConfig) -> list[Path]:
    """The study's data, when it is a local path: a run (or tuning) folder inside it is
    refused."""
    p = Path(cfg.data).expanduser()
    return [p] if p.exists() else []
