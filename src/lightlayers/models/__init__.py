"""The model zoo: build any model with :func:`create_model`, list them with :func:`list_models`."""

from lightlayers.models import paper, study, transfer  # noqa: F401  (registers the models)
from lightlayers.models._registry import ModelInfo, create_model, list_models, model_info

__all__ = ["ModelInfo", "create_model", "list_models", "model_info"]
