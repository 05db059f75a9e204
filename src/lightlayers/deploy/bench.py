"""What an exported model costs to run on the CPU, beside PyTorch: batch-1 latency (median and
95th percentile) and images/s at a larger batch.

Both contestants compute the same thing, the exported module
(:class:`~lightlayers.deploy.graph.Deployable`: probabilities and Grad-CAM maps), on the same
input arrays with the same number of threads. Their calls alternate (ONNX Runtime, PyTorch,
ONNX Runtime, ...) so that other load on the machine hits both alike; each has one untimed
warm-up call first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from lightlayers.models.interface import ClassifierBase

__all__ = ["DEPLOYMENT_METRICS", "Speed", "alternate", "compare_speed", "deployment_metrics",
           "torch_runner"]


@dataclass(frozen=True)
class Speed:
    latency_ms: float  # median wall time of one batch-1 call
    latency_p95_ms: float
    images_per_s: float  # at ``batch``
    batch: int
    calls: int  # timed batch-1 calls

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def alternate(calls: dict[str, Callable[[], Any]], budget_s: float, min_rounds: int,
              max_rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each call, round after round (each call once per round, in order),
    after one untimed warm-up round; stops after ``max_rounds``, or after ``min_rounds`` once
    ``budget_s`` seconds have passed."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or
                                   time.perf_counter() - start < budget_s):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return times


def compare_speed(runners: dict[str, Callable[[np.ndarray], Any]], one: np.ndarray,
                  many: np.ndarray, budget_s: float = 2.0) -> dict[str, Speed]:
    """Batch-1 latency on ``one`` (1, C, H, W) and throughput on ``many`` (B, C, H, W) of
    each runner (``x -> outputs``), measured alternately (:func:`alternate`)."""
    def on(r: Callable[[np.ndarray], Any], x: np.ndarray) -> Callable[[], Any]:
        return lambda: r(x)

    lat = alternate({k: on(r, one) for k, r in runners.items()}, budget_s / 2,
                    min_rounds=10, max_rounds=500)
    thr = alternate({k: on(r, many) for k, r in runners.items()}, budget_s / 2,
                    min_rounds=3, max_rounds=100)
    out = {}
    for k in runners:
        t1 = np.asarray(lat[k]) * 1e3
        out[k] = Speed(latency_ms=float(np.median(t1)),
                       latency_p95_ms=float(np.percentile(t1, 95)),
                       images_per_s=float(len(many) / np.median(thr[k])), batch=len(many),
                       calls=len(t1))
    return out


def torch_runner(module: torch.nn.Module) -> Callable[[np.ndarray], Any]:
    """``x -> outputs`` of a PyTorch module in inference mode (the array is wrapped, not
    copied, as ONNX Runtime reads it)."""
    module.eval()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return run


# Names and meanings of deployment_metrics' values (units in the names: MB = 10^6 bytes).
DEPLOYMENT_METRICS = {
    "onnx_fp32_mb": "size of the fp32 ONNX file (MB)",
    "onnx_int8_mb": "size of the int8 ONNX file (MB)",
    "ort_latency_ms": "ONNX Runtime fp32, CPU, batch 1, median (ms)",
    "ort_latency_p95_ms": "ONNX Runtime fp32, CPU, batch 1, 95th percentile (ms)",
    "ort_img_s": "ONNX Runtime fp32, CPU, images/s at batch 64",
    "ort_int8_latency_ms": "ONNX Runtime int8, CPU, batch 1, median (ms)",
    "ort_int8_latency_p95_ms": "ONNX Runtime int8, CPU, batch 1, 95th percentile (ms)",
    "ort_int8_img_s": "ONNX Runtime int8, CPU, images/s at batch 64",
    "torch_cpu_latency_ms": "PyTorch fp32, CPU, batch 1, median (ms), timed with ONNX Runtime",
    "torch_cpu_latency_p95_ms": "PyTorch fp32, CPU, batch 1, 95th percentile (ms)",
    "torch_cpu_img_s": "PyTorch fp32, CPU, images/s at batch 64",
}


def deployment_metrics(model: ClassifierBase, train: Any, test: Any,
                       loader_options: dict[str, Any], budget_s: float = 2.0,
                       threads: int | None = None, calibration: int = 256,
                       batch: int = 64) -> dict[str, float]:
    """The numbers of :data:`DEPLOYMENT_METRICS` for a trained ``model``: exported as
    ``lightlayers export`` does (fp32, and int8 calibrated on ``calibration`` images of
    ``train``), then timed on the CPU on the first ``batch`` images of ``test`` against
    PyTorch (:func:`compare_speed`). ``train`` and ``test`` are
    :class:`lightlayers.data.Split` s as the trial decoded them; ``loader_options`` are the
    :class:`lightlayers.data.DeviceLoader` options the trial used (mean, std, out_chans,
    crop). A copy of the model runs on the CPU; ``model`` itself is left as it is. ONNX
    Runtime gets ``threads`` threads (default: PyTorch's, which it should equal)."""
    import copy

    from lightlayers.data import Split
    from lightlayers.deploy import export as ex
    from lightlayers.deploy.card import ModelCard
    from lightlayers.version import __version__

    net = copy.deepcopy(model).float().cpu().eval()
    images = np.asarray(test.images)
    chans, size = int(images.shape[1]), int(images.shape[-1])
    crop = loader_options.get("crop")
    card = ModelCard(
        model=str(net.model_info.name), seed=0, protocol="", trial="",
        classes=[str(i) for i in range(int(net.model_info.num_classes))],
        positive_class=None, threshold=None, image_size=size, image_chans=chans,
        resize="stretch", resample="", crop=None if crop is None else int(crop),
        input_chans=int(loader_options.get("out_chans") or chans),
        input_size=int(crop or size), mean=loader_options.get("mean"),
        std=loader_options.get("std"), data="", data_fingerprint={}, test_metrics={},
        weights="", precision="fp32", lightlayers_version=__version__, cam=False)
    # Timed with the last map's Grad-CAM (a few multiplications), not an earlier layer's traced
    # backward pass: the latencies compare inference with PyTorch's forward pass.
    deployable, example = ex.deployable_for(net, card, finer_cam=False)
    card = card.replace(cam=deployable.with_cam)
    fp32 = ex.to_onnx(deployable, example, card)
    int8 = ex.quantize_int8(fp32, ex.calibration_images(train, card, calibration), card)
    sub = Split(images[:batch], np.asarray(test.labels)[:batch], None)
    many = next(ex.batches(sub, card, batch_size=batch))[0]
    # As many threads as PyTorch's; ONNX Runtime's idle threads must not spin through
    # PyTorch's calls.
    threads = threads or torch.get_num_threads()
    runners = {"torch_cpu": torch_runner(deployable),
               "ort": ex.run_model(fp32, threads=threads, spin=False),
               "ort_int8": ex.run_model(int8, threads=threads, spin=False)}
    speed = compare_speed(runners, np.ascontiguousarray(many[:1]), many, budget_s)
    out = {"onnx_fp32_mb": len(fp32) / 1e6, "onnx_int8_mb": len(int8) / 1e6}
    for k, s in speed.items():
        out |= {f"{k}_latency_ms": s.latency_ms, f"{k}_latency_p95_ms": s.latency_p95_ms,
                f"{k}_img_s": s.images_per_s}
    return out
