"""Metrics: the registry every consumer reads (:mod:`lightlayers.metrics.registry`), the
scores of the test predictions (:mod:`lightlayers.metrics.scores`), and the diagnosis of
trials that stayed near chance."""

from lightlayers.metrics.classification import choose_threshold, classification_metrics
from lightlayers.metrics.diagnosis import BN_KEEP_LIMIT, DIAGNOSIS, diagnose

__all__ = ["BN_KEEP_LIMIT", "DIAGNOSIS", "choose_threshold", "classification_metrics",
           "diagnose"]
