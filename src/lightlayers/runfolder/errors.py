"""The run folder's errors: each message says which file or folder, what is wrong and the fix."""

from __future__ import annotations

__all__ = ["CheckpointMismatchError", "RunFolderError"]


class RunFolderError(Exception):
    """A run folder cannot be read or written as asked (missing, not a run folder, no such
    trial, a damaged store or checkpoint)."""


class CheckpointMismatchError(RunFolderError):
    """A trial's checkpoint file is not the one the trial wrote (replaced, swapped, damaged)."""
