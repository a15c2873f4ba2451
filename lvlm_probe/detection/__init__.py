"""Hallucination detection from internal states: claims, their features, a detector, its layer sweep.

See docs/detection.md.
"""

from lvlm_probe.detection.claims import CLAIM_COLUMNS, claim_table
from lvlm_probe.detection.collect import ClaimSet, collect_claims
from lvlm_probe.detection.detector import (BASELINES, HallucinationDetector, baseline_scores, bootstrap_auroc,
                                           detection_sweep, feature_groups, feature_matrix)
from lvlm_probe.detection.features import SCALAR_FEATURES, claim_features
from lvlm_probe.detection.presence import PresenceProbes
from lvlm_probe.detection.trace import NEEDS_TRUTH, trace_claims

__all__ = ["CLAIM_COLUMNS", "SCALAR_FEATURES", "BASELINES", "ClaimSet", "HallucinationDetector", "claim_table",
           "claim_features", "collect_claims", "detection_sweep", "feature_matrix", "feature_groups", "baseline_scores",
           "bootstrap_auroc", "PresenceProbes", "trace_claims", "NEEDS_TRUTH"]
