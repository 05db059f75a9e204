"""Image-folder trees, on disk or inside a .tar(.gz)/.tgz/.zip archive (read in place).

Layouts: ``ROOT/{train,val,test}/<class>/...`` or ``ROOT/<class>/...``, optionally under one
wrapping top folder (``chest_xray_224/train/NORMAL/x.jpeg``). Class folders may nest deeper;
every image below a class folder belongs to it. Hidden files, ``__MACOSX`` and files that are
not images (README, notes, ``.DS_Store``) are ignored.

Trust: a folder walk follows each real folder at most once and never a symlink back into the
tree, so links cannot loop or relabel images (see :func:`folder_source`); archive members with
absolute or ``..`` names are errors, and archives are read within the size and count limits of
:mod:`~lightlayers.data.sources.limits` (see :func:`archive_source`).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import posixpath
import re
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightlayers.data.errors import DataError
from lightlayers.data.sources.base import SPLITS, FileItem, FileSet, Source, file_sha256
from lightlayers.data.sources.limits import Budget

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "archive_source",
    "folder_source",
    "is_archive",
    "plan_tree",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
     ".dcm", ".dicom"}
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
        if (top := folder_of.get(split, "")) == "":
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


@dataclass
class _Walk:
    files: list[str]  # image files, relative posix paths
    dirs: list[str]  # folders, relative posix paths
    digest: str  # sha256 of (relative path, size, content sha256) of every image and folder
    notes: list[str]
    manifest: dict[str, str]  # image -> "size:sha256 prefix"


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _shown(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _walk(root: Path) -> _Walk:
    """Every image and folder below ``root``, in the order of ``os.walk`` (top-down, sorted),
    following symlinked folders only when that cannot loop or relabel (see folder_source)."""
    from lightlayers.data.preprocess import special_file_kind

    root_real = os.path.realpath(root)
    files: list[str] = []
    dirs: list[str] = []
    not_followed: list[str] = []
    outside: list[str] = []
    special: list[str] = []  # FIFOs, sockets, devices: listed, never opened
    h = hashlib.sha256()
    hashes = _HashCache(root_real)
    manifest: dict[str, str] = {}
    top_st = os.stat(root)
    seen = {(top_st.st_dev, top_st.st_ino)}
    # (folder on disk, its path relative to root + "/", reached through a link out of root)
    stack: list[tuple[str, str, bool]] = [(str(root), "", False)]
    while stack:
        folder, rel_dir, out = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise DataError(
                f"{root}/{rel_dir}: cannot list this folder ({type(e).__name__}: "
                f"{e.strerror or e}). Fix its permissions, or move it out of the dataset."
            ) from e
        subfolders: list[tuple[str, str, bool]] = []
        file_lines: list[str] = []  # hashed after the folder lines, in os.walk's order
        for entry in entries:
            rel = rel_dir + entry.name
            if _ignored(entry.name):
                continue
            st: os.stat_result | None
            try:
                is_dir = entry.is_dir()  # follows a link
                st = entry.stat()
            except OSError:
                is_dir, st = False, None  # a broken link: decoding reports it as unreadable
            if is_dir:
                assert st is not None
                link = entry.is_symlink()
                target = os.path.realpath(entry.path)
                # A link into the tree itself would count its images twice (under another class
                # when it crosses class folders); one to an ancestor, or to a folder already
                # read, would loop. A link to a folder outside is followed, once.
                if (st.st_dev, st.st_ino) in seen or (
                    link and (_within(target, root_real) or _within(root_real, target))
                ):
                    shown = os.readlink(entry.path) if link else target
                    not_followed.append(f"{rel} -> {shown}")
                    h.update(f"L\t{rel}\t{shown}\n".encode())
                    continue
                seen.add((st.st_dev, st.st_ino))
                dirs.append(rel)
                h.update(f"D\t{rel}\n".encode())
                subfolders.append((entry.path, rel + "/", out or link))
            elif st is not None and (kind := special_file_kind(st.st_mode)) is not None:
                # Hashing or decoding would open it: a FIFO blocks until a writer comes.
                special.append(f"{rel} ({kind})")
            elif _is_image(rel):
                files.append(rel)
                if st is None:
                    file_lines.append(f"F\t{rel}\tbroken link\n")
                    continue
                digest = hashes.sha256(entry.path, rel, st)
                manifest[rel] = f"{st.st_size}:{digest[:16]}"
                file_lines.append(f"F\t{rel}\t{st.st_size}\t{digest}\n")
                if out or entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not _within(target, root_real):
                        outside.append(f"{rel} -> {target}")
        for line in file_lines:
            h.update(line.encode())
        stack.extend(reversed(subfolders))  # depth first, in name order, like os.walk
    notes = []
    if not_followed:
        notes.append(
            f"{len(not_followed)} symlinked folder(s) not followed (each points back into the "
            f"dataset, at a folder holding it, or at a folder already read): {_shown(not_followed)}"
        )
    if special:
        notes.append(
            f"skipped {len(special)} file(s) that are not regular files (not images; never "
            f"opened): {_shown(special)}"
        )
    if outside:
        notes.append(
            f"{len(outside)} image(s) are symlinks to files outside {root} (used as they are; "
            f"the dataset's identity follows their content): {_shown(outside)}"
        )
    hashes.save()
    return _Walk(files, dirs, h.hexdigest(), notes, manifest)


class _HashCache:
    """Content hashes of a folder's files, reused while a file's size and mtime are unchanged, so
    a folder is read whole once (in the cache folder, beside the decoded images); a file that
    cannot be read hashes as unreadable and decoding reports it."""

    def __init__(self, root_real: str) -> None:
        from lightlayers.data.cache import cache_root

        name = hashlib.sha256(root_real.encode()).hexdigest()[:20]
        self.path = cache_root() / "file-hashes" / f"{name}.json"
        self.old: dict[str, list[Any]] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict) and loaded.get("root") == root_real \
                    and isinstance(loaded.get("files"), dict):
                self.old = loaded["files"]
        except (OSError, ValueError):
            pass  # missing or damaged: every file is hashed again
        self.root = root_real
        self.new: dict[str, list[Any]] = {}

    def sha256(self, path: str, rel: str, st: os.stat_result) -> str:
        known = self.old.get(rel)
        if (isinstance(known, list) and len(known) == 3 and known[0] == st.st_size
                and known[1] == st.st_mtime_ns and isinstance(known[2], str)):
            digest = known[2]
        else:
            try:
                digest = file_sha256(Path(path))
            except OSError:
                digest = "unreadable"
        self.new[rel] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def save(self) -> None:
        if self.new == self.old:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps({"root": self.root, "files": self.new}))
                os.replace(tmp, self.path)
            finally:  # an error, Ctrl-C or SIGTERM: no half-written file stays
                tmp.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only cache only costs hashing again next time


def folder_source(path: Path) -> Source:
    """A folder tree on disk. Its identity hashes (relative path, size, content) of every image
    and folder, so adding, removing or changing an image is a cache miss, and touching one or a
    README is not. Content hashes are cached per file by size and mtime.

    Symlinks: a symlinked folder is followed only when it leads out of the tree, and each real
    folder is read once (by device and inode), so links cannot loop or multiply a class. A
    symlinked folder that points back into the tree, at a folder holding it, or at a folder
    already read is not followed, and is listed in the dataset's notes (``data summary`` shows
    them). Images that are symlinks to files outside the tree (or lie in a folder reached
    through such a link) are used, and listed in the notes as a warning. A broken link named
    like an image is an unreadable image (an error, or skipped with ``on_bad_image="skip"``).
    An unreadable folder is an error naming it. Named pipes, sockets and devices are never
    opened (a FIFO would block the walk forever): they are not images, and the notes list them
    as skipped.
    """
    walk = _walk(path)

    def read() -> FileSet:
        classes, items, original, notes = plan_tree(walk.files, walk.dirs, str(path))
        return FileSet(
            classes=classes,
            items=items,
            # A path, not bytes: the decoding worker reads the file itself.
            payload=lambda item: str(path / original[item.id]),
            notes=[*walk.notes, *notes],
        )

    return Source(
        name=path.name,
        location=str(path),
        kind="folder",
        identity={"kind": "folder", "sha256": walk.digest},
        read=read,
        manifest=walk.manifest,
    )


def _member_name(raw: str, archive: Path) -> str:
    """A member's path relative to the archive's root; absolute names and names with a ".."
    part are refused (they point outside the dataset, and are how archives attack extractors)."""
    parts = re.split(r"[/\\]", raw)
    absolute = raw.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", raw) is not None
    if absolute or ".." in parts:
        why = "is an absolute path" if absolute else "climbs out of the archive with '..'"
        raise DataError(
            f"{archive}: member {raw!r} {why}. A dataset archive holds relative paths only; "
            "repack it from the folder above the dataset (e.g. tar -czf data.tar.gz -C PARENT "
            "FOLDER)."
        )
    return posixpath.normpath(raw).removeprefix("./")


class _Spool(Mapping[str, bytes]):
    """Image members copied out of an archive one at a time into an unnamed temporary file (in
    the cache folder, deleted when closed or when the process ends), so an archive is never
    held in memory whole: member name -> its bytes, read back by offset when asked for."""

    def __init__(self) -> None:
        from lightlayers.data.cache import cache_root

        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        # Closed by its owner, or with the spool when it is garbage-collected.
        self.file = tempfile.TemporaryFile(dir=root, prefix=".archive-")  # noqa: SIM115
        self.where: dict[str, tuple[int, int]] = {}
        self.end = 0

    def __getitem__(self, name: str) -> bytes:
        return self.read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def __len__(self) -> int:
        return len(self.where)

    def add(self, name: str, data: bytes) -> None:
        self.file.write(data)
        self.where[name] = (self.end, len(data))
        self.end += len(data)

    def read(self, name: str) -> bytes:
        offset, size = self.where[name]
        self.file.flush()  # nothing to do after the first read: writing is over by then
        parts, fd = [], self.file.fileno()
        while size:
            part = os.pread(fd, size, offset)
            if not part:
                raise OSError(f"the archive's spool ended early at {name}")
            parts.append(part)
            offset, size = offset + len(part), size - len(part)
        return b"".join(parts)


def _read_zip(path: Path, budget: Budget, spool: _Spool) -> tuple[list[str], list[str]]:
    dirs: list[str] = []
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = [_member_name(info.filename, path) for info in infos]
        for info, name in zip(infos, names, strict=True):
            budget.member(name, info.file_size)  # every header before any data
        for info, name in zip(infos, names, strict=True):
            if info.is_dir():
                dirs.append(name)
            elif _is_image(name):
                if info.flag_bits & 0x1:
                    raise DataError(
                        f"{path}: member {name} is encrypted; give an archive without a password."
                    )
                with zf.open(info) as f:
                    spool.add(name, budget.read(f, name, info.file_size))
    return dirs, []


def _read_tar(path: Path, budget: Budget, spool: _Spool) -> tuple[list[str], list[str]]:
    dirs: list[str] = []
    links: list[str] = []
    with tarfile.open(path, "r:*") as tf:
        # A compressed tar is read front to back: each header is checked before its data.
        for member in tf:
            name = _member_name(member.name, path)
            budget.member(name, member.size if member.isfile() else 0)
            if member.isdir():
                dirs.append(name)
            elif member.isfile() and _is_image(name):
                f = tf.extractfile(member)
                assert f is not None  # a regular file always has data
                spool.add(name, budget.read(f, name, member.size))
            elif (member.issym() or member.islnk()) and _is_image(name):
                links.append(name)
            # tarfile keeps every header it has read; a million members are a lot of objects.
            setattr(tf, "members", [])  # noqa: B010  (no public way to drop them)
    notes = []
    if links:
        notes.append(
            f"{len(links)} image(s) stored as links inside the archive were ignored (links in "
            f"archives are not followed): {_shown(links)}"
        )
    return dirs, notes


def _read_archive(path: Path) -> tuple[_Spool, list[str], list[str]]:
    """Every image member spooled to a temporary file (see :class:`_Spool`), all folder names
    and notes, in one pass (a .tar.gz can only be read front to back). Sizes and member counts
    are checked against :mod:`~lightlayers.data.sources.limits`."""
    budget = Budget(str(path))
    spool = _Spool()
    try:
        if path.name.lower().endswith(".zip"):
            return spool, *_read_zip(path, budget, spool)
        return spool, *_read_tar(path, budget, spool)
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
        RuntimeError,
    ) as e:
        spool.file.close()
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"{path}: cannot read the archive ({type(e).__name__}: {e}). The file is damaged or "
            "not a .tar/.tar.gz/.tgz/.zip archive; download or copy it again."
        ) from e
    except BaseException:
        spool.file.close()
        raise


def archive_source(path: Path) -> Source:
    """A tree inside an archive, read in place. Its identity is the archive's sha256.

    Member names that are absolute or contain a ".." part are an error naming the member and
    the archive; members over the size limits (see :mod:`~lightlayers.data.sources.limits`)
    too. Images stored as links inside a tar are ignored and listed in the notes.
    """

    def read() -> FileSet:
        spool, dirs, archive_notes = _read_archive(path)
        try:
            classes, items, original, notes = plan_tree(spool, dirs, str(path))
        except BaseException:
            spool.file.close()
            raise
        return FileSet(
            classes=classes,
            items=items,
            # Bytes read back from the spool, one member at a time (it closes with the FileSet).
            payload=lambda item: spool.read(original[item.id]),
            notes=[*archive_notes, *notes],
        )

    return Source(
        name=_strip_archive_suffix(path.name),
        location=str(path),
        kind="archive",
        identity={"kind": "archive", "sha256": file_sha256(path)},
        read=read,
    )
