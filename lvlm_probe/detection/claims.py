"""The claims of a generation, one row each, labelled misaligned or not where the ground truth is known.

A detector scores claims, not errors: every object, attribute and relation a caption asserts (and the answer of a
yes/no or attribute question) is a row, whether right or wrong. Where the item has a scene graph, the judge's
errors label the rows (``misaligned`` 1 or 0); without one the label is missing and only the detector can tell.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.data.items import Item
from lvlm_probe.misalignment.claims import extract_claims, tokens_for_span
from lvlm_probe.misalignment.readers import attribute_value_span, yes_no_span
from lvlm_probe.misalignment.vocab import Vocabulary, default_vocabulary

#: Columns of a claims table (one row per claim).
CLAIM_COLUMNS: tuple[str, ...] = ("claim_id", "item_id", "b", "task", "kind", "subject", "attribute", "object", "value",
                                  "word", "negated", "start", "end", "first_token", "misaligned")
#: The kind of claim a question task's answer makes.
QA_KIND = {"exists": "object", "attribute": "attribute", "relation": "relation"}


def _caption_claims(text: str, spans: Sequence[Sequence[int]], vocab: Vocabulary) -> list[dict]:
    rows = []
    for c in extract_claims(text, vocab, token_spans=spans):
        if not c.token_indices:
            continue
        word = c.text.split()[0] if c.kind != "relation" else c.value.split()[0]
        rows.append({"kind": c.kind, "subject": c.subject, "attribute": c.attribute, "object": c.object,
                     "value": c.value, "word": word,
                     "negated": c.negated,
                     "start": c.span[0], "end": c.span[1], "first_token": int(c.token_indices[0])})
    return rows


def _qa_claim(text: str, spans: Sequence[Sequence[int]], item: Item, vocab: Vocabulary) -> list[dict]:
    """The answer of a question item as one claim (its first token is the answer's)."""
    meta = dict(item.meta or {})
    if item.task == "attribute":
        att = vocab.attribute_names.get(str(meta.get("attribute", "")).lower(), str(meta.get("attribute", "")))
        said = attribute_value_span(text, att, vocab)
        value, word = (said[0], said[0]) if said else (None, None)
    else:
        said = yes_no_span(text)
        value = said[0] if said else None
        word = str(meta.get("target") or meta.get("predicate") or value or "")
    if said is None:
        return []
    toks = tokens_for_span(said[1], spans)
    if not toks:
        return []
    subject = str(meta.get("target") or meta.get("subject") or "")
    att = vocab.attribute_names.get(str(meta.get("attribute", "")).lower()) if item.task == "attribute" else None
    return [{"kind": QA_KIND[item.task], "subject": subject, "attribute": att, "object": meta.get("object"),
             "value": value,
             "word": word.split()[0] if word else word, "negated": value == "no", "start": said[1][0],
             "end": said[1][1], "first_token": int(toks[0])}]


def claim_table(generation: Any, items: Sequence[Item], errors: pd.DataFrame | None = None, *,
                vocabulary: Vocabulary | None = None) -> pd.DataFrame:
    """Every claim of one generation batch.

    Parameters
    ----------
    generation : Generation
        ``text`` and ``token_spans`` per item (``b`` indexes ``items``).
    items : sequence of Item
        The batch's items (``task`` selects caption or question reading).
    errors : DataFrame, optional
        The judge's misalignment frame of this batch (``b``, ``kind``, ``start``, ``end``). A claim is misaligned
        when an error of its item has its kind and span. None: no ground truth, ``misaligned`` is missing.
    vocabulary : Vocabulary, optional

    Returns
    -------
    DataFrame
        :data:`CLAIM_COLUMNS`; ``first_token`` is the generated-token index of the claim's first word (the token
        a wrong claim would have been emitted with); ``word`` the word its internal confidence is read for.
    """
    vocab = vocabulary or default_vocabulary()
    rows = []
    for b, it in enumerate(items):
        text, spans = generation.text[b], generation.token_spans[b]
        found = _qa_claim(text, spans, it, vocab) if it.task in QA_KIND else _caption_claims(text, spans, vocab)
        for k, r in enumerate(found):
            rows.append({"claim_id": f"{it.id}@{k}", "item_id": it.id, "b": b, "task": it.task or "caption", **r})
    out = pd.DataFrame(rows, columns=[c for c in CLAIM_COLUMNS if c != "misaligned"])
    out["misaligned"] = _labels(out, errors, items, vocab)
    return out[list(CLAIM_COLUMNS)]


def _labels(claims: pd.DataFrame, errors: pd.DataFrame | None, items: Sequence[Item], vocab: Vocabulary
            ) -> pd.Series:
    """1.0 where the judge found an error with the claim's kind and span, 0.0 where the claim is judgeable and
    right, NaN where it has no ground truth: no judge, or a caption's attribute / relation claim about an object
    the scene does not hold (the judge reports that object once, as an object hallucination)."""
    if errors is None:
        return pd.Series(np.nan, index=claims.index, dtype=float)
    from lvlm_probe.misalignment.judge import _Truth

    wrong = {(int(r.b), r.kind, int(r.start), int(r.end)) for r in errors.itertuples() if not pd.isna(r.start)}
    truths = {b: _Truth(it.scene, vocab) for b, it in enumerate(items) if it.scene is not None}
    labels = []
    for c in claims.itertuples():
        truth = truths.get(int(c.b))
        if (int(c.b), c.kind, int(c.start), int(c.end)) in wrong:
            labels.append(1.0)
        elif truth is None or (c.task == "caption" and c.kind == "attribute" and not truth.find(c.subject)):
            labels.append(np.nan)
        elif c.task == "caption" and c.kind == "relation" and not _judgeable_relation(c, truth):
            labels.append(np.nan)
        else:
            labels.append(0.0)
    return pd.Series(labels, index=claims.index, dtype=float)


def _judgeable_relation(c: Any, truth: Any) -> bool:
    return c.value in truth.judgeable and truth.find(c.subject) != [] and bool(truth.find(str(c.object or "")))
