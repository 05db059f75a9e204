"""CSV writers whose cells a spreadsheet shows as text, never runs as a formula.

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-`` or
``@`` (and, after their own trimming, a tab or carriage return) as a formula: a class folder or
an image named ``=HYPERLINK("http://...")`` would become a live link or a command in the
predictions or results file a user opens. Such a text cell is written with a leading single
quote, which every spreadsheet reads as "this is text" (OWASP's CSV injection advice). Numbers
stay numbers: a negative number, ``-0.25`` or ``-inf``, is written as is.

Every CSV the tool writes goes through :func:`writer` or :class:`DictWriter`, drop-in
replacements for :func:`csv.writer` and :class:`csv.DictWriter`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["DictWriter", "cell", "row", "writer"]

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# What a spreadsheet, and Python's float(), read as a number rather than a formula.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)",
                     re.IGNORECASE)


def cell(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet will not evaluate: a text that starts with
    ``= + - @``, a tab or a CR and is not a number gains a leading ``'``; anything else
    (numbers of any type, other text, None) is returned unchanged."""
    if (isinstance(value, str) and value.startswith(_TRIGGERS)
            and not _NUMBER.fullmatch(value)):
        return "'" + value
    return value


def row(values: Iterable[Any]) -> list[Any]:
    return [cell(v) for v in values]


class _Writer:
    """:func:`csv.writer` with every cell passed through :func:`cell`."""

    def __init__(self, f: Any, **kwargs: Any) -> None:
        self._w = csv.writer(f, **kwargs)
        self.dialect = self._w.dialect

    def writerow(self, values: Iterable[Any]) -> Any:
        return self._w.writerow(row(values))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for r in rows:
            self.writerow(r)


def writer(f: Any, **kwargs: Any) -> _Writer:
    return _Writer(f, **kwargs)


class DictWriter(csv.DictWriter):  # type: ignore[type-arg]
    """:class:`csv.DictWriter` with every cell passed through :func:`cell`."""

    def writerow(self, rowdict: Mapping[str, Any]) -> Any:
        return super().writerow({k: cell(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts: Iterable[Mapping[str, Any]]) -> None:
        for r in rowdicts:
            self.writerow(r)
