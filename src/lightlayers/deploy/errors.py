"""The deploy package's error whose message is written for the user, and its optional imports."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# What `lightlayers export` and `predict` need beyond the core install (onnx, onnxruntime,
# onnxscript, captum).
INSTALL_HINT = "pip install 'lightlayers[onnx]'"


class DeployError(Exception):
    """Export or prediction cannot go on; the message says what, where and the fix."""


def require(module: str) -> Any:
    """``module`` imported, or a :class:`DeployError` naming the install command.

    Every ONNX Runtime the tool uses comes through here (its sessions, its quantizer's), and
    onnx and onnxscript may import it too: its telemetry is turned off first
    (:func:`quiet_onnxruntime`)."""
    quiet_onnxruntime()
    try:
        imported = importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise DeployError(f"{top} is not installed ({e}); install the export and prediction "
                          f"extra: {INSTALL_HINT}") from e
    quiet_onnxruntime()
    return imported


def quiet_onnxruntime() -> None:
    """ONNX Runtime's telemetry off, unless the user turned it on (ORT_DISABLE_TELEMETRY=0).

    Importing onnxruntime starts its telemetry: a device id and an event store under
    ~/.cache/Microsoft, a session file in the temp folder. ORT_DISABLE_TELEMETRY=1, set before
    the import, prevents all of it; once imported, disable_telemetry_events() stops its
    events (the case of a program that imported onnxruntime before calling lightlayers)."""
    if os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1").strip() == "0":
        return
    ort = sys.modules.get("onnxruntime")
    disable = getattr(ort, "disable_telemetry_events", None)
    if disable is not None:  # absent from builds without telemetry
        disable()
