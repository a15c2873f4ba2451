"""Misalignment: text -> claims (object / attribute / relation) -> typed errors against a scene graph, with spans.

Scoring works on text alone: this package imports no model code. A generation is anything with ``.text`` and
``.token_spans`` (such as :class:`lvlm_probe.models.records.Generation`).
"""

from lvlm_probe.misalignment.claims import CLAIM_KINDS, Claim, claims_frame, extract_claims, tokens_for_span
from lvlm_probe.misalignment.judge import (FRAME_COLUMNS, KINDS, POLARITIES, QA_TASKS, Misalignment, answers_question,
                                           claims_kept, judge, judge_batch, judge_frame, misalignments_frame,
                                           states_relation, states_truth)
from lvlm_probe.misalignment.readers import (attribute_value_span, caption_objects, read_attribute_value,
                                             read_yes_no, yes_no_span)
from lvlm_probe.misalignment.vocab import Vocabulary, plural

__all__ = ["CLAIM_KINDS", "Claim", "FRAME_COLUMNS", "KINDS", "Misalignment", "POLARITIES", "QA_TASKS", "Vocabulary",
           "answers_question", "claims_frame", "claims_kept", "extract_claims", "judge", "judge_batch", "judge_frame",
           "misalignments_frame", "plural", "tokens_for_span", "attribute_value_span", "caption_objects",
           "read_attribute_value", "read_yes_no", "states_relation", "states_truth", "yes_no_span"]
