"""Diagnosis where no ground truth exists: the detector finds the misaligned claims, truth-free evidence traces them.

Items without a scene graph cannot be judged. Here every claim of their generations is scored by a fitted
:class:`~lvlm_probe.detection.HallucinationDetector`; the claims it flags go through the cascade with the evidence
that needs no true value: the training prior (data), the image's effect on the token and on the whole generation
(LLM fusion), the decoding path (sampling) and the mention's position (long generation). The encoder and projector
stages ask whether the *true* value is decodable from the image features, so they cannot be tested: a flagged
claim that no truth-free rule explains is reported as ``needs ground truth``, never guessed.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.data.items import Item
from lvlm_probe.detection.collect import ClaimSet, collect_claims
from lvlm_probe.detection.detector import HallucinationDetector
from lvlm_probe.models.lvlm import LVLM
from lvlm_probe.schema import EVIDENCE_COLUMNS, FLOAT_EVIDENCE, UNDETERMINED
from lvlm_probe.tracing.config import DiagnoseConfig

#: The stage reported for a flagged claim no truth-free rule explains.
NEEDS_TRUTH = "needs ground truth"
#: Stages whose evidence needs the true value (probes of the true value in the image features).
TRUTH_STAGES: tuple[str, ...] = ("encoder", "projector")


def trace_claims(model: LVLM, items: Sequence[Item], detector: HallucinationDetector, *,
                 config: DiagnoseConfig | None = None, threshold: float = 0.5, training_stats: Any = "auto",
                 presence: Any = "auto", vocabulary: Any = None, progress: bool = True) -> pd.DataFrame:
    """Score every claim of ``items`` and trace the flagged ones.

    Parameters
    ----------
    model : LVLM
    items : sequence of Item
        Items with or without scene graphs (labels are kept where they exist, and unused).
    detector : HallucinationDetector
        Fitted on judged claims of models of this family.
    threshold : float
        A claim is flagged when the detector's probability is at least this.
    training_stats : "auto", WorldStats, path, list of SceneGraph or None
        The training statistics for the prior rule (``"auto"``: ``training_stats.json`` beside the model).

    Returns
    -------
    DataFrame
        One row per claim: the claims table, ``p_misaligned``, ``flagged``, and for flagged claims the cascade's
        ``stage``, ``level``, ``rule`` and ``causes`` (``stage`` is ``"needs ground truth"`` where no truth-free
        rule holds), and ``needs_ground_truth`` (the stages that could not be tested).
    """
    claims = collect_claims(model, items, config, presence=presence, vocabulary=vocabulary, progress=progress)
    table = claims.table.copy()
    table["p_misaligned"] = detector.predict_proba(claims)[:, 1] if len(claims) else np.array([])
    table["flagged"] = table.p_misaligned >= threshold
    for col in ("stage", "level", "rule", "causes", "needs_ground_truth"):
        table[col] = None
    flagged = table[table.flagged]
    if len(flagged):
        from lvlm_probe.tracing.stats import training_statistics

        auto = isinstance(training_stats, str) and training_stats == "auto"
        stats = training_statistics(model if auto else training_stats)
        traced = _trace(flagged, claims, items, stats, vocabulary)
        for col in ("stage", "level", "rule", "causes"):
            table.loc[flagged.index, col] = traced[col].to_numpy()
        table.loc[flagged.index, "needs_ground_truth"] = ", ".join(TRUTH_STAGES)
    return table


def _trace(flagged: pd.DataFrame, claims: ClaimSet, items: Sequence[Item], stats: Any, vocabulary: Any
           ) -> pd.DataFrame:
    """The cascade on flagged claims, with the truth-dependent evidence left unmeasured."""
    from lvlm_probe.tracing.cascade import cascade
    from lvlm_probe.tracing.collect import data_evidence
    from lvlm_probe.tracing.evidence import as_float

    ev = flagged.rename(columns={"claim_id": "error_id"}).assign(
        polarity="hallucinated", claimed=lambda d: d.value.where(d.kind != "object", d.subject), truth=None)
    gens = claims.generations[["item_id", "text"]]
    data = data_evidence(ev, list(items), gens, stats, vocabulary)
    frame = pd.concat([ev, data], axis=1)
    for c in EVIDENCE_COLUMNS:
        if c not in frame:
            frame[c] = np.nan
    out = cascade(as_float(frame, FLOAT_EVIDENCE))
    out.index = flagged.index
    out["stage"] = out.stage.where(out.stage != UNDETERMINED, NEEDS_TRUTH)
    out["level"] = out.level.where(out.stage != NEEDS_TRUTH, UNDETERMINED)
    return out
