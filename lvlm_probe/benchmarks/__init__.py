"""Benchmark loaders and scorers that reproduce each benchmark's original code, quirks included.

Scoring works on text files alone: this package imports no model code.
"""
