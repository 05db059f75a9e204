"""A finished trial as a deployable model: its model card, and the check that an export
scores on test as the trial recorded."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from lightlayers.deploy.card import ModelCard
from lightlayers.deploy.errors import DeployError

if TYPE_CHECKING:
    from lightlayers.runfolder.trials import FinishedTrial

__all__ = ["TEST_PROB_TOLERANCE", "TEST_SCORE_TOLERANCE", "check_test_scores", "trial_card"]

# The trial's test metrics a card carries (those recorded; others are left out).
CARD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision",
                "f1", "auc", "test_loss", "threshold", "collapsed", "params_total", "size_mb")

# How far an fp32 export's test scores may lie from the trial's recorded ones: the same
# weights on the same images give the same predictions, up to float rounding in the AUC.
# Used only for trials that recorded no per-image probabilities.
TEST_SCORE_TOLERANCE = {"accuracy": 1e-6, "auc": 1e-4}
# How far an fp32 export's probability of any test image may lie from the one the trial
# recorded (the export's own check against PyTorch allows as much). Compared image by image,
# not through accuracy or AUC: a barely trained model scores near-ties, which float rounding
# reorders, moving the AUC while no probability moved by more than 1e-7.
TEST_PROB_TOLERANCE = 1e-4


def trial_card(trial: FinishedTrial, model: Any,
               lightlayers_version: str | None = None) -> ModelCard:
    """The model card of ``trial``'s model (fp32; the export fills in ``cam``)."""
    from lightlayers.version import __version__

    meta = trial.checkpoint_metadata()
    classes = json.loads(meta["classes"]) if "classes" in meta else trial.classes()
    loader = dict(trial.extra.get("loader") or {})
    image_size = int(meta.get("image_size", trial.extra.get("image_size", 0)))
    input_chans = int(model.model_info.in_chans)
    image_chans = 1 if loader.get("out_chans") == 3 and input_chans == 3 else input_chans
    crop = loader.get("crop")
    positive = (trial.meta.get("data") or {}).get("positive_class")
    metrics = {k: trial.row.get(k) for k in CARD_METRICS if trial.row.get(k) is not None}
    threshold = trial.row.get("threshold")
    proto = trial.extra.get("protocol") or trial.meta.get("protocol") or {}
    if proto.get("threshold", "argmax") == "argmax":
        threshold = None
    from lightlayers.data.preprocess import RESAMPLE
    from lightlayers.deploy.card import describe_preprocessing

    data = trial.meta.get("data") or {}
    kind = str((data.get("identity") or {}).get("kind") or "")
    resize = str(trial.config.get("resize") or "stretch")
    preprocessing = describe_preprocessing(
        source_kind=kind, source_name=str(data.get("name") or ""), resize=resize,
        image_size=image_size, image_chans=image_chans, input_chans=input_chans,
        crop=None if crop is None else int(crop), mean=loader.get("mean"),
        std=loader.get("std"))
    if preprocessing["source_cut"].startswith("centre square") and resize == "stretch":
        # The training images are the source's centre squares: a new X-ray must be cut
        # the same way, or predict would squash it into a shape the model never saw.
        resize = "crop"
        preprocessing["resize"] = preprocessing["resize"].replace(
            "stretch: whole image to the square side, aspect ratio ignored",
            "crop: centre square, then to the side (as the source cut its images)")

    return ModelCard(
        model=trial.model_name, seed=trial.seed, protocol=str(trial.row["protocol"]),
        trial=str(trial.row.get("key", "")), classes=list(classes),
        positive_class=None if positive is None else int(positive),
        threshold=None if threshold is None else float(threshold),
        image_size=image_size, image_chans=image_chans,
        resize=resize, resample=RESAMPLE,
        crop=None if crop is None else int(crop), input_chans=input_chans,
        input_size=int(crop or image_size),
        mean=loader.get("mean"), std=loader.get("std"), data=str(trial.row.get("data", "")),
        data_fingerprint=trial.meta.get("data_fingerprint") or {},
        test_metrics=metrics, weights=str(trial.extra.get("weights") or "none"),
        precision="fp32", lightlayers_version=lightlayers_version or __version__,
        cam=False, chosen_on=trial.chosen_on(), preprocessing=preprocessing,
    )


def check_test_scores(trial: FinishedTrial, measured: dict[str, Any], what: str) -> str | None:
    """Compare ``measured`` (an fp32 export's test accuracy and AUC) with the trial's
    recorded ones (those of ``trial``): a :class:`DeployError` when they differ beyond
    :data:`TEST_SCORE_TOLERANCE`, else None; or, when the recorded scores are not those of
    a plain fp32 evaluation of these weights on the CPU, the reason they are not compared."""
    proto = trial.extra.get("protocol") or {}
    device = str(trial.extra.get("device") or "cpu")
    if proto.get("tta"):
        return "the recorded test scores average test-time augmented views: not compared"
    if not device.startswith("cpu") or trial.extra.get("amp"):
        # cuDNN's TF32 convolutions or bf16 autocast round otherwise than the CPU does.
        return (f"the recorded test scores were computed on {device}"
                f"{' in ' + str(trial.extra['amp']) if trial.extra.get('amp') else ''}: "
                "not compared")
    recorded = trial.recorded_predictions()
    got_p = measured.get("probs")
    if recorded is not None and got_p is not None and \
            np.shape(recorded["probs"]) == np.shape(got_p) and \
            np.array_equal(recorded["labels"], np.asarray(measured.get("labels"))):
        worst = float(np.max(np.abs(np.asarray(got_p) - recorded["probs"]), initial=0.0))
        if worst <= TEST_PROB_TOLERANCE:
            return None
        raise DeployError(
            f"the {what} of {trial.label} predicts otherwise on the {len(got_p)} test "
            f"images than the trial recorded (a probability differs by {worst:.2e} > "
            f"{TEST_PROB_TOLERANCE:.0e}); nothing written. Its checkpoint is not the model "
            "the trial measured, or this lightlayers rebuilds it otherwise: export with "
            "the version that trained it, or rerun the trial into a new run folder")
    differ = []
    for name, tolerance in TEST_SCORE_TOLERANCE.items():
        got, want = measured.get(name), trial.row.get(name)
        if got is None or want is None:
            continue
        got, want = float(got), float(want)
        if math.isnan(got) and math.isnan(want):  # undefined both times (one class only)
            continue
        if not abs(got - want) <= tolerance:
            differ.append(f"{name} {got:.6f}, recorded {want:.6f}")
    if differ:
        n = len(measured["labels"]) if measured.get("labels") is not None else None
        images = f"the {n} test images" if n is not None else "the test split"
        raise DeployError(
            f"the {what} of {trial.label} scores otherwise on {images} than the trial "
            f"recorded ({'; '.join(differ)}; tolerance "
            f"{TEST_SCORE_TOLERANCE['accuracy']:.0e} accuracy, "
            f"{TEST_SCORE_TOLERANCE['auc']:.0e} AUC); nothing written. This lightlayers "
            "does not rebuild the model the trial measured: export with the version that "
            "trained it, or rerun the trial into a new run folder")
    return None
