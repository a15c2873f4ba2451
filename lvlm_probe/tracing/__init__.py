"""Tracing room: evidence per error, the cause cascade and ``diagnose``.

>>> import lvlm_probe as lp
>>> rep = lp.diagnose("organism:cooccurrence", items)      # doctest: +SKIP
>>> rep.diagnoses[["item_id", "kind", "level", "stage"]]   # doctest: +SKIP
>>> rep.write("runs/diag")                                 # doctest: +SKIP
"""

from lvlm_probe.tracing.cascade import (DIAGNOSIS_COLUMNS, LEVEL_OF, STAGES, Diagnosis, Thresholds,
                                        balanced_accuracy, cascade, diagnose_error, score_column, summarize)
from lvlm_probe.tracing.diagnose import DiagnosisReport, default_probe_items, diagnose
from lvlm_probe.tracing.evidence import EVIDENCE_COLUMNS, mention_ordinal, probe_evidence, token_evidence
from lvlm_probe.tracing.stats import PRIOR_COLUMNS, PriorLookup, prior_evidence, training_statistics

__all__ = [
    "DIAGNOSIS_COLUMNS", "Diagnosis", "DiagnosisReport", "EVIDENCE_COLUMNS", "LEVEL_OF", "PRIOR_COLUMNS",
    "PriorLookup", "STAGES", "Thresholds", "balanced_accuracy", "cascade", "default_probe_items", "diagnose",
    "diagnose_error", "mention_ordinal", "prior_evidence", "probe_evidence", "score_column", "summarize",
    "token_evidence", "training_statistics",
]
