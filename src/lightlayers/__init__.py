"""lightlayers: LightLayers in PyTorch, a model zoo, and a benchmark harness.

``from lightlayers import LightConv2d`` loads only the layers; the harness (data, training,
results, reports) lives in submodules imported on demand. ``run_study`` and ``open_run`` run a
study and read a run folder from Python (docs/python.md). The names below are imported on
first use too (PEP 562), so that ``import lightlayers`` and a CLI command that needs no model
(``lightlayers --help``, the ``lightlayers models`` table) do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightlayers.version import __version__

# Each public name -> the module defining it.
_EXPORTS = {
    "LightConv2d": "lightlayers.layers",
    "LightLinear": "lightlayers.layers",
    "light_penalty": "lightlayers.layers",
    "ModelInfo": "lightlayers.models",
    "create_model": "lightlayers.models",
    "list_models": "lightlayers.models",
    "model_info": "lightlayers.models",
    "ParamCount": "lightlayers.params",
    "count_params": "lightlayers.params",
    "Predictions": "lightlayers.api",
    "Run": "lightlayers.api",
    "RunError": "lightlayers.api",
    "Trial": "lightlayers.api",
    "open_run": "lightlayers.api",
    "run_study": "lightlayers.api",
}

__all__ = [
    "LightConv2d",
    "LightLinear",
    "ModelInfo",
    "ParamCount",
    "Predictions",
    "Run",
    "RunError",
    "Trial",
    "__version__",
    "count_params",
    "create_model",
    "light_penalty",
    "list_models",
    "model_info",
    "open_run",
    "run_study",
]

if TYPE_CHECKING:
    from lightlayers.api import Predictions, Run, RunError, Trial, open_run, run_study
    from lightlayers.layers import LightConv2d, LightLinear, light_penalty
    from lightlayers.models import ModelInfo, create_model, list_models, model_info
    from lightlayers.params import ParamCount, count_params


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lightlayers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
