"""Image-folder trees, on disk or inside a .tar(.gz)/.tgz/.zip archive (read in place).

Layouts: ``ROOT/{train,val,test}/<class>/...`` or ``ROOT/<class>/...``, optionally under one
wrapping top folder (``chest_xray_224/train/NORMAL/x.jpeg``). Class folders may nest deeper;
every image below a class folder belongs to it. Hidden files, ``__MACOSX`` and files that are
not images (README, notes, ``.DS_Store``) are ignored.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from lightlayers.data.errors import DataError
from lightlayers.data.sources.base import SPLITS, FileItem, FileSet, Source, file_sha256

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "archive_source",
    "folder_source",
    "is_archive",
    "plan_tree",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _ignored(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _is_image(relpath: str) -> bool:
    parts = relpath.split("/")
    if any(_ignored(p) for p in parts):
        return False
    return posixpath.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


def _clean_member(name: str) -> str:
    return posixpath.normpath(name.lstrip("/")).removeprefix("./")


def _parents(relpath: str) -> Iterable[str]:
    parts = relpath.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def plan_tree(
    files: Iterable[str], dirs: Iterable[str], where: str
) -> tuple[tuple[str, ...], list[FileItem], dict[str, str], list[str]]:
    """Work out the layout of a tree from its image files and folders (relative posix paths).

    Returns the sorted class names, the items (ids relative to the root below any wrapping
    folder), a map from item id back to the original relative path, and notes. Raises
    :class:`DataError` for layouts that would give a wrong or partial dataset.
    """
    files = sorted(f for f in files if _is_image(f))
    if not files:
        raise DataError(
            f"{where}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}). "
            "Expected ROOT/<class>/<image> or ROOT/{train,val,test}/<class>/<image>."
        )
    all_dirs = {d for d in dirs if d and not any(_ignored(p) for p in d.split("/"))}
    for f in files:
        all_dirs.update(_parents(f))

    prefix = ""
    tops = {p.split("/")[0] for p in (*files, *all_dirs)}
    if len(tops) == 1:
        (top,) = tops
        if top.lower() not in SPLIT_ALIASES and all(f.count("/") >= 2 for f in files):
            prefix = top + "/"
    rel = {f.removeprefix(prefix): f for f in files}
    sub_dirs = {d.removeprefix(prefix) for d in all_dirs if d.startswith(prefix) and d != prefix}
    root = f"{where}/{prefix}" if prefix else f"{where}/"

    tops = {p.split("/")[0] for p in (*rel, *sub_dirs)}
    split_tops = {t for t in tops if t.lower() in SPLIT_ALIASES}
    if split_tops:
        return _plan_split_tree(rel, sub_dirs, split_tops, root)
    classes, items = _plan_class_tree(rel, sub_dirs, "", None, root)
    return classes, items, {i.id: rel[i.id] for i in items}, []


def _class_folders(
    files: list[str], dirs: Iterable[str], base: str, root: str
) -> dict[str, list[str]]:
    """Class name -> image ids, for the class folders directly below ``base``."""
    by_class: dict[str, list[str]] = {}
    for d in dirs:
        if d.startswith(base) and d != base.rstrip("/"):
            by_class.setdefault(d.removeprefix(base).split("/")[0], [])
    for f in files:
        parts = f.removeprefix(base).split("/")
        if len(parts) == 1:
            raise DataError(
                f"{root}{f}: image is not inside a class folder. Move it into "
                f"{root}{base}<class>/ or remove it."
            )
        by_class.setdefault(parts[0], []).append(f)
    return by_class


def _plan_class_tree(
    rel: dict[str, str], dirs: set[str], base: str, split: str | None, root: str
) -> tuple[tuple[str, ...], list[FileItem]]:
    files = [f for f in rel if f.startswith(base)]
    by_class = _class_folders(files, dirs, base, root)
    empty = sorted(c for c, fs in by_class.items() if not fs)
    if empty:
        raise DataError(
            f"{root}{base}: empty class folder(s) {', '.join(empty)} (no image files). "
            "Add images or remove the folder(s)."
        )
    if len(by_class) < 2:
        found = ", ".join(sorted(by_class)) or "none"
        raise DataError(
            f"{root}{base}: a classification dataset needs at least 2 class folders, found "
            f"{len(by_class)} ({found}). Expected {root}{base}<class>/<image> per class."
        )
    classes = tuple(sorted(by_class))
    items = [
        FileItem(id=f, split=split, label=label)
        for label, c in enumerate(classes)
        for f in sorted(by_class[c])
    ]
    return classes, items


def _plan_split_tree(
    rel: dict[str, str], dirs: set[str], split_tops: set[str], root: str
) -> tuple[tuple[str, ...], list[FileItem], dict[str, str], list[str]]:
    notes: list[str] = []
    stray = sorted({f.split("/")[0] for f in rel} - split_tops)
    if stray:
        raise DataError(
            f"{root}: image files outside the split folders ({', '.join(stray)}) next to "
            f"{', '.join(sorted(split_tops))}. A split tree holds only train/, val/ and test/, "
            "each with one folder per class; move or remove the others."
        )
    folder_of: dict[str, str] = {}
    for top in sorted(split_tops):
        split = SPLIT_ALIASES[top.lower()]
        if split in folder_of:
            raise DataError(
                f"{root}: both {folder_of[split]}/ and {top}/ name the {split} split; merge or "
                "remove one."
            )
        folder_of[split] = top
    if "train" not in folder_of:
        raise DataError(
            f"{root}: split folders {', '.join(sorted(split_tops))} but no train/ folder. "
            "Add ROOT/train/<class>/..., or use ROOT/<class>/... without split folders."
        )
    per_split: dict[str, tuple[tuple[str, ...], list[FileItem]]] = {}
    for split in SPLITS:
        top = folder_of.get(split)
        if top is None:
            continue
        if not any(f.startswith(top + "/") for f in rel):
            notes.append(f"{top}/ holds no images and was treated as absent")
            continue
        per_split[split] = _plan_class_tree(rel, dirs, top + "/", split, root)
    classes = per_split["train"][0]
    for split, (cls, _) in per_split.items():
        if cls != classes:
            missing = sorted(set(classes) - set(cls))
            extra = sorted(set(cls) - set(classes))
            raise DataError(
                f"{root}: the class folders of {folder_of[split]}/ differ from train/ "
                f"(missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'}). "
                "Every split needs the same class folders."
            )
    items: list[FileItem] = []
    for split in SPLITS:
        if split in per_split:
            # Labels come from the shared class order; ids drop the split folder's own spelling.
            items.extend(per_split[split][1])
    return classes, items, {i.id: rel[i.id] for i in items}, notes


def _strip_archive_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def folder_source(path: Path) -> Source:
    """A folder tree on disk. Its identity hashes (relative path, size, mtime) of every image and
    folder, so adding, removing or touching an image is a cache miss and a README is not."""
    files: list[str] = []
    dirs: list[str] = []
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        rel_dir = Path(dirpath).relative_to(path).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        for d in dirnames:
            dirs.append(rel_dir + d)
            h.update(f"D\t{rel_dir}{d}\n".encode())
        for name in sorted(filenames):
            rel = rel_dir + name
            if _is_image(rel):
                st = os.stat(os.path.join(dirpath, name))
                files.append(rel)
                h.update(f"F\t{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())

    def read() -> FileSet:
        classes, items, original, notes = plan_tree(files, dirs, str(path))
        return FileSet(
            classes=classes,
            items=items,
            # A path, not bytes: the decoding worker reads the file itself.
            payload=lambda item: str(path / original[item.id]),
            notes=notes,
        )

    return Source(
        name=path.name,
        location=str(path),
        kind="folder",
        identity={"kind": "folder", "sha256": h.hexdigest()},
        read=read,
    )


def _read_archive(path: Path) -> tuple[dict[str, bytes], list[str]]:
    """All image members' bytes and all folder names, in one pass (a .tar.gz can only be read
    front to back; holding the encoded images costs about the archive's size in memory)."""
    blobs: dict[str, bytes] = {}
    dirs: list[str] = []
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _clean_member(info.filename)
                    if info.is_dir():
                        dirs.append(name)
                    elif _is_image(name):
                        blobs[name] = zf.read(info)
        else:
            with tarfile.open(path, "r:*") as tf:
                for member in tf:
                    name = _clean_member(member.name)
                    if member.isdir():
                        dirs.append(name)
                    elif member.isfile() and _is_image(name):
                        f = tf.extractfile(member)
                        assert f is not None  # a regular file always has data
                        blobs[name] = f.read()
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise DataError(
            f"{path}: cannot read the archive ({type(e).__name__}: {e}). The file is damaged or "
            "not a .tar/.tar.gz/.tgz/.zip archive; download or copy it again."
        ) from e
    return blobs, dirs


def archive_source(path: Path) -> Source:
    """A tree inside an archive, read in place. Its identity is the archive's sha256."""

    def read() -> FileSet:
        blobs, dirs = _read_archive(path)
        classes, items, original, notes = plan_tree(blobs, dirs, str(path))
        return FileSet(
            classes=classes,
            items=items,
            payload=lambda item: blobs[original[item.id]],
            notes=notes,
        )

    return Source(
        name=_strip_archive_suffix(path.name),
        location=str(path),
        kind="archive",
        identity={"kind": "archive", "sha256": file_sha256(path)},
        read=read,
    )
