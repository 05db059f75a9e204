"""JSON output of the commands (``--json``): one object on stdout, valid JSON."""

from __future__ import annotations

import math
from typing import Any


def json_safe(obj: Any) -> Any:
    """Non-finite floats as strings ("nan", "inf"): JSON has no such numbers, and a script
    must be able to tell them from a missing value (null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)
