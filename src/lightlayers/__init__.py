"""lightlayers: LightLayers in PyTorch, a model zoo, and a benchmark harness.

``from lightlayers import LightConv2d`` loads only the layers; the harness (data, training,
results, reports) lives in submodules imported on demand.
"""

from lightlayers.layers import LightConv2d, LightLinear, light_penalty
from lightlayers.models import ModelInfo, create_model, list_models, model_info
from lightlayers.params import ParamCount, count_params

__version__ = "0.1.0"

__all__ = [
    "LightConv2d",
    "LightLinear",
    "ModelInfo",
    "ParamCount",
    "__version__",
    "count_params",
    "create_model",
    "light_penalty",
    "list_models",
    "model_info",
]
