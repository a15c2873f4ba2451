"""Tracing room: the diagnosis steps (generate + judge → evidence → cascade) and ``diagnose`` that composes them.

>>> import lvlm_probe as lp
>>> rep = lp.diagnose("organism:cooccurrence", items)      # doctest: +SKIP
>>> rep.diagnoses[["item_id", "kind", "level", "stage"]]   # doctest: +SKIP
>>> lp.render_diagnosis(rep, "runs/diag")                  # doctest: +SKIP

Step by step (each step alone, replaceable)::

    run = generate_and_judge(model, items, config)          # Run: generations, errors
    ev = collect_evidence(model, items, run, config)        # Evidence: frame, probe_curves
    diagnoses = cascade(ev.frame, config.thresholds)        # one row per error
"""

from lvlm_probe.tracing.cascade import (DIAGNOSIS_COLUMNS, LEVEL_OF, RULES, STAGES, Diagnosis, Rule, Thresholds,
                                        balanced_accuracy, cascade, diagnose_error, displaced, rule_holds,
                                        score_column, summarize)
from lvlm_probe.tracing.ask import answer_evidence
from lvlm_probe.tracing.collect import (Evidence, collect_evidence, data_evidence, default_probe_items,
                                        probe_verdicts, run_token_evidence)
from lvlm_probe.tracing.config import Decoding, DiagnoseConfig
from lvlm_probe.tracing.diagnose import DiagnosisReport, diagnose
from lvlm_probe.tracing.evidence import EVIDENCE_COLUMNS, mention_ordinal, probe_evidence, token_evidence
from lvlm_probe.tracing.run import Run, generate_and_judge
from lvlm_probe.tracing.stats import PRIOR_COLUMNS, PriorLookup, prior_evidence, training_statistics

__all__ = [
    "DIAGNOSIS_COLUMNS", "Decoding", "DiagnoseConfig", "Diagnosis", "DiagnosisReport", "EVIDENCE_COLUMNS", "Evidence",
    "LEVEL_OF", "PRIOR_COLUMNS", "PriorLookup", "RULES", "Rule", "Run", "STAGES", "Thresholds", "balanced_accuracy",
    "answer_evidence", "cascade", "collect_evidence", "data_evidence", "default_probe_items", "diagnose",
    "diagnose_error", "displaced",
    "generate_and_judge", "mention_ordinal", "prior_evidence", "probe_evidence", "probe_verdicts", "rule_holds",
    "run_token_evidence", "score_column", "summarize", "token_evidence", "training_statistics",
]
