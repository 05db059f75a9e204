"""The benchmark scripts run end to end: ``benchmarks/gpu.sh --smoke`` on whatever device is
here (the CPU when there is no GPU), writing its JSON under $OUT."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def test_gpu_suite_smoke_runs_end_to_end(tmp_path, shared_data):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run([str(BENCH / "gpu.sh"), "--smoke"], env=env, capture_output=True,
                          text=True, timeout=480, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    cuda = torch.cuda.is_available()
    assert result["smoke"] and result["machine"]["device"] == ("cuda" if cuda else "cpu")
    if not cuda:
        assert "no CUDA device" in proc.stdout and "no CUDA device" in result["device_note"]
    assert {r["model"] for r in result["models"]} == {
        "study-light-k1", "study-conv", "transfer-inception_v3"}
    for r in result["models"]:
        # What is printed is what was timed: medians of the timed epochs, and the median of
        # the per-epoch ratios.
        ours, plain = r["ours_epochs_s"], r["plain_epochs_s"]
        assert len(ours) == len(plain) == r["timed_epochs"] >= 1
        assert r["ours_epoch_s"] == statistics.median(ours)
        assert r["plain_epoch_s"] == statistics.median(plain)
        assert r["epoch_ratios"] == pytest.approx(
            [o / p for o, p in zip(ours, plain, strict=True)])
        assert r["ratio"] == pytest.approx(statistics.median(r["epoch_ratios"]))
    transfer = next(r for r in result["models"] if r["model"] == "transfer-inception_v3")
    assert transfer["image_size"] == 75 and transfer["ratio_with_features_20_epochs"] == \
        pytest.approx((transfer["ours_epoch_s"] + transfer["feature_s"] / 20)
                      / transfer["plain_epoch_s"])
    assert result["light_conv"]
    for r in result["light_conv"]:
        assert r["ratio"] == pytest.approx(r["ours_ms"] / r["naive_ms"])
    (data,) = result["data"]
    assert data["imagefolder_epoch_s"] > 0 and data["archive"] == "mini"
    study = result["study"]
    assert study["counts"]["done"] == 2 and study["peak_rss_gib"] > 0
    assert all(t["status"] == "done" for t in study["trials"])
    assert not [k for k, v in result["errors"].items() if not v.startswith("skipped")]
    for heading in ("our trainer vs a plain PyTorch loop", "LightConv2d forward+backward",
                    "whole study", "load average"):
        assert heading in proc.stdout


def test_bench_defaults_and_out_folder(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_cpu
    import bench_gpu
    from _common import parse_args

    cpu = parse_args("cpu", bench_cpu.DEFAULTS, [])
    assert (cpu.size, cpu.transfer_size, cpu.study, cpu.study_epochs) == (64, 75, True, 20)
    assert cpu.json == ROOT / "benchmarks" / "results" / "cpu.json"
    monkeypatch.setenv("OUT", str(tmp_path))
    gpu = parse_args("gpu", bench_gpu.DEFAULTS, [])
    assert (gpu.size, gpu.transfer_size, gpu.study, gpu.study_epochs) == (224, 299, True, 20)
    assert gpu.json == tmp_path / "gpu.json"
    assert parse_args("gpu", bench_gpu.DEFAULTS, ["--no-study"]).study is False
    assert parse_args("cpu", bench_cpu.DEFAULTS, ["--no-study"]).study is False
    with pytest.raises(SystemExit):
        parse_args("cpu", bench_cpu.DEFAULTS, ["--size"])
