"""Benchmark loaders and scorers that reproduce each benchmark's original code, quirks included.

Scoring works on text files alone: this package imports no model code.
"""

from lvlm_probe.benchmarks import amber, chair, hallusionbench, parsers, pope, rbench
from lvlm_probe.benchmarks.parsers import PROFILES, parse_answer, pope_metrics

__all__ = ["PROFILES", "amber", "chair", "hallusionbench", "parse_answer", "parsers", "pope", "pope_metrics", "rbench"]
