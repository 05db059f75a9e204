"""Knowledge distillation (protocol ``teacher``): the loss by hand, a student that learns from
the teacher's soft targets alone, what a trial records, and teachers that cannot teach."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightlayers.cli import main as cli
from lightlayers.config import ConfigError, Protocol, load_config
from lightlayers.runfolder.store import ResultsStore
from lightlayers.teacher import parse_teacher
from lightlayers.train import _Stepper

# 16 px digits: paper-conv learns them in 5 epochs (test accuracy about 0.97 here), while
# paper-light-k1 at this learning rate is still near 0.4.
# Two threads, fixed: the default is the free cores, so a busy machine (or a larger one) would
# change the order of the sums and with it these few-epoch numbers.
COMMON = ["--data", "digits", "--threads", "2", "--seeds", "0", "--epochs", "5", "--size",
          "16", "--protocol", "seed", "--quiet", "--no-report", "--set", "bn_momentum=0.1"]
STUDENT = ["run", *COMMON, "--models", "paper-light-k1", "--lr", "0.03"]


def test_parse_teacher() -> None:
    assert parse_teacher("runs/a") == (Path("runs/a"), None)
    assert parse_teacher("runs/a:study-conv") == (Path("runs/a"), ["study-conv"])
    assert parse_teacher("runs/a:study-conv+study-residual-conv") == (
        Path("runs/a"), ["study-conv", "study-residual-conv"])
    assert parse_teacher("C:/runs/a") == (Path("C:/runs/a"), None)  # a ':' in the path


def test_distillation_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    soft = torch.tensor([[0.7, 0.1, 0.2], [0.2, 0.2, 0.6]])
    hard = F.cross_entropy(logits, torch.tensor([0, 2]))
    for t, w in ((4.0, 0.5), (2.0, 0.0), (1.0, 1.0)):
        step = _Stepper.__new__(_Stepper)
        step.protocol = replace(Protocol(), distill_temperature=t, distill_weight=w)
        student = torch.softmax(logits / t, 1)
        kl = (soft * (soft.log() - student.log())).sum(1).mean()  # KL(teacher || student)
        want = (1 - w) * hard + w * t * t * kl
        assert step._distilled(hard, logits, soft) == pytest.approx(want.item(), rel=1e-6)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert cli(["run", *COMMON, "--models", "paper-conv", "--lr", "0.001", "--out",
                str(out)]) == 0
    return out


def _trial(out: Path) -> dict:
    with ResultsStore(out / "results.db", create=False) as store:
        (t,) = store.trials()
    return t


def test_a_student_learns_from_the_soft_targets_alone(teacher_run: Path, tmp_path: Path
                                                      ) -> None:
    # distill_weight 1: the labels are not in the loss at all. Uninformative soft targets
    # would leave the student at chance (0.1); the teacher's carry it far above.
    out = tmp_path / "student"
    assert cli([*STUDENT, "--set", f"teacher={teacher_run}:paper-conv", "--set",
                "distill_weight=1", "--out", str(out)]) == 0
    t = _trial(out)
    assert t["status"] == "done" and t["accuracy"] > 0.3, t["accuracy"]
    record = t["extra"]["teacher"]
    teacher = _trial(teacher_run)
    assert record["trials"] == [teacher["key"]]
    assert record["checkpoint_sha256"] == [hashlib.sha256(
        (teacher_run / teacher["checkpoint"]).read_bytes()).hexdigest()]
    assert t["extra"]["protocol"]["distill_weight"] == 1.0
    assert any(n.startswith("distilled from 1 teacher trial") for n in t["extra"]["notes"])


def test_distilling_beats_the_labels_alone(teacher_run: Path, tmp_path: Path) -> None:
    accuracy = {}
    for name, extra in (("plain", []), ("weight 0", ["--set", "distill_weight=0"]),
                        ("weight 0.9", ["--set", "distill_weight=0.9"])):
        out = tmp_path / name.replace(" ", "-")
        teacher = [] if name == "plain" else ["--set", f"teacher={teacher_run}"]
        assert cli([*STUDENT, *teacher, *extra, "--out", str(out)]) == 0
        accuracy[name] = _trial(out)["accuracy"]
    # Weight 0 is the labels' loss exactly: the same trial as without a teacher.
    assert accuracy["weight 0"] == accuracy["plain"]
    assert accuracy["weight 0.9"] > accuracy["plain"] + 0.1, accuracy


def test_a_teacher_on_other_data_or_inputs_fails_the_trial_with_the_reason(
        teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "other-size"
    assert cli(["run", *COMMON[:-4], "--size", "12", "--quiet", "--no-report", "--models",
                "paper-light-k1", "--set", f"teacher={teacher_run}", "--out", str(out)]) == 1
    t = _trial(out)
    assert t["status"] == "failed" and "saw other inputs (16 px" in t["error"]
    out = tmp_path / "unknown-model"
    assert cli([*STUDENT, "--set", f"teacher={teacher_run}:study-conv", "--out", str(out)]) == 1
    assert "has no finished trial of study-conv; its models: paper-conv" in _trial(out)["error"]


def test_a_teacher_that_is_no_run_folder_is_refused_at_once(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="is not a run folder"):
        load_config(None, data="digits", protocol_overrides={"teacher": str(tmp_path)}
                    ).resolved_protocol()
    assert cli([*STUDENT, "--set", f"teacher={tmp_path / 'nope'}", "--out",
                str(tmp_path / "run")]) == 2
    assert "is not a run folder (no results.db)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
