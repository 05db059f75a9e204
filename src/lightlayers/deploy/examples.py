"""Where a trained model looked on a few test images: Grad-CAM heatmaps of its most confident
true positives, false positives and false negatives (for a task with a positive class; else
its most confident right and wrong answers), as one figure.

The images are chosen from the test predictions the run recorded (nothing is chosen on a
recomputation); the maps are computed by the module that ``lightlayers export`` writes
(:class:`~lightlayers.deploy.graph.Deployable`, checked against Captum there), in PyTorch on
the CPU, on the images as the model saw them. Each panel shows the map of the class the model
predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lightlayers.deploy.errors import DeployError

__all__ = ["CamExample", "cam_examples", "cam_figure", "write_cam_figure"]


@dataclass(frozen=True)
class CamExample:
    kind: str  # "true positive", "false positive", "false negative", "right", "wrong"
    index: int  # in the test split
    label: str
    predicted: str
    probability: float  # of the predicted class
    overlay: np.ndarray  # uint8 RGB (S, S, 3): the map over the image
    layer: str = ""  # which layer's map, and its side (graph.CamLayer.label)
    # No position raised the class score: the panel shows the image alone, and says so.
    overlay_blank: bool = False


def _choose(probs: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
            positive: int | None, per_kind: int) -> dict[str, list[int]]:
    """Test indices of each kind, the most confident first."""
    if positive is not None and probs.shape[1] == 2:
        p = probs[:, positive]
        kinds = {
            "true positive": ((labels == positive) & (predicted == positive), -p),
            "false positive": ((labels != positive) & (predicted == positive), -p),
            "false negative": ((labels == positive) & (predicted != positive), p),
        }
    else:
        conf = probs[np.arange(len(probs)), predicted]
        kinds = {"right": (labels == predicted, -conf), "wrong": (labels != predicted, -conf)}
    out = {}
    for kind, (mask, key) in kinds.items():
        idx = np.flatnonzero(mask)
        out[kind] = [int(i) for i in idx[np.argsort(key[idx], kind="stable")][:per_kind]]
    return out


def cam_examples(run_dir: str | Path, model: str | None = None, seed: int | None = None,
                 per_kind: int = 3, data: str | None = None,
                 cam_min_side: int | None = None, datasets: dict[Any, Any] | None = None
                 ) -> dict[str, list[CamExample]]:
    """Up to ``per_kind`` examples of each kind for the trial of ``run_dir`` that
    ``lightlayers export`` would choose (``model``/``seed`` pin it), on the last layer whose
    map is at least ``cam_min_side`` (default :data:`~lightlayers.deploy.graph.CAM_MIN_SIDE`)
    on each side; a :class:`DeployError` saying "map too coarse: ..." when no layer is.
    ``datasets``: decoded data shared between calls (:meth:`Trial.load_data`'s cache)."""
    import torch

    from lightlayers.data import Split
    from lightlayers.deploy.cam import overlay
    from lightlayers.deploy.export import batches, deployable_for
    from lightlayers.deploy.predict import _crop
    from lightlayers.deploy.trial import trial_card
    from lightlayers.runfolder.trials import choose_trial

    trial, _, _ = choose_trial(run_dir, model, seed)
    recorded = trial.recorded_predictions()
    if recorded is None:
        raise DeployError(f"{run_dir}: {trial.label} recorded no test predictions; rerun it "
                          "with `lightlayers run` into a new folder")
    net = trial.build_model()
    card = trial_card(trial, net)
    # The plain module: the figure draws its own choice of layer, by Captum where earlier.
    deployable, _ = deployable_for(net, card, finer_cam=False)
    if not deployable.with_cam:
        raise DeployError(f"{trial.label} has no global average pooling: no Grad-CAM maps")
    from lightlayers.deploy.graph import CAM_MIN_SIDE, choose_cam_layer, layer_cam

    layer = choose_cam_layer(deployable, torch.zeros(1, card.input_chans, card.input_size,
                                                      card.input_size),
                             CAM_MIN_SIDE if cam_min_side is None else cam_min_side)
    if isinstance(layer, str):
        raise DeployError(layer)
    probs, labels = recorded["probs"], recorded["labels"]
    predicted = card.predicted(probs)
    chosen = _choose(probs, labels, predicted, card.positive_class, per_kind)
    test = trial.load_data(data, cache=datasets).splits["test"]
    if len(test) != len(labels):
        raise DeployError(f"{run_dir}: the test split has {len(test)} images, the recorded "
                          f"predictions {len(labels)}; pass --data with the run's data")
    wanted = sorted({i for idx in chosen.values() for i in idx})
    if not wanted:
        return {kind: [] for kind in chosen}
    images = np.ascontiguousarray(np.asarray(test.images)[wanted])
    x = next(batches(Split(images, labels[wanted], None), card, batch_size=len(wanted)))[0]
    cams = layer_cam(deployable, layer, torch.from_numpy(x),
                     torch.from_numpy(np.asarray(predicted[wanted], dtype=np.int64)))
    row = {i: n for n, i in enumerate(wanted)}
    out: dict[str, list[CamExample]] = {}
    for kind, idx in chosen.items():
        out[kind] = []
        for i in idx:
            pred = int(predicted[i])
            heat = overlay(_crop(images[row[i]], card), cams[row[i]].numpy())
            out[kind].append(CamExample(kind, i, card.classes[int(labels[i])],
                                        card.classes[pred], float(probs[i, pred]), heat,
                                        layer.label, float(cams[row[i]].max()) <= 0))
    return out


def cam_figure(examples: dict[str, list[CamExample]], title: str = "") -> Any:
    """A matplotlib ``Figure``: one row per kind, one panel per example (true and predicted
    class, probability); a kind without examples says so."""
    from matplotlib.figure import Figure

    from lightlayers.deploy.cam import colorbar

    kinds = list(examples)
    cols = max(1, max((len(v) for v in examples.values()), default=1))
    fig = Figure(figsize=(2.4 * cols + 1.0, 2.6 * len(kinds) + 0.3), layout="constrained")
    axes = fig.subplots(len(kinds), cols, squeeze=False)
    colorbar(fig, axes.ravel().tolist())
    layers = sorted({e.layer for v in examples.values() for e in v if e.layer})
    if layers:
        title = f"{title}\nGrad-CAM of the predicted class on {'; '.join(layers)}".strip()
    for r, kind in enumerate(kinds):
        for c in range(cols):
            ax: Any = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(examples[kind]):
                e = examples[kind][c]
                ax.imshow(e.overlay)
                flat = " (map all 0)" if e.overlay_blank else ""
                ax.set_title(f"true {e.label}\npred {e.predicted} {e.probability:.2f}{flat}",
                             fontsize=8)
            elif c == 0:
                ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=9)
        axes[r][0].set_ylabel(kind, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def write_cam_figure(examples: dict[str, list[CamExample]], path: str | Path,
                     title: str = "") -> Path:
    """:func:`cam_figure` as an image file (PNG, or any format matplotlib writes by suffix)."""
    import io

    from lightlayers.outputs import write_atomic

    buf = io.BytesIO()
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    cam_figure(examples, title).savefig(buf, format=fmt, dpi=100)
    return write_atomic(Path(path), buf.getvalue())
