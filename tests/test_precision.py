"""amp: auto / memory_format: auto on the CPU: bf16-unit detection, the timed choice, what a
trial records of it, its cache, and bf16 training itself, on PneumoniaMNIST's images."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightlayers.cli import main as cli
from lightlayers.config import IMPROVED, ConfigError, load_config
from lightlayers.data import DeviceLoader, Split, load_dataset
from lightlayers.models import create_model
from lightlayers.precision import (
    bf16_units,
    choice_key,
    cpu_candidates,
    cpu_flags,
    forget_choices,
)
from lightlayers.train import fit

NPZ = "chest_xray_pneumonia/pneumoniamnist_28_reconstructed.npz"
CPU = torch.device("cpu")
FOUR = ["fp32 contiguous", "fp32 channels_last", "bf16 contiguous", "bf16 channels_last"]
HAS_BF16 = bf16_units() is not None


@pytest.fixture(scope="module")
def small(shared_data: Path):
    """PneumoniaMNIST at 28 px, 192 training and 64 validation images."""
    ds = load_dataset(shared_data / NPZ, progress=False)
    keep = {"train": 192, "val": 64, "test": 64}
    splits = {k: Split(s.images[:keep[k]], s.labels[:keep[k]],
                       None if s.ids is None else s.ids[:keep[k]])
              for k, s in ds.splits.items()}
    return dataclasses.replace(ds, splits=splits)


def _fit(ds, name: str, **changes):
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, in_chans=1)
    proto = dataclasses.replace(IMPROVED, epochs=1, batch_size=64, **changes)
    train = DeviceLoader(ds.splits["train"], 64, CPU, shuffle=True, seed=0,
                         augment=proto.augment)
    val = DeviceLoader(ds.splits["val"], 64, CPU)
    result = fit(model, train, val, proto, CPU, train_labels=np.asarray(ds.splits["train"].labels),
                 num_classes=2, positive_class=ds.positive_class)
    return model, result


# --- detection -----------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "unit"), [
    ("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni", "avx512_bf16"),
    ("fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "amx_bf16"),
    ("fpu sse2 avx2 fma avx512f avx512_vnni", None),
    ("fpu sse2 avx2", None),
])
def test_bf16_units_are_read_from_the_cpu_flags(flags, unit):
    cpuinfo = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    assert bf16_units(cpu_flags(cpuinfo)) == unit


def test_auto_is_fp32_on_a_cpu_without_bf16_units():
    units = bf16_units(cpu_flags("flags\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"))
    cands, reason = cpu_candidates("auto", "auto", units)
    assert [c.label for c in cands] == ["fp32 contiguous"]
    assert reason is not None and "no bf16 units" in reason
    # An explicit layout is kept.
    cands, _ = cpu_candidates("auto", "channels_last", units)
    assert [c.label for c in cands] == ["fp32 channels_last"]


def test_auto_on_a_cpu_with_bf16_times_precision_and_layout_together():
    cands, reason = cpu_candidates("auto", "auto", "avx512_bf16")
    assert [c.label for c in cands] == FOUR and reason is None
    cands, _ = cpu_candidates("auto", "contiguous", "amx_bf16")
    assert [c.label for c in cands] == ["fp32 contiguous", "bf16 contiguous"]


# --- the choice in a trial -----------------------------------------------------------------
def test_a_trial_with_amp_auto_records_its_timed_choice(shared_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["run", "--data", str(shared_data / NPZ), "--models", "study-light-k1",
                "--seeds", "0", "--protocol", "improved", "--epochs", "1", "--threads", "1",
                "--train-sizes", "30", "--no-report", "--set", "amp=auto", "--out", str(out),
                "--json"]) == 0
    (shown,) = json.loads(capsys.readouterr().out)["trials"]
    with sqlite3.connect(out / "results.db") as c:
        extra = json.loads(c.execute("SELECT extra FROM trials").fetchone()[0])
    precision = extra["speed"]["precision"]
    assert shown["precision"] == precision["chosen"]
    # The report says which precision the numbers were trained in.
    assert cli(["report", str(out), "--format", "md", "--quiet"]) == 0
    assert (f"study-light-k1: amp auto trained in {precision['chosen']} (1 of 1 seeds)"
            in (out / "report" / "table.md").read_text())
    if not HAS_BF16:
        assert precision["chosen"] == "fp32 contiguous" and extra["amp"] is None
        assert "no bf16 units" in precision["reason"]
        return
    assert precision["candidates"] == FOUR
    assert set(precision["step_ms"]) == set(FOUR)
    assert all(v > 0 for v in precision["step_ms"].values())
    # The fastest one is kept, and the trial trained and was tested with it.
    assert precision["chosen"] == min(precision["step_ms"], key=precision["step_ms"].get)
    bf16, layout = precision["chosen"].split()
    assert extra["amp"] == ("bf16" if bf16 == "bf16" else None)
    assert extra["speed"]["memory_format"] == layout
    assert any(n.startswith("amp auto: " + precision["chosen"]) for n in extra["notes"])


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units: auto times nothing")
def test_the_timed_choice_leaves_training_as_the_chosen_settings_give_it(small):
    forget_choices()
    _, auto = _fit(small, "study-light-k1", amp="auto")
    rec = auto.speed["precision"]
    assert not rec["cached"] and rec["choose_s"] > 0
    bf16, layout = rec["chosen"].split()
    _, explicit = _fit(small, "study-light-k1", amp="bf16" if bf16 == "bf16" else False,
                       memory_format=layout)
    # Timing ran on copies and restored the RNG: the same numbers as the settings set by hand.
    assert [h["train_loss"] for h in auto.history] == [h["train_loss"] for h in explicit.history]
    assert [h["val_loss"] for h in auto.history] == [h["val_loss"] for h in explicit.history]
    # The next trial of the same model and size (another seed, say) reuses the choice.
    _, again = _fit(small, "study-light-k1", amp="auto")
    assert again.speed["precision"]["cached"] and again.speed["precision"]["chosen"] == rec[
        "chosen"]


def test_the_choice_is_cached_per_model_and_size():
    def key(name: str, side: int):
        torch.manual_seed(0)
        model = create_model(name, num_classes=2, in_chans=1)
        cands, _ = cpu_candidates("auto", "auto", "avx512_bf16")
        return choice_key(model, (1, side, side), 64, 1, "cpu", cands)

    assert key("study-light-k3", 28) == key("study-light-k3", 28)
    assert key("study-light-k3", 28) != key("study-light-k3", 64)
    assert key("study-light-k3", 28) != key("study-conv", 28)
    assert key("study-light-k3", 28) != key("study-light-k4", 28)


# --- bf16 training -------------------------------------------------------------------------
def test_bf16_training_of_a_tiny_model_runs_in_bf16_with_a_finite_loss(small):
    seen: list[torch.dtype] = []
    torch.manual_seed(0)
    model = create_model("study-light-k1", num_classes=2, in_chans=1)
    before = [p.detach().clone() for p in model.parameters()]
    hook = model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    proto = dataclasses.replace(IMPROVED, epochs=2, amp="bf16")
    train = DeviceLoader(small.splits["train"], 64, CPU, shuffle=True, seed=0)
    val = DeviceLoader(small.splits["val"], 64, CPU)
    result = fit(model, train, val, proto, CPU,
                 train_labels=np.asarray(small.splits["train"].labels), num_classes=2)
    hook.remove()
    assert result.amp == "bf16"
    assert torch.bfloat16 in seen  # autocast really ran the layers in bf16
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"])
               for h in result.history)
    # The weights stay fp32 and moved.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_amp_takes_true_false_auto_or_bf16_and_names_the_choices_otherwise():
    for value in (True, False, "auto", "bf16"):
        assert load_config(protocol_overrides={"amp": value}).resolved_protocol().amp == value
    with pytest.raises(ConfigError, match=r"amp: expected .*'auto' \| 'bf16', got 'fp16'"):
        load_config(protocol_overrides={"amp": "fp16"})


def test_the_precision_benchmark_runs_and_prints_the_choice(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_precision

    out = tmp_path / "precision.json"
    assert bench_precision.main(["--smoke", "--threads", "1", "--models", "study-light-k1",
                                 "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["chosen"] in FOUR and row["ours_epoch_s"] > 0 and row["plain_epoch_s"] > 0
    assert (set(row["step_ms"]) == set(FOUR)) == HAS_BF16
    assert f"| study-light-k1 | 28 | 96 | {row['chosen']} |" in capsys.readouterr().out


def test_tune_with_amp_auto_scores_each_fold_in_the_precision_it_trained_in(
        tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    import lightlayers.train as train

    # In order: each evaluation's precision, and each training's chosen one as it ends. fit's
    # own per-epoch validation evaluates too; the fold's score is the evaluation right after.
    events: list[tuple[str, bool]] = []
    real_fit, real_evaluate = train.fit, train.evaluate

    def fit_spy(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        events.append(("trained", result.amp is not None))
        return result

    def evaluate_spy(model, loader, device, amp=False):
        events.append(("scored", bool(amp)))
        return real_evaluate(model, loader, device, amp)

    monkeypatch.setattr(train, "fit", fit_spy)
    monkeypatch.setattr(train, "evaluate", evaluate_spy)
    forget_choices()
    assert cli(["tune", "--data", "digits", "--models", "paper-light-k1", "--epochs", "1",
                "--folds", "2", "--budget", "2", "--threads", "1", "--set", "amp=auto",
                "--out", str(tmp_path / "T"), "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)["models"]
    assert model["trials"] == 2 and 0 <= model["best"]["value"] <= 1
    ends = [i for i, (what, _) in enumerate(events) if what == "trained"]
    assert ends, events  # at least one fold trained to its end (the rest may be pruned)
    for i in ends:
        assert events[i + 1] == ("scored", events[i][1]), events
    if not HAS_BF16:
        assert not any(amp for _, amp in events)
