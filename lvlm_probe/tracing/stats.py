"""Training statistics as data-level evidence: co-occurrence, attribute and relation priors, caption length.

The organisms export the statistics of the world they were trained on (``training_stats.json`` beside the
checkpoint). For a real model the user supplies a corpus of annotated scenes (scene graphs of the training
or instruction data) and :func:`training_statistics` measures the same tables from it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lvlm_probe.data.scene import SceneGraph
from lvlm_probe.data.world import WorldStats, measure_statistics
from lvlm_probe.errors import InputError

#: Columns :func:`prior_evidence` adds to an error row.
PRIOR_COLUMNS: tuple[str, ...] = ("prior_train", "prior_lift", "prior_context", "class_freq", "pos_quantile")


def training_statistics(source: Any) -> WorldStats | None:
    """Training statistics from a ``WorldStats``, a JSON path, a model directory or a corpus of scenes.

    Parameters
    ----------
    source : WorldStats, path, LVLM, sequence of SceneGraph / dict, or None
        A directory is searched for ``training_stats.json`` (the organisms ship one); an ``LVLM`` uses
        its checkpoint directory; a sequence of scene graphs (or their dicts) is measured with
        :func:`lvlm_probe.data.world.measure_statistics`.

    Returns
    -------
    WorldStats or None
        None when ``source`` is None or a model directory without statistics (data-level evidence is
        then missing and the cascade cannot name a data-level cause).
    """
    if source is None or isinstance(source, WorldStats):
        return source
    if hasattr(source, "path") and hasattr(source, "adapter"):  # an LVLM
        p = Path(str(source.path)) / "training_stats.json"
        return WorldStats.from_json(p) if p.is_file() else None
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            p = p / "training_stats.json"
            return WorldStats.from_json(p) if p.is_file() else None
        if not p.is_file():
            raise InputError(f"training statistics file {str(p)!r} does not exist; give a training_stats.json, a "
                             "model directory holding one, or a list of scene graphs")
        return WorldStats.from_json(p)
    if isinstance(source, Sequence) and len(source) and all(isinstance(s, (SceneGraph, dict)) for s in source):
        scenes = [s if isinstance(s, SceneGraph) else SceneGraph.from_dict(s) for s in source]
        return measure_statistics(scenes)
    raise InputError(f"cannot read training statistics from {type(source).__name__}; give a WorldStats, a "
                     "training_stats.json path, a model directory or a list of SceneGraph")


class PriorLookup:
    """Fast lookups into a :class:`WorldStats` (dictionaries built once)."""

    def __init__(self, stats: WorldStats) -> None:
        self.stats = stats
        co = stats.cooccurrence
        self.p_b_a = {(a, b): float(p) for a, b, p in zip(co.a, co.b, co.p_b_given_a)}
        self.freq = {c: float(p) for c, p in zip(stats.class_freq["class"], stats.class_freq.p_present)}
        self.attr: dict[str, dict[tuple[str, str], float]] = {}
        self.attr_n: dict[str, dict[str, int]] = {}
        for att in ("color", "size"):
            df = getattr(stats, f"{att}_prior", None)
            if df is None or not len(df):
                continue
            self.attr[att] = {(c, v): float(p) for c, v, p in zip(df["class"], df.value, df.p)}
            self.attr_n[att] = int(df.value.nunique())  # values of the attribute in the whole corpus
        rp = stats.relation_prior
        self.rel = {(s, o, pr): float(p) for s, o, pr, p in zip(rp.subject, rp.object, rp.predicate, rp.p)} \
            if len(rp) else {}
        n = stats.n_objects.sort_values("n")
        self.len_cdf = dict(zip(n.n.astype(int), np.cumsum(n.p.to_numpy(dtype=float))))

    def position_quantile(self, ordinal: int) -> float:
        """Fraction of training captions that hold fewer than ``ordinal`` objects."""
        if ordinal <= 1 or not self.len_cdf:
            return 0.0
        below = [p for k, p in self.len_cdf.items() if k < ordinal]
        return float(below[-1]) if below else 0.0

    def object_prior(self, claimed: str, context: Sequence[str]) -> tuple[float, float, str | None]:
        """``(max_a P(claimed | a), its lift over P(claimed), the a)`` over the classes in ``context``."""
        base = self.freq.get(claimed, float("nan"))
        best, arg = float("nan"), None
        for a in context:
            if a == claimed:
                continue
            p = self.p_b_a.get((a, claimed))
            if p is not None and not (p <= best):
                best, arg = p, a
        if arg is None:
            return base, 1.0, None
        return best, best / base if base and base > 0 else float("nan"), arg

    def attribute_prior(self, cls: str, attribute: str, value: str) -> tuple[float, float]:
        """``(P(value | class), lift over a uniform choice among the attribute's values in the corpus)``."""
        table = self.attr.get(attribute)
        if table is None:
            return float("nan"), float("nan")
        p = table.get((cls, value), 0.0)
        k = self.attr_n[attribute]
        return p, p * k if k else float("nan")

    def relation_prior(self, subject: str, obj: str, predicate: str) -> tuple[float, float]:
        """``(P(predicate | subject, object), lift over the mean predicate probability of the pair)``."""
        p = self.rel.get((subject, obj, predicate))
        if p is None:
            return float("nan"), float("nan")
        pair = [v for (s, o, _), v in self.rel.items() if s == subject and o == obj]
        mean = float(np.mean(pair)) if pair else float("nan")
        return p, p / mean if mean > 0 else float("nan")


def prior_evidence(row: dict, lookup: PriorLookup | None, context: Sequence[str], ordinal: int | None) -> dict:
    """Data-level evidence for one error (see :data:`PRIOR_COLUMNS`).

    ``prior_train`` is the training probability of what was claimed given its context (object:
    ``max_a P(claimed | a)`` over the classes mentioned before it, or its base rate; attribute:
    ``P(value | class)``; relation: ``P(predicate | subject, object)``); ``prior_lift`` that probability
    over its no-context baseline; ``prior_context`` the conditioning class; ``class_freq`` the claimed
    class's base rate; ``pos_quantile`` the fraction of training captions shorter than the error's
    object position.
    """
    out = {k: float("nan") for k in PRIOR_COLUMNS}
    out["prior_context"] = None
    if lookup is None:
        return out
    kind, claimed = row.get("kind"), row.get("claimed")
    if ordinal is not None:
        out["pos_quantile"] = lookup.position_quantile(int(ordinal))
    if claimed is None or (isinstance(claimed, float) and math.isnan(claimed)) or row.get("negated"):
        return out
    if kind == "object":
        out["class_freq"] = lookup.freq.get(claimed, float("nan"))
        p, lift, ctx = lookup.object_prior(claimed, context)
        out.update(prior_train=p, prior_lift=lift, prior_context=ctx)
    elif kind == "attribute":
        p, lift = lookup.attribute_prior(row.get("subject"), row.get("attribute"), claimed)
        out.update(prior_train=p, prior_lift=lift, prior_context=row.get("subject"))
    elif kind == "relation" and row.get("object"):
        p, lift = lookup.relation_prior(row.get("subject"), row.get("object"), claimed)
        out.update(prior_train=p, prior_lift=lift, prior_context=f"{row.get('subject')}|{row.get('object')}")
    return out
