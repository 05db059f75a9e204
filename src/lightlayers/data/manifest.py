"""A CSV manifest: one row per image, ``path,label[,split][,patient]``.

``path`` is relative to the CSV's folder (or absolute); ``label`` is the class name; ``split``
(train, val, test and their aliases) keeps the source's own splits; ``patient`` groups the
images of one patient when a split is carved (instead of a pattern on file names). Other
names for these columns follow the path after ``#``, as ``ROLE=COLUMN`` pairs::

    labels.csv#path=file,label=diagnosis,split=fold,patient=subject

One label per image: a label holding ``|`` or ``;``, an image listed twice, two label columns,
or a manifest of 0/1 columns (one per finding) is refused as multi-label.

Its identity hashes the CSV's bytes and every listed image's path, size and content, so
editing the CSV or an image makes a new dataset (content hashes are reused while a file's size
and mtime are unchanged, as for folders).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path

from lightlayers.data.errors import DataError
from lightlayers.data.sources.base import FileItem, FileSet, Source
from lightlayers.data.sources.limits import current_limits
from lightlayers.data.sources.tree import SPLIT_ALIASES, _HashCache

__all__ = ["ROLES", "manifest_source", "parse_columns", "split_manifest_spec"]

ROLES = ("path", "label", "split", "patient")
_REQUIRED = ("path", "label")
# Separators of several labels in one cell ("effusion|pneumonia").
_MULTI = re.compile(r"[|;]")
_SHOWN = 5


def split_manifest_spec(text: str) -> tuple[str, str | None]:
    """``"labels.csv#label=diagnosis"`` -> ``("labels.csv", "label=diagnosis")``; the text
    unchanged, with None, when it names no CSV before a ``#`` (or the whole text exists)."""
    base, sep, spec = text.rpartition("#")
    if not sep or os.path.exists(os.path.expanduser(text)) or not base.lower().endswith(".csv"):
        return text, None
    return base, spec


def parse_columns(spec: str | Mapping[str, str] | None, where: str) -> dict[str, str]:
    """Role -> column name: the defaults (each role's own name) with ``spec``'s pairs over
    them. A role given twice is refused (two label columns are a multi-label manifest)."""
    columns = {r: r for r in ROLES}
    if spec is None:
        return columns
    pairs = (list(spec.items()) if isinstance(spec, Mapping)
             else [p.partition("=")[::2] for p in spec.split(",") if p.strip()])
    seen: set[str] = set()
    for role, column in pairs:
        role, column = role.strip(), column.strip()
        if role not in ROLES or not column:
            raise DataError(
                f"{where}: manifest column {role}={column} is not ROLE=COLUMN with ROLE one of "
                f"{', '.join(ROLES)}; e.g. {where}#path=file,label=diagnosis")
        if role in seen:
            what = ("several label columns make a multi-label manifest; this package trains "
                    "one label per image" if role == "label" else "give each role once")
            raise DataError(f"{where}: manifest role {role} is given twice ({what})")
        seen.add(role)
        columns[role] = column
    return columns


def _numeric(labels: set[str]) -> bool:
    return all(re.fullmatch(r"[+-]?\d+", v) for v in labels)


def _read_rows(path: Path) -> tuple[bytes, list[str], list[tuple[int, dict[str, str]]]]:
    """The CSV's bytes, header and (line number, row) of every non-empty row."""
    limit = current_limits().member_bytes
    try:
        size = path.stat().st_size
        if size > limit:
            raise DataError(
                f"{path}: the manifest is {size:,} bytes, over the limit of {limit:,} "
                "(LIGHTLAYERS_MAX_MEMBER_BYTES)")
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: the manifest is not UTF-8 text ({e}); save it as UTF-8 CSV"
                        ) from e
    except OSError as e:
        raise DataError(f"{path}: cannot read the manifest ({e.strerror or e})") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        rows = [(reader.line_num, r) for r in reader]
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({e})") from e
    if not header or not any(header):
        raise DataError(f"{path}: the manifest is empty; its first line names the columns "
                        "(path,label[,split][,patient])")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}: column {dupes[0]!r} appears twice in the header; name each "
                        "column once")
    out = []
    for line, r in rows:
        if not any(c.strip() for c in r):
            continue
        if len(r) != len(header):
            raise DataError(
                f"{path} line {line}: {len(r)} cells for the {len(header)} columns "
                f"{','.join(header)}; quote a cell that holds a comma")
        out.append((line, dict(zip(header, (c.strip() for c in r), strict=True))))
    return data, header, out


def _missing_column(path: Path, header: list[str], rows: list[tuple[int, dict[str, str]]],
                    columns: dict[str, str], role: str) -> DataError:
    if role == "label":
        flags = [h for h in header if h not in (columns["path"], columns["split"],
                                                 columns["patient"])
                 and rows and all(r[h] in ("0", "1", "0.0", "1.0", "") for _, r in rows)]
        if len(flags) >= 2:
            return DataError(
                f"{path}: no {columns['label']!r} column but 0/1 columns "
                f"({', '.join(flags[:_SHOWN])}): a multi-label manifest; this package trains "
                "one label per image, so give one column with each image's class")
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        return DataError(f"{path}: the header {header[0]!r} is one column; separate the "
                         "columns with commas")
    return DataError(
        f"{path}: no column {columns[role]!r} for the {role} (columns: {', '.join(header)}); "
        f"name it after the path: {path}#{role}=COLUMN")


def manifest_source(path: Path, spec: str | Mapping[str, str] | None = None) -> Source:
    """The images a CSV manifest lists, with their labels and, when given, splits and
    patients. Everything is checked here, before any image is decoded: the columns, every
    row, and that every listed file exists."""
    columns = parse_columns(spec, str(path))
    data, header, rows = _read_rows(path)
    for role in _REQUIRED:
        if columns[role] not in header:
            raise _missing_column(path, header, rows, columns, role)
    if not rows:
        raise DataError(f"{path}: the manifest lists no images (only its header)")
    has_split = columns["split"] in header
    has_patient = columns["patient"] in header
    root = path.parent
    by_id: dict[str, tuple[int, str]] = {}
    entries: list[tuple[str, str, str | None, str | None, Path]] = []
    missing: list[str] = []
    for line, r in rows:
        where = f"{path} line {line}"
        rel, label = r[columns["path"]], r[columns["label"]]
        if not rel:
            raise DataError(f"{where}: empty {columns['path']!r}; every row names an image")
        if not label:
            raise DataError(f"{where}: {rel} has an empty {columns['label']!r}; give its class")
        if _MULTI.search(label):
            raise DataError(
                f"{where}: label {label!r} names several classes: a multi-label manifest; "
                "this package trains one label per image")
        split = None
        if has_split:
            value = r[columns["split"]]
            split = SPLIT_ALIASES.get(value.lower())
            if split is None:
                raise DataError(
                    f"{where}: split {value!r} is not train, val or test (or "
                    f"{', '.join(a for a in SPLIT_ALIASES if a not in ('train', 'val', 'test'))})")
        patient = (r[columns["patient"]] or None) if has_patient else None
        norm = rel.replace("\\", "/")
        item_id = posixpath.normpath(norm) if not os.path.isabs(norm) else norm
        if item_id in by_id:
            first_line, first_label = by_id[item_id]
            why = (f"with the labels {first_label!r} and {label!r}: a multi-label manifest; this "
                   "package trains one label per image" if first_label != label
                   else "twice; list each image once")
            raise DataError(f"{where}: {rel} is listed on line {first_line} too, {why}")
        by_id[item_id] = (line, label)
        file = Path(norm) if os.path.isabs(norm) else root / norm
        if not file.is_file():
            missing.append(f"line {line}: {rel}")
        entries.append((item_id, label, split, patient, file))
    if missing:
        shown = "; ".join(missing[:_SHOWN])
        more = f" (and {len(missing) - _SHOWN} more)" if len(missing) > _SHOWN else ""
        raise DataError(
            f"{path}: {len(missing)} listed image(s) are not files: {shown}{more}. Paths are "
            f"relative to the manifest's folder {root}")
    names = {e[1] for e in entries}
    if len(names) < 2:
        raise DataError(f"{path}: every image has the label {next(iter(names))!r}; a "
                        "classification dataset needs at least 2 classes")
    classes = tuple(sorted(names, key=int) if _numeric(names) else sorted(names))
    if has_split and not any(e[2] == "train" for e in entries):
        raise DataError(f"{path}: no row has split train; the train split is required "
                        "(val and test are carved from it when absent)")
    index = {c: i for i, c in enumerate(classes)}
    items = [FileItem(id=i, split=s, label=index[lab]) for i, lab, s, _, _ in entries]
    files = {e[0]: e[4] for e in entries}
    h = hashlib.sha256()
    h.update(hashlib.sha256(data).digest())
    h.update(repr(sorted(columns.items())).encode())
    # Keyed by the CSV, not its folder: a folder source of the same folder keeps its own.
    hashes = _HashCache(os.path.realpath(path))
    manifest: dict[str, str] = {}
    for item_id, file in files.items():
        try:
            st = file.stat()
        except OSError as e:
            raise DataError(f"{path}: cannot read {item_id} ({e.strerror or e})") from e
        digest = hashes.sha256(str(file), item_id, st)
        manifest[item_id] = f"{st.st_size}:{digest[:16]}"
        h.update(f"F\t{item_id}\t{st.st_size}\t{digest}\n".encode())
    hashes.save()
    patients = {e[0]: e[3] for e in entries} if has_patient else None
    used = ", ".join(f"{r}={c}" for r, c in columns.items() if c in header)
    notes = [f"CSV manifest, columns {used}"]

    def read() -> FileSet:
        return FileSet(classes=classes, items=items,
                       payload=lambda item: str(files[item.id]), notes=list(notes))

    return Source(
        name=path.stem,
        location=str(path),
        kind="manifest",
        identity={"kind": "manifest", "sha256": h.hexdigest()},
        read=read,
        manifest=manifest,
        patients=patients,
        patient_column=columns["patient"] if has_patient else None,
    )
