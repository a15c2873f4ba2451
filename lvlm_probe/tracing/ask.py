"""Behavioural evidence: ask the model the direct yes/no question about a relation it got wrong.

A caption can state a false relation although the model knows the true one: asked "is the triangle below the
cross ?" about the same image, it answers "yes". Then the relation reached the LLM, and the encoder (or the
projector) did not lose it, whatever a linear probe on the encoder output reads. The cascade uses this as a veto on
its model-level verdicts (:func:`~lvlm_probe.tracing.cascade.diagnose_error`); a prior or a fusion rule names the
cause instead.

For each relation error with a claimed predicate, the model is asked, greedily and about the item's own image, the
question of every true predicate (``qa_truth``: the share answered "yes") and of the claimed one (``qa_claim``:
1.0 "yes", 0.0 "no"). An answer without a yes/no word counts as not "yes" (for the claim, as not "no"). The
claimed predicate guards against a model that says "yes" to anything, the bias the yes-ratio control of Yin et al.,
2025 ("The Mirage of Performance Gains", https://arxiv.org/abs/2504.10020) exists for.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lvlm_probe.data.items import Item
from lvlm_probe.errors import InputError
from lvlm_probe.models import LVLM
from lvlm_probe.schema import OBJECT_QUESTION

#: The relation question of a model without one in its run defaults (a chat model's user turn).
HUB_RELATION_QUESTION: str = "Is the {subject} {predicate} the {object}? Answer yes or no."
#: The existence question of a model that is not an organism and names none in its run defaults.
HUB_OBJECT_QUESTION: str = "Is there a {} in the image? Answer yes or no."
#: At most this many true predicates are asked per error (a scene pair holds one per axis).
MAX_TRUTHS: int = 3
ANSWER_COLUMNS: tuple[str, ...] = ("qa_truth", "qa_claim")


def _own_question(model: LVLM, key: str, default: str) -> str:
    """``run_defaults["questions"][key]`` of ``model``, else ``default``."""
    return ((getattr(model, "run_defaults", None) or {}).get("questions") or {}).get(key, default)


def relation_question(model: LVLM) -> str:
    """The model's relation question: ``run_defaults["questions"]["relation"]`` (the organisms are asked as they
    were trained, ``"is the {subject} {predicate} the {object} ?"``), else :data:`HUB_RELATION_QUESTION`."""
    q = _own_question(model, "relation", HUB_RELATION_QUESTION)
    missing = [k for k in ("{subject}", "{predicate}", "{object}") if k not in q]
    if missing:
        raise InputError(f"relation question {q!r} needs {', '.join(missing)}; fix `questions.relation` in the "
                         "model's run_defaults.json")
    return q


def is_organism(model: LVLM) -> bool:
    """Whether ``model`` is one of the zoo's organisms (its run defaults name it): those are asked in the synthetic
    world's prompt format and confirmed with the knobs set on the zoo; every other model gets the hub defaults."""
    return bool((getattr(model, "run_defaults", None) or {}).get("organism"))


def object_question(model: LVLM) -> str:
    """The model's existence question for verify-and-delete: ``run_defaults["questions"]["object"]``, else the
    synthetic world's (:data:`~lvlm_probe.schema.OBJECT_QUESTION`) for an organism and
    :data:`HUB_OBJECT_QUESTION` for any other model."""
    q = _own_question(model, "object", OBJECT_QUESTION if is_organism(model) else HUB_OBJECT_QUESTION)
    if "{}" not in q:
        raise InputError(f"object question {q!r} needs a {{}} where the class goes; fix `questions.object` in the "
                         "model's run_defaults.json")
    return q


def _asks(errors: pd.DataFrame) -> list[tuple[Any, str, str]]:
    """``(error index, "truth" | "claim", predicate)`` for every relation error with a subject, object and claim."""
    out: list[tuple[Any, str, str]] = []
    for idx, r in errors.iterrows():
        if r.get("kind") != "relation" or not all(isinstance(r.get(k), str) and r.get(k)
                                                  for k in ("subject", "object", "claimed", "truth")):
            continue
        truths = [t for t in str(r["truth"]).split("|") if t and t != r["claimed"]][:MAX_TRUTHS]
        if truths:
            out += [(idx, "truth", t) for t in truths] + [(idx, "claim", str(r["claimed"]))]
    return out


def answer_evidence(model: LVLM, items: Sequence[Item], errors: pd.DataFrame, *, batch_size: int = 16,
                    answer_tokens: int = 3, progress: bool = True) -> pd.DataFrame:
    """``qa_truth`` and ``qa_claim`` of every relation error (NaN for the other errors).

    Parameters
    ----------
    model : LVLM
    items : sequence of Item
        The run's items (their images are asked about).
    errors : DataFrame
        Error rows with ``item_id``, ``kind``, ``subject``, ``object``, ``claimed`` and ``truth`` (``"|"``-joined
        true predicates).
    batch_size : int
        Questions per greedy generation batch.
    answer_tokens : int
        Tokens generated per answer.

    Returns
    -------
    DataFrame
        Indexed like ``errors``: ``qa_truth`` (share of the true predicates answered "yes") and ``qa_claim`` (1.0
        when the claimed predicate is answered "yes", else 0.0 if "no", else NaN).
    """
    from lvlm_probe.misalignment.readers import read_yes_no

    out = pd.DataFrame(np.nan, index=errors.index, columns=list(ANSWER_COLUMNS))
    asks = _asks(errors) if len(errors) else []
    if not asks:
        return out
    template, by_id = relation_question(model), {it.id: it for it in items}
    answers: list[str | None] = []
    for k in tqdm(range(0, len(asks), batch_size), desc="relation questions", disable=not progress):
        chunk = asks[k:k + batch_size]
        rows = [errors.loc[idx] for idx, _, _ in chunk]
        batch = model.prepare([by_id[str(r["item_id"])].image for r in rows],
                              [template.format(subject=r["subject"], predicate=p, object=r["object"])
                               for r, (_, _, p) in zip(rows, chunk)])
        answers += [read_yes_no(t) for t in model.generate(batch, max_new_tokens=answer_tokens).text]
    said: dict[Any, dict[str, list]] = {}
    for (idx, role, _), a in zip(asks, answers):
        said.setdefault(idx, {"truth": [], "claim": []})[role].append(a)
    for idx, s in said.items():
        out.loc[idx, "qa_truth"] = float(np.mean([a == "yes" for a in s["truth"]]))
        claim = s["claim"][0]
        out.loc[idx, "qa_claim"] = 1.0 if claim == "yes" else 0.0 if claim == "no" else math.nan
    return out
