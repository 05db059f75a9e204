"""Test-time augmentation (protocol ``tta``): the test probabilities are the mean over the
image and N views augmented as in training; training itself is untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lightlayers.cli import main as cli
from lightlayers.config import ConfigError, load_config
from lightlayers.data import DeviceLoader, load_dataset
from lightlayers.runfolder.store import ResultsStore
from lightlayers.runfolder.trials import find_trials
from lightlayers.train import evaluate

RUN = ["run", "--data", "digits", "--models", "study-light-k1", "--seeds", "0", "--epochs",
       "1", "--size", "16", "--protocol", "improved", "--quiet", "--no-report"]


def _stored(out: Path) -> tuple[dict, dict]:
    with ResultsStore(out / "results.db", create=False) as store:
        (t,) = store.trials()
        return t, store.predictions(t["id"])


def test_tta_averages_augmented_views_and_leaves_training_alone(tmp_path: Path) -> None:
    assert cli([*RUN, "--out", str(tmp_path / "plain")]) == 0
    assert cli([*RUN, "--set", "tta=3", "--out", str(tmp_path / "tta")]) == 0
    plain, p_plain = _stored(tmp_path / "plain")
    tta, p_tta = _stored(tmp_path / "tta")
    # The same training: the same weights, to the bit.
    a = load_file(str(tmp_path / "plain" / plain["checkpoint"]))
    b = load_file(str(tmp_path / "tta" / tta["checkpoint"]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not np.allclose(p_plain["probs"], p_tta["probs"])
    assert any(n.startswith("test-time augmentation: test probabilities averaged over the "
                            "image and 3") for n in tta["extra"]["notes"])
    # Rebuilt by hand: the image and three views of the training augmentation, averaged.
    (trial,) = find_trials(tmp_path / "tta")
    model = trial.build_model()
    ds = load_dataset("digits", size=16)
    aug = load_config(None, data="digits", protocol="improved").resolved_protocol().augment
    lo = trial.extra["loader"]
    views = [p_plain["probs"]] + [
        evaluate(model, DeviceLoader(ds.splits["test"], 64, "cpu", seed=1_000 + v,
                                     augment=aug, **lo), torch.device("cpu")).probs
        for v in range(3)]
    np.testing.assert_allclose(p_tta["probs"], np.mean(views, axis=0), atol=1e-5)
    assert tta["accuracy"] == pytest.approx(
        np.mean(np.asarray(p_tta["probs"]).argmax(1) == p_tta["labels"]))


def test_tta_needs_augmentation() -> None:
    with pytest.raises(ConfigError, match="augments nothing"):
        load_config(None, data="digits", protocol="seed", protocol_overrides={"tta": 2})
    with pytest.raises(ConfigError, match="tta: must be >= 0"):
        load_config(None, data="digits", protocol="improved",
                    protocol_overrides={"tta": -1}).resolved_protocol()
