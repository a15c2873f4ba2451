"""The shared vocabulary of lvlm_probe: one definition of every name that two rooms use.

No dependencies (not even numpy): models, misalignment, tracing, plotting and the organisms all read their
kinds, polarities, levels, stages and frame columns from here, so a stage is spelled one way everywhere.
"""

from __future__ import annotations

#: Kinds of misalignment, in display order.
KINDS: tuple[str, ...] = ("object", "attribute", "relation")
#: ``hallucinated``: claimed but false; ``omitted``: true but not claimed.
POLARITIES: tuple[str, ...] = ("hallucinated", "omitted")
#: Item tasks of the scene world and of items files (``None`` also means caption).
TASKS: tuple[str, ...] = ("caption", "exists", "attribute", "relation")
#: Question-answering tasks (judged by their yes/no or value answer rather than as free text).
QA_TASKS: tuple[str, ...] = ("exists", "attribute", "relation")

#: Levels a cause is traced to.
LEVELS: tuple[str, ...] = ("data", "model", "inference", "undetermined")
#: The verdict when no rule holds.
UNDETERMINED: str = "undetermined"
#: Cause stages, in the order the cascade tries them is given by :mod:`lvlm_probe.tracing.cascade`; this is the
#: canonical list (score columns follow it).
STAGES: tuple[str, ...] = ("encoder", "projector", "llm fusion", "cooccurrence", "attribute prior",
                           "relation prior", "decoding", "long generation")
#: Level of each stage (and of ``undetermined``).
LEVEL_OF: dict[str, str] = {
    "decoding": "inference", "long generation": "inference", "encoder": "model", "projector": "model",
    "llm fusion": "model", "cooccurrence": "data", "attribute prior": "data", "relation prior": "data",
    UNDETERMINED: UNDETERMINED,
}
#: The data-level stage of each kind of error (a training prior that explains it).
PRIOR_STAGE: dict[str, str] = {"object": "cooccurrence", "attribute": "attribute prior", "relation": "relation prior"}
#: Stages in display order (data, model, inference, then undetermined), for figures and tables.
STAGE_DISPLAY_ORDER: tuple[str, ...] = ("cooccurrence", "attribute prior", "relation prior", "encoder", "projector",
                                        "llm fusion", "decoding", "long generation", UNDETERMINED)


#: File beside a checkpoint with the defaults a diagnosis run of it uses (``decoding``, ``probe_world``); organisms
#: ship one and ``lvlm_probe.load`` reads it onto ``model.run_defaults``.
RUN_DEFAULTS_FILE: str = "run_defaults.json"
#: The synthetic world's relation question (the organisms learn it; a diagnosis asks it about each false relation).
RELATION_QUESTION: str = "is the {subject} {predicate} the {object} ?"
#: The synthetic world's existence question (``{}``: the class; the organisms learn it, verify-and-delete asks it).
OBJECT_QUESTION: str = "is there a {} ?"


def score_column(stage: str) -> str:
    """``score_<stage>`` with spaces as underscores."""
    return "score_" + stage.replace(" ", "_")


# ---- frame column contracts -------------------------------------------------------------------------------
#: Misalignment frame (:func:`lvlm_probe.judge`): one row per error; ``item_id`` is the item id (a str).
MISALIGNMENT_COLUMNS: tuple[str, ...] = (
    "item_id", "kind", "polarity", "subject", "attribute", "object", "claimed", "truth", "negated", "text", "start",
    "end", "claim_start", "claim_end", "token_indices", "first_token", "source")
#: Generations frame of a diagnosis run: one row per item. ``batch``: the generation batch the item ran in
#: (the evidence step re-forms the same batches); ``row``: its row in that batch; ``tokens``: the generated token
#: ids; ``failed``: why the item could not be run (None when it ran).
GENERATION_COLUMNS: tuple[str, ...] = ("item_id", "task", "prompt", "text", "tokens", "n_errors", "batch", "row",
                                       "failed")
#: Errors frame of a diagnosis run: the misalignment frame plus these (``b`` = ``row``, kept for the evidence).
ERROR_COLUMNS: tuple[str, ...] = ("error_id", *MISALIGNMENT_COLUMNS, "b", "batch")
#: Evidence columns (one row per error), in addition to the errors frame's columns.
EVIDENCE_COLUMNS: tuple[str, ...] = (
    "error_id", "item_id", "emitted", "position", "step", "ordinal", "n_generated", "sampled",
    "p_emit", "rank", "greedy_token", "entropy", "p_truth", "p_noimg", "p_knock", "pmi_img", "knockout_effect",
    "img_use", "deviation_step",
    "img_attn", "img_attn_ratio", "enc_p_true", "proj_p_true", "enc_site", "proj_site",
    "prior_train", "prior_lift", "prior_context", "class_freq", "pos_quantile", "n_mentions", "n_scene_objects",
    "context_in_image", "qa_truth", "qa_claim",
)
#: Numeric evidence columns (cast to float; NaN = not measured).
FLOAT_EVIDENCE: tuple[str, ...] = (
    "p_emit", "p_truth", "rank", "entropy", "p_noimg", "p_knock", "img_use", "deviation_step", "pmi_img",
    "knockout_effect", "img_attn", "img_attn_ratio", "enc_p_true", "proj_p_true", "prior_train", "prior_lift",
    "class_freq", "pos_quantile", "n_mentions", "n_scene_objects", "context_in_image",
    "qa_truth", "qa_claim")
#: Diagnoses frame: these, one ``score_<stage>`` per stage, then the evidence columns.
DIAGNOSIS_COLUMNS: tuple[str, ...] = ("error_id", "item_id", "kind", "polarity", "claimed", "truth", "level",
                                      "stage", "confidence", "causes", "rule")
