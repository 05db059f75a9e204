"""Short dataset names: official downloads and bundled data, never local copies.

A short name always means the same bytes (an official file checked by MD5, or data that ships
inside a package), so results obtained with it are comparable between machines. Local files,
including the project's shared data, are named by their path.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from lightlayers.data.errors import DataError

__all__ = ["MEDMNIST_LABELS", "NamedSource", "get_named_source", "list_named_sources"]

# MedMNIST+ release (Zenodo record 10519652); MD5s as published in medmnist/info.py
# (INFO["pneumoniamnist"]: MD5, MD5_64, MD5_128, MD5_224).
_ZENODO = "https://zenodo.org/records/10519652/files"
_PNEUMONIAMNIST_MD5 = {
    28: "28209eda62fecd6e6a2d98b1501bb15f",
    64: "8f4eceb4ccffa70c672198ea285246c6",
    128: "05b46931834c231683c68f40c47b2971",
    224: "d6a3c71de1b945ea11211b03746c1fe1",
}

# Class names of MedMNIST files, by the flag their file name starts with; used for short names
# and for local .npz files named like the official ones (e.g. pneumoniamnist_28_*.npz).
MEDMNIST_LABELS: dict[str, tuple[str, ...]] = {"pneumoniamnist": ("normal", "pneumonia")}


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


def _pneumoniamnist(size: int) -> NamedSource:
    filename = "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"
    return NamedSource(
        name="pneumoniamnist" if size == 28 else f"pneumoniamnist-{size}",
        kind="medmnist",
        description=f"PneumoniaMNIST {size}x{size} (MedMNIST v2/+), pediatric chest X-rays",
        license="CC BY 4.0",
        classes=MEDMNIST_LABELS["pneumoniamnist"],
        n_samples={"train": 4708, "val": 524, "test": 624},
        url=f"{_ZENODO}/{filename}?download=1",
        md5=_PNEUMONIAMNIST_MD5[size],
        filename=filename,
    )


NAMED_SOURCES: dict[str, NamedSource] = {
    s.name: s
    for s in (
        *(_pneumoniamnist(size) for size in (28, 64, 128, 224)),
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
        close = difflib.get_close_matches(name, NAMED_SOURCES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DataError(
            f"{name!r} is neither an existing path nor a dataset short name.{hint} "
            f"Short names: {', '.join(NAMED_SOURCES)} (see `lightlayers data list`)."
        ) from None
