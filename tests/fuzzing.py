"""The fuzz tests' shared Hypothesis settings (not a conftest: the fuzz modules import it)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz(max_examples: int) -> settings:
    """Reproducible fuzzing: the same examples on every run, nothing written to .hypothesis/
    in the working tree, no deadline (a slow machine is not a failure)."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
