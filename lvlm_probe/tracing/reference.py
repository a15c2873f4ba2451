"""Self-calibrated evidence: each error's features measured against the same model's correct claims.

The cascade's absolute thresholds (``fusion_pmi`` = 1 nat, probe thresholds 0.8 / 0.6) were set on 0.5M-parameter
organisms; on another model the same numbers need not mean the same thing. The *reference set* fixes the scale:
in the same run, every correct claim of every judged generation (an object, attribute or relation the caption
asserts that the scene confirms, or a right answer to a question) gets the same evidence as an error — token
features from the same teacher-forced passes, and the same out-of-fold probe verdicts. Each error's feature is
then expressed as its quantile among the reference: the correct claims of the same attribute (colour words
against colour words), else of the same kind, else all, whichever is the narrowest with at least
:data:`MIN_REFERENCE` claims:

==============  =================================================================================================
column          meaning
==============  =================================================================================================
``q_pmi``       quantile of ``|pmi_img|`` among the correct claims: low when this token used the image less than
                the model's correct words do
``q_use``       quantile of the item's ``img_use`` among the items with a correct claim
``q_p_emit``    quantile of ``p_emit``
``q_enc``       quantile of ``enc_p_true``: low when the encoder probe reads this fact worse than it reads the
                facts the model gets right
``q_proj``      quantile of ``proj_p_true``
``ref_pmi``     median ``|pmi_img|`` of the correct claims (nats): how much this model uses the image at all
``n_reference`` the size of the reference the quantiles were read against
==============  =================================================================================================

A quantile is the mid-rank: ``(#{ref < x} + #{ref = x} / 2) / n``; NaN when ``x`` or the reference is missing.
Quantiles do not depend on the model's scale (any increasing map of a feature leaves them unchanged).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.data.items import Item

#: A kind's own correct claims are the reference when there are at least this many, else every kind's.
MIN_REFERENCE = 20
#: Calibrated columns added to the evidence frame.
CALIBRATED_COLUMNS: tuple[str, ...] = ("q_pmi", "q_use", "q_p_emit", "q_enc", "q_proj", "ref_pmi", "n_reference")
#: Evidence feature behind each quantile column (``abs_pmi`` is ``|pmi_img|``).
QUANTILE_OF: dict[str, str] = {"q_pmi": "abs_pmi", "q_use": "img_use", "q_p_emit": "p_emit", "q_enc": "enc_p_true",
                               "q_proj": "proj_p_true"}


def reference_claims(generation: Any, items: Sequence[Item], errors: pd.DataFrame, *, batch: int,
                     vocabulary: Any = None) -> pd.DataFrame:
    """The correct, asserted claims of one generation batch, as rows shaped like the judge's errors.

    Parameters
    ----------
    generation : Generation
        The batch (``b`` indexes ``items``).
    items : sequence of Item
        The batch's items, with scene graphs.
    errors : DataFrame
        The judge's errors of this batch (``b``, ``kind``, ``start``, ``end``): claims that match one are not
        correct.
    batch : int
        The generation batch index (the ``batch`` column).

    Returns
    -------
    DataFrame
        ``error_id`` (``ref:<claim_id>``), ``item_id``, ``b``, ``batch``, ``kind``, ``polarity`` ("correct"),
        ``subject``, ``attribute``, ``object``, ``claimed``, ``truth`` (= ``claimed``), ``first_token``. Negated
        claims (a "no" answer, "there is no ...") are left out: their token is the negation, not the claim.
    """
    from lvlm_probe.detection.claims import claim_table

    errors = errors.reindex(columns=list(dict.fromkeys([*errors.columns, "b", "kind", "polarity", "start", "end"])))
    claims = claim_table(generation, items, errors, vocabulary=vocabulary)
    # an asserted error without a span (a custom judge's) cannot be matched to its claim: its item gives no
    # reference (an omission asserts nothing, so it has no span and excludes nothing)
    unplaced = {int(b) for b, s, pol in zip(errors.b, errors.start, errors.polarity)
                if pd.isna(s) and not pd.isna(b) and pol != "omitted"}
    keep = claims[(claims.misaligned == 0.0) & ~claims.negated.astype(bool) & ~claims.b.isin(unplaced)]
    claimed = [r.subject if r.kind == "object" else r.value for r in keep.itertuples()]
    return pd.DataFrame({
        "error_id": "ref:" + keep.claim_id.astype(str), "item_id": keep.item_id.astype(str), "b": keep.b.astype(int),
        "batch": int(batch), "kind": keep.kind, "polarity": "correct", "subject": keep.subject,
        "attribute": keep.attribute, "object": keep.object, "claimed": claimed, "truth": claimed,
        "first_token": keep.first_token.astype(int)}).reset_index(drop=True)


def midrank_quantile(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mid-rank quantile of each ``x`` within ``reference`` (NaNs dropped); NaN for a NaN ``x`` or an empty
    reference."""
    ref = np.sort(np.asarray(reference, dtype=float))
    ref = ref[~np.isnan(ref)]
    x = np.asarray(x, dtype=float)
    if not len(ref):
        return np.full(x.shape, np.nan)
    lo, hi = np.searchsorted(ref, x, "left"), np.searchsorted(ref, x, "right")
    q = (lo + (hi - lo) / 2.0) / len(ref)
    return np.where(np.isnan(x), np.nan, q)


def _feature(df: pd.DataFrame, name: str) -> pd.Series:
    if name == "abs_pmi":
        return pd.to_numeric(df.get("pmi_img"), errors="coerce").abs()
    return pd.to_numeric(df.get(name), errors="coerce")


def calibrate(frame: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (errors with evidence) plus :data:`CALIBRATED_COLUMNS`, read against ``reference``.

    ``q_use`` reads the item-level ``img_use`` against one value per reference item; the others read each
    reference claim of the error's attribute, kind, or all (the narrowest with :data:`MIN_REFERENCE` claims).
    """
    out = frame.copy()
    for c in CALIBRATED_COLUMNS:
        out[c] = np.nan
    if not len(out) or reference is None or not len(reference):
        out["n_reference"] = 0.0
        return out
    ref_items = reference.drop_duplicates("item_id")
    pmi = _feature(reference, "abs_pmi")
    out["ref_pmi"] = float(np.nanmedian(pmi)) if pmi.notna().any() else np.nan
    attribute = out["attribute"] if "attribute" in out else pd.Series(None, index=out.index, dtype=object)
    for (kind, att), rows in out.groupby([out.kind.fillna(""), attribute.fillna("")], dropna=False):
        ref = _reference_for(reference, str(kind), str(att))
        out.loc[rows.index, "n_reference"] = float(len(ref))
        for col, feat in QUANTILE_OF.items():
            pool = ref_items if feat == "img_use" else ref
            out.loc[rows.index, col] = midrank_quantile(_feature(rows, feat).to_numpy(),
                                                        _feature(pool, feat).to_numpy())
    return out


def _reference_for(reference: pd.DataFrame, kind: str, attribute: str) -> pd.DataFrame:
    """The narrowest reference with at least :data:`MIN_REFERENCE` claims: the same attribute (attribute claims),
    the same kind, or all."""
    same_kind = reference[reference.kind.fillna("") == kind]
    if kind == "attribute" and "attribute" in reference:
        same = same_kind[same_kind.attribute.fillna("") == attribute]
        if len(same) >= MIN_REFERENCE:
            return same
    return same_kind if len(same_kind) >= MIN_REFERENCE else reference
