"""Short dataset names: official downloads and bundled data, never local copies.

A short name always means the same bytes (an official file checked by MD5, or data that ships
inside a package), so results obtained with it are comparable between machines. Local files,
including the project's shared data, are named by their path.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from lightlayers.data.errors import DataError
from lightlayers.data.medmnist_table import MEDMNIST, REFUSED

__all__ = [
    "MEDMNIST_LABELS", "MEDMNIST_SIZES", "NamedSource", "get_named_source", "list_named_sources",
]

# Class names of MedMNIST files, by the flag their file name starts with; used for short names
# and for local .npz files named like the official ones (e.g. pneumoniamnist_28_*.npz).
MEDMNIST_LABELS: dict[str, tuple[str, ...]] = {
    flag: tuple(row["labels"]) for flag, row in MEDMNIST.items()
}
MEDMNIST_SIZES = (28, 64, 128, 224)


@dataclass(frozen=True)
class NamedSource:
    """One short name: where its data comes from and what it holds."""

    name: str
    kind: str  # "medmnist" (download) or "digits" (bundled with scikit-learn)
    description: str
    license: str
    classes: tuple[str, ...]
    n_samples: dict[str, int] | None = None  # official split sizes, checked after loading
    url: str | None = None
    md5: str | None = None
    filename: str | None = None  # name of the downloaded file in the cache


def _medmnist(flag: str, size: int) -> NamedSource:
    row = MEDMNIST[flag]
    url, md5 = row["files"][size]
    return NamedSource(
        name=flag if size == 28 else f"{flag}-{size}",
        kind="medmnist",
        description=f"{row['python_class']} {size}x{size} (MedMNIST v2/+), {row['description']}",
        license=row["license"],
        classes=MEDMNIST_LABELS[flag],
        n_samples=dict(row["n_samples"]),
        url=url,
        md5=md5,
        filename=f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz",
    )


# PneumoniaMNIST first (the study's data), then the other MedMNIST+ sets by name, then digits.
_FLAGS = ("pneumoniamnist", *sorted(f for f in MEDMNIST if f != "pneumoniamnist"))

NAMED_SOURCES: dict[str, NamedSource] = {
    s.name: s
    for s in (
        *(_medmnist(flag, size) for flag in _FLAGS for size in MEDMNIST_SIZES),
        NamedSource(
            name="digits",
            kind="digits",
            description="scikit-learn's bundled 8x8 digits (1,797 images, no download)",
            license="CC BY 4.0 (UCI optdigits)",
            classes=tuple(str(i) for i in range(10)),
        ),
    )
}


def list_named_sources() -> list[NamedSource]:
    """Every short name, in a stable order."""
    return list(NAMED_SOURCES.values())


def get_named_source(name: str) -> NamedSource:
    """Look up a short name; an unknown one raises :class:`DataError` with close matches."""
    try:
        return NAMED_SOURCES[name]
    except KeyError:
        flag = name.lower().rsplit("-", 1)[0] if name.lower()[-1:].isdigit() else name.lower()
        if flag in REFUSED:
            raise DataError(
                f"{name!r} is not supported: {REFUSED[flag]}. The 2D single-label MedMNIST "
                "sets are listed by `lightlayers data list`."
            ) from None
        close = difflib.get_close_matches(name, NAMED_SOURCES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"{name!r} is neither an existing path nor a dataset short name.{hint} "
            f"Short names: {', '.join(_FLAGS)} (each also -64, -128, -224), digits "
            "(see `lightlayers data list`)."
        ) from None
