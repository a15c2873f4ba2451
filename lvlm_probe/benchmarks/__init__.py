"""Benchmark loaders and scorers that reproduce each benchmark's original code, quirks included.

Scoring works on text files alone: this package imports no model code (and no torch). Submodules and the
parser names are imported on first use, so ``lvlm-probe eval --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES: tuple[str, ...] = ("amber", "chair", "hallusionbench", "parsers", "pope", "rbench")
_FROM_PARSERS: tuple[str, ...] = ("PROFILES", "parse_answer", "pope_metrics")

__all__ = [*_FROM_PARSERS, *_MODULES]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(f"lvlm_probe.benchmarks.{name}")
    elif name in _FROM_PARSERS:
        value = getattr(importlib.import_module("lvlm_probe.benchmarks.parsers"), name)
    else:
        raise AttributeError(f"module 'lvlm_probe.benchmarks' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
