"""What a run folder is bound to: its data's content, classes and split, not a path's spelling."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from lightlayers.data import Dataset


def data_key(ds: Dataset) -> str:
    return f"{ds.name}@{ds.identity['cache_key'][:12]}"


# Identity fields of a loaded dataset that name where it was read, not what it holds.
_WHERE = ("source", "cache_key", "cache_path", "options")


# Decode options that do not change which images are in which split.
_DECODE_ONLY = ("size", "in_chans", "resize", "resample", "out_chans", "chans")


def data_fingerprint(ds: Dataset) -> dict[str, Any]:
    """What a run folder is bound to: the data's content (its source's own hash, whatever the
    path's spelling) and how it was split; not the decode size, which differs per model."""
    content = {k: v for k, v in ds.identity.items() if k not in _WHERE}
    split = {k: v for k, v in ds.identity.get("options", {}).items() if k not in _DECODE_ONLY}
    split["members"] = {name: _members_digest(s) for name, s in ds.splits.items()}
    return _jsonable({"name": ds.name, "content": content, "split": split,
                      "classes": list(ds.classes)})


def same_data(recorded: dict[str, Any] | None, now: dict[str, Any] | None) -> bool:
    """Whether two fingerprints name the same data: the same content, classes and images in
    each split. How the splits were drawn (the patient rule, the carved fraction) is recorded
    beside them but is not compared: a folder whose splits an upgraded rule draws identically
    (digits, an .npz, images without patient names) keeps its trials."""
    if not recorded or not now:
        return recorded == now
    return essential(recorded) == essential(now)


def essential(fp: dict[str, Any]) -> dict[str, Any]:
    """The parts of a fingerprint :func:`same_data` compares."""
    split = fp.get("split") or {}
    return {"name": fp.get("name"), "content": fp.get("content"), "classes": fp.get("classes"),
            "members": split.get("members")}


def _members_digest(split: Any) -> str:
    """Which images a split holds (their ids, or for array sources their labels in order)."""
    import hashlib

    h = hashlib.sha256(str(len(split)).encode())
    if split.ids is not None:
        h.update("\n".join(map(str, split.ids)).encode())
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return f"{len(split)}:{h.hexdigest()[:16]}"


def _data_change(previous: dict[str, Any], now: dict[str, Any],
                 files_old: Any = None, files_new: Any = None) -> str:
    """How the data differs from a run folder's, in words (file by file when both manifests,
    file -> size and content hash, are known)."""
    if previous.get("content") != now.get("content"):
        old, new = previous.get("content", {}), now.get("content", {})
        if isinstance(files_old, dict) and isinstance(files_new, dict):
            added = len(set(files_new) - set(files_old))
            removed = len(set(files_old) - set(files_new))
            modified = sum(files_old[f] != files_new[f] for f in set(files_old) & set(files_new))
            return f"{added} file(s) added, {removed} removed, {modified} modified"
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return "its content differs (" + ", ".join(
            f"{k}: {str(old.get(k))[:16]} -> {str(new.get(k))[:16]}" for k in changed) + ")"
    if previous.get("classes") != now.get("classes"):
        return f"its classes differ ({previous.get('classes')} -> {now.get('classes')})"
    # Only what differs: a split rule changed by an upgrade (patient grouping) reads as such.
    old, new = previous.get("split") or {}, now.get("split") or {}
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if k != "members" and old.get(k) != new.get(k)]
    om, nm = old.get("members") or {}, new.get("members") or {}
    moved = [s for s in sorted(set(om) | set(nm)) if om.get(s) != nm.get(s)]
    if moved:
        changed.append(f"other images in {', '.join(moved)}")
    return f"it is split differently ({'; '.join(changed) or 'same split recorded otherwise'})"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
