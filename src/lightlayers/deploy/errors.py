"""The one error of the deploy package whose message is written for the user."""

from __future__ import annotations

import importlib
from typing import Any

# What `lightlayers export` and `predict` need beyond the core install (onnx, onnxruntime,
# onnxscript, captum).
INSTALL_HINT = "pip install 'lightlayers[onnx]'"


class DeployError(Exception):
    """Export or prediction cannot go on; the message says what, where and the fix."""


def require(module: str) -> Any:
    """``module`` imported, or a :class:`DeployError` naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise DeployError(f"{top} is not installed ({e}); install the export and prediction "
                          f"extra: {INSTALL_HINT}") from e
