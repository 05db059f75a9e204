"""The one exception type of the data layer."""

from __future__ import annotations

__all__ = ["DataError", "DuplicateImagesWarning"]


class DataError(ValueError):
    """Bad input data or options; the message names the file and the fix (the CLI prints it)."""


class DuplicateImagesWarning(UserWarning):
    """The same decoded image occurs in more than one split (a leak from train into val/test)."""
