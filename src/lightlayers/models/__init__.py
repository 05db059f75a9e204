"""The model zoo: build any model with :func:`create_model`, list them with :func:`list_models`."""

from lightlayers.models import paper, study, transfer  # noqa: F401  (registers the models)
from lightlayers.models._registry import (
    check_options,
    create_model,
    list_models,
    model_info,
    model_options,
    model_params,
)
from lightlayers.models.interface import ClassifierBase, ModelInfo, Preprocess

__all__ = ["ClassifierBase", "ModelInfo", "Preprocess", "check_options", "create_model",
           "list_models", "model_info", "model_options", "model_params"]
