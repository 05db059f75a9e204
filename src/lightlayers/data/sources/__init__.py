"""Turn what the user typed (a path or a short name) into a :class:`Source`."""

from __future__ import annotations

import os
from pathlib import Path

from lightlayers.data.errors import DataError
from lightlayers.data.registry import NAMED_SOURCES, NamedSource, get_named_source
from lightlayers.data.sources.arrays import (
    digits_source,
    find_idx_files,
    idx_source,
    npz_source,
    read_npz,
)
from lightlayers.data.sources.base import SPLITS, ArraySet, FileItem, FileSet, Source
from lightlayers.data.sources.tree import archive_source, folder_source, is_archive

__all__ = ["SPLITS", "ArraySet", "FileItem", "FileSet", "Source", "open_source"]


def _named_source(entry: NamedSource) -> Source:
    if entry.kind == "digits":
        return digits_source()
    assert entry.url and entry.md5 and entry.filename  # every download entry has all three
    url, md5, filename = entry.url, entry.md5, entry.filename

    def read() -> ArraySet:
        from lightlayers.data.cache import cache_root
        from lightlayers.data.download import fetch

        path = fetch(url, md5, cache_root() / "downloads" / filename)
        arrays = read_npz(path, classes=entry.classes)
        counts = {s: len(arrays.splits[s][1]) for s in SPLITS if s in arrays.splits}
        if entry.n_samples is not None and counts != entry.n_samples:
            raise DataError(
                f"{path}: split sizes {counts} differ from the official {entry.n_samples} although "
                "its MD5 matched; please report this."
            )
        return arrays

    return Source(
        name=entry.name,
        location=entry.name,
        kind="download",
        # The MD5 names the exact bytes, so the decoded cache needs no download to be found.
        identity={"kind": "download", "file": entry.filename, "md5": entry.md5},
        read=read,
    )


def open_source(source: str | os.PathLike[str]) -> Source:
    """A short name (see ``lightlayers data list``) or a path to a folder tree, an archive of one,
    a MedMNIST-style .npz, a CSV manifest (``labels.csv``, or ``labels.csv#label=diagnosis`` to
    name its columns; :mod:`lightlayers.data.manifest`), or a folder of MNIST IDX files.

    Short names win over same-named local paths: a short name always means the official bytes.
    Write ``./digits`` for a local folder called ``digits``.
    """
    if isinstance(source, str) and source in NAMED_SOURCES:
        return _named_source(NAMED_SOURCES[source])
    from lightlayers.data.manifest import manifest_source, split_manifest_spec

    text, columns = split_manifest_spec(os.fspath(source))
    if columns is not None:
        source = text
    path = Path(source).expanduser()
    if not path.exists():
        text = os.fspath(source)
        if os.sep in text or "/" in text or path.suffix:
            raise DataError(
                f"{path}: no such file or directory. Give a dataset folder, a .tar.gz/.tgz/.zip "
                "archive, a .npz file, or a short name (see `lightlayers data list`)."
            )
        get_named_source(text)  # raises DataError with close matches
    from lightlayers.data.preprocess import special_file_kind

    path = path.resolve()
    if not path.is_dir() and (kind := special_file_kind(path.stat().st_mode)) is not None:
        # Reading it would block (a FIFO) or never end (a device).
        raise DataError(
            f"{path} is {kind}, not a dataset file. Give a dataset folder, a .tar.gz/.tgz/.zip "
            "archive, a .npz file, or a short name (see `lightlayers data list`)."
        )
    if path.is_dir():
        idx = find_idx_files(path)
        return idx_source(path, idx) if idx else folder_source(path)
    if is_archive(path):
        return archive_source(path)
    if path.suffix.lower() == ".npz":
        return npz_source(path)
    if path.suffix.lower() == ".csv":
        return manifest_source(path, columns)
    raise DataError(
        f"{path}: unsupported file type. Give a dataset folder, a .tar.gz/.tgz/.tar/.zip archive "
        "of one, a MedMNIST-style .npz file, a CSV manifest (path,label[,split][,patient]), or "
        "a folder of MNIST IDX files."
    )
