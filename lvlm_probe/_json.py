"""Strict JSON for outputs other programs read: NaN and infinities become null, numpy scalars Python numbers."""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(x: Any) -> Any:
    """``x`` with every NaN / ±inf replaced by None and numpy scalars by Python ones (dicts and lists walked)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)``; refuses anything that is still not strict JSON."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)
