"""Predict with an exported model on image files, folders and archives.

Every image is decoded by the data package's own decoder
(:func:`lightlayers.data.preprocess.decode_image`) at the size, channels and resize mode the
model card names, then converted by :class:`lightlayers.data.DeviceLoader` with the card's
crop and normalisation: the very code training used. An image that cannot be decoded is
reported and skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.deploy.card import ModelCard
from lightlayers.deploy.errors import DeployError
from lightlayers.outputs import OutputFolder

__all__ = ["Item", "Prediction", "gather_inputs", "parse_model", "predict"]


@dataclass(frozen=True)
class Item:
    """One input image: the path shown for it, a short id (for file names) and its bytes or
    its local path."""

    path: str
    rel: str
    payload: bytes | str


@dataclass
class Prediction:
    path: str
    predicted: str
    probabilities: dict[str, float]
    cam: str | None = None


@dataclass
class Outcome:
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # Why no heatmap was drawn although one was asked for ("map too coarse: ..."), else None.
    cam_note: str | None = None


def _walk_images(root: Path) -> Iterator[str]:
    """Image files below ``root`` (relative posix paths, sorted); hidden files and folders
    are left out, symlinked folders are not followed (no loops). Named pipes, sockets and
    devices named like images are listed too: the decoder refuses them unopened, so each is
    reported as skipped with what it is."""
    from lightlayers.data.sources.tree import _is_image

    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        rel_dir = Path(folder).relative_to(root).as_posix()
        for name in sorted(files):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if _is_image(rel):
                yield rel


def gather_inputs(inputs: list[str]) -> list[Item]:
    """The images of ``inputs``: image files (any file named is tried), folders (their image
    files, recursively) and .tar(.gz)/.tgz/.zip archives (their image members, read in place
    within the data package's archive limits). A file named here that is not a regular file
    (a named pipe, socket or device) is an error: reading it could block forever."""
    from lightlayers.data import DataError
    from lightlayers.data.preprocess import max_image_pixels, special_file_kind
    from lightlayers.data.sources.tree import _read_archive, is_archive

    try:
        max_image_pixels()  # a bad override is one error now, not one per image later
    except DataError as e:
        raise DeployError(str(e)) from e
    items: list[Item] = []
    for text in inputs:
        p = Path(text).expanduser()
        if not p.exists():
            raise DeployError(f"{p} does not exist; give image files, folders or archives "
                              "(.tar.gz/.tgz/.zip)")
        kind = special_file_kind(p.stat().st_mode)
        if kind is not None and kind != "a folder":
            raise DeployError(f"{p} is {kind}, not an image file; give image files, folders "
                              "or archives (.tar.gz/.tgz/.zip)")
        if p.is_dir():
            found = [Item(str(p / rel), rel, str(p / rel)) for rel in _walk_images(p)]
            if not found:
                raise DeployError(f"{p}: no image files found (looked for .png, .jpg, "
                                  ".jpeg, .bmp, .tif, ...)")
            items += found
        elif is_archive(p):
            try:
                blobs, _, _ = _read_archive(p)
            except DataError as e:
                raise DeployError(str(e)) from e
            if not blobs:
                raise DeployError(f"{p}: no image files in the archive")
            items += [Item(f"{p}/{m}", m, blobs[m]) for m in sorted(blobs)]
        else:
            items.append(Item(str(p), p.name, str(p)))
    return items


def parse_model(text: str) -> tuple[Path, str | None, int | None]:
    """``FILE``, ``RUN_DIR``, ``RUN_DIR:MODEL`` or ``RUN_DIR:MODEL:SEED`` (``RUN_DIR::SEED``
    too) -> (path, model, seed)."""
    if Path(text).exists():
        return Path(text), None, None
    for n in (1, 2):
        parts = text.rsplit(":", n)
        if len(parts) == n + 1 and Path(parts[0]).is_dir():
            model = parts[1] or None
            seed = None
            if n == 2:
                if not parts[2].lstrip("-").isdigit():
                    raise DeployError(f"{text}: the seed after the second ':' must be an "
                                      f"integer, got {parts[2]!r}")
                seed = int(parts[2])
            return Path(parts[0]), model, seed
    raise DeployError(f"{text} does not exist; give an exported .onnx file or a run folder "
                      "(RUN_DIR, RUN_DIR:MODEL or RUN_DIR:MODEL:SEED)")


def _slug(rel: str) -> str:
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__")).strip("_") or "image"


def _to_nchw(arrays: list[np.ndarray], chans: int) -> np.ndarray:
    """Decoded (H, W) / (H, W, 3) images as one (N, C, H, W) uint8 batch."""
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), chans, h, w), np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a if a.ndim == 2 else a.transpose(2, 0, 1)
    return out


def _crop(u8: np.ndarray, card: ModelCard) -> np.ndarray:
    """The center crop DeviceLoader takes (the image the model sees, before normalising)."""
    c = card.crop
    h, w = u8.shape[-2:]
    if c is None or c >= min(h, w):
        return u8
    top, left = (h - c) // 2, (w - c) // 2
    return u8[..., top:top + c, left:left + c]


def predict(run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
            card: ModelCard, items: list[Item], batch_size: int = 64,
            cam_dir: OutputFolder | None = None, progress: bool = True,
            cam_min_side: int | None = None) -> Outcome:
    """Predict every item; with ``cam_dir``, write one Grad-CAM PNG per image there (heatmaps
    an earlier prediction wrote there and this one does not are removed, so every heatmap in
    the folder belongs to these predictions), labelled with the predicted class and its
    probability. The file's map smaller than ``cam_min_side`` (default
    :data:`~lightlayers.deploy.graph.CAM_MIN_SIDE`) on a side draws nothing: the outcome's
    ``cam_note`` says so in one line."""
    from lightlayers.deploy.graph import CAM_MIN_SIDE, coarse_note

    min_side = CAM_MIN_SIDE if cam_min_side is None else cam_min_side
    from lightlayers.data import DeviceLoader, Split
    from lightlayers.data.preprocess import _decode_job, _progress, parallel_map

    if cam_dir is not None and not card.cam:
        raise DeployError(f"{card.model}: the model file carries no Grad-CAM output (the model "
                          "has no global average pooling); predict without --cam")
    out = Outcome()
    names: set[str] = set()
    advance, stop = _progress(len(items), "predicting", progress)
    jobs = ((it.payload, card.image_size, card.image_chans, card.resize) for it in items)
    decoded = parallel_map(_decode_job, jobs, len(items), "decoding", False)
    pending: list[tuple[Item, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        batch = [a for _, a in pending]
        u8 = _to_nchw(batch, card.image_chans)  # a grey (H, W) image fills every channel
        split = Split(u8, np.zeros(len(u8), np.int64), None)
        x = next(iter(DeviceLoader(split, len(u8), "cpu", **card.loader_options())))[0]
        probs, cams = run(np.ascontiguousarray(x.numpy(), dtype=np.float32))
        pred = card.predicted(probs)
        for i, (it, _) in enumerate(pending):
            row = Prediction(it.path, card.classes[int(pred[i])],
                             {c: float(probs[i, j]) for j, c in enumerate(card.classes)})
            if cam_dir is not None and cams is not None:
                side = card.cam_side or int(min(cams.shape[-2:]))
                if side < min_side:
                    out.cam_note = coarse_note(side, card.input_size, min_side)
                else:
                    j = int(pred[i])
                    title = f"predicted {card.classes[j]} ({float(probs[i, j]):.2f})"
                    row.cam = str(_write_cam(cam_dir, it, names, _crop(u8[i], card),
                                             cams[i, j], title, side))
            out.predictions.append(row)
        advance(len(pending))
        pending.clear()

    try:
        for it, result in zip(items, decoded, strict=True):
            if isinstance(result, str):
                out.skipped.append((it.path, result))
                advance(1)
                continue
            pending.append((it, result[0]))
            if len(pending) == batch_size:
                flush()
        flush()
    finally:
        stop()
    if cam_dir is not None:
        for rel in list(cam_dir.owned(suffixes=(".png",))):
            if rel.removesuffix(".png") not in names:
                cam_dir.remove(rel)
    return out


def _write_cam(cam_dir: OutputFolder, item: Item, taken: set[str], image: np.ndarray,
               cam: np.ndarray, title: str, side: int) -> Path:
    from lightlayers.deploy.cam import labelled_png, overlay

    base = _slug(item.rel)
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return cam_dir.write(f"{name}.png", labelled_png(overlay(image, cam), title, side))


def csv_text(outcome: Outcome, card: ModelCard) -> str:
    import io

    from lightlayers import csvsafe

    buf = io.StringIO()
    # Paths and class names are the user's files' and folders' names: one named like a
    # formula is written as text.
    w = csvsafe.writer(buf, lineterminator="\n")
    with_cam = any(p.cam for p in outcome.predictions)
    # "path,predicted," stays the header's start: an earlier predictions file is recognised
    # by it. Model, trial and threshold on every row: a file passed on alone still says
    # which model decided and at which cut-off.
    threshold = "argmax" if card.threshold is None else repr(float(card.threshold))
    w.writerow(["path", "predicted", *[f"prob_{c}" for c in card.classes],
                "model", "trial", "threshold", *(["cam"] if with_cam else [])])
    for p in outcome.predictions:
        w.writerow([p.path, p.predicted, *[f"{p.probabilities[c]:.6g}" for c in card.classes],
                    card.model, card.trial, threshold,
                    *([p.cam or ""] if with_cam else [])])
    return buf.getvalue()


def json_object(outcome: Outcome, card: ModelCard) -> dict[str, Any]:
    return {
        "model": {"model": card.model, "seed": card.seed, "precision": card.precision,
                  "classes": card.classes, "threshold": card.threshold},
        "predictions": [{"path": p.path, "predicted": p.predicted,
                         "probabilities": p.probabilities, "cam": p.cam}
                        for p in outcome.predictions],
        "skipped": [{"path": f, "reason": r} for f, r in outcome.skipped],
    }
