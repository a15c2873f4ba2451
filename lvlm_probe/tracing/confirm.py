"""Interventional confirmation: does the intervention the named cause implies remove the error?

Every verdict of the cascade is correlational. For a diagnosed error, the intervention that should remove it if
the named stage is its cause is run on its item (:mod:`lvlm_probe.interventions`, parameter-frozen), the new
output is judged, and the error is ``confirmed`` when the same claim (same item, kind, polarity, subject and
attribute) is no longer misaligned and the claim is still made where it has to be (a question answered, an
attribute's true value stated; :func:`~lvlm_probe.misalignment.claims_kept`):

==================  ==================================================================================
stage               confirming intervention
==================  ==================================================================================
cooccurrence        verify-and-delete (:class:`~lvlm_probe.interventions.VerifyObjects`): asked directly about
                    the object it named, the model reads the image for that object alone, so an object that
                    the context brought (the circle brings the square) should be denied and deleted (after
                    Woodpecker, Yin et al. 2023). Chosen over VCD on the matrix's tuning seed (0.70 of the
                    co-occurrence errors removed, VCD 0.15): the context calls the claim up about as much
                    without the image as with it, so a contrast against a noised image leaves it
relation prior      verify-and-correct (:class:`~lvlm_probe.interventions.VerifyRelations`): asked directly
                    about the stated relation, the model reads the image for that pair, so a predicate the
                    training text put in the description should be denied and replaced by the one it
                    affirms (after Woodpecker). Chosen over VCD, the contrast against a noised image: on the
                    text-borne relation prior VCD fixed none of the matrix's relation errors (0 of 15, seed 1)
                    and confirmed 0 of 31-36 diagnoses per benchmark seed, since the caption states the prior
                    as surely with the image as without it
attribute prior     PAI (image attention amplified, refined against the image-free branch): the object's
                    true colour reaches the LLM and the class word's prior outvotes it, so more weight on
                    the image should restore it (Liu, Zheng & Chen, ECCV 2024). Chosen over VCD on the
                    matrix's tuning seed (the true colour restored for 0.62 of the attribute prior's errors,
                    VCD 0.12, and for none of the encoder blind spot's): a prior colour is often confident,
                    so VCD's plausibility cut (beta 0.1) leaves it the only candidate, and the noised image
                    keeps the colour
llm fusion          early-layer readout (DeCo-style): the image's fact reaches the LLM but the last layers
                    override it with the text prior, so mixing in the layer that sees it best should restore
                    it (Wang et al., ICLR 2025). The best net effect on visual neglect at the matrix's
                    tuning seed, though small (0.07; PAI -0.04): no method in the room repairs an LLM
                    that learned to ignore its image (docs/interventions.md)
decoding            greedy decoding: the sampled error should not come back
long generation     region restart (:class:`~lvlm_probe.interventions.RegionRestart`): describe each region
                    of the image in a fresh, short enumeration; an object dropped or drifted late in a
                    long one should now be named
encoder             the encoder swapped for a reference model's (:class:`~lvlm_probe.interventions.SwapComponent`):
                    no inference-time re-weighting can help (the fact never reaches the LLM), a good
                    encoder under the same LLM should. Needs a ``reference`` sharing the LLM (the zoo's
                    front-end organisms name ``clean``); without one, not tested
projector           the projector swapped for the reference's, on this model's own vision features
==================  ==================================================================================

The same map gives the cause × intervention matrix its ``intended`` column
(:data:`lvlm_probe.organisms.mitigation.INTENDED`), where each choice is measured against every other cause.

``confirmed`` is True, False, or None (not tested). A False does not prove the stage wrong: the intervention may
be too weak for the model (see the cause × intervention matrix in docs/interventions.md).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lvlm_probe.data.items import Item
from lvlm_probe.schema import OBJECT_QUESTION, RELATION_QUESTION
from lvlm_probe.errors import InputError
from lvlm_probe.misalignment.vocab import Vocabulary

#: Stage -> the intervention (by room name) whose success confirms it; None: not tested.
CONFIRMING: dict[str, str | None] = {
    "cooccurrence": "verify_objects", "attribute prior": "pai", "relation prior": "verify_relations",
    "llm fusion": "early_readout",
    "decoding": "greedy", "long generation": "region_restart", "encoder": "swap_encoder",
    "projector": "swap_projector",
}
#: What "the same claim" means (a colour error replaced by another wrong colour is not removed).
SAME_CLAIM = ("item_id", "kind", "polarity", "subject", "attribute")
#: Knobs set on the zoo's tuning seed for its 4-layer LLMs (the cause x intervention matrix). They apply to the
#: organisms only; every other model is confirmed with the papers' own settings (the classes' defaults).
ZOO_KNOBS: dict[str, dict[str, float | int]] = {"vcd": {"alpha": 3.0},
                                                "pai": {"alpha": 2.0, "gamma": 2.0, "first_layer": 1}}


def confirming_interventions(reference: Any = None, vocabulary: Vocabulary | None = None,
                             relation_question: str = RELATION_QUESTION, *, zoo: bool = True,
                             object_question: str = OBJECT_QUESTION) -> dict[str, Any]:
    """The confirming interventions and their knobs.

    With ``zoo`` (the organisms, and the cause × intervention matrix) VCD and PAI take :data:`ZOO_KNOBS`, set once on
    the zoo's tuning seed for its 4-layer LLMs (never per organism): VCD alpha 3 (alpha 1 fixed 1 of 14
    co-occurrence errors); PAI alpha 2, gamma 2 from the second layer on (PAI's own 0.2 / 1.1 from the third
    changed nothing on those LLMs). Without it (any other model) both run at their papers' settings. The early
    readout, greedy decoding, region restart (2 x 2), verify-and-delete (asked with ``object_question``; its
    ``vocabulary`` reads the objects a text names, default the synthetic world's) and verify-and-correct for
    relations (asked with ``relation_question``; :func:`~lvlm_probe.tracing.ask.relation_question`) run at their
    defaults. A method a model cannot run (PAI where the bridge ignores attention edits) leaves its errors not
    tested. With a ``reference`` (an LVLM sharing the model's LLM),
    also the encoder and projector swaps (:class:`~lvlm_probe.interventions.SwapComponent`)."""
    from lvlm_probe.interventions import (PAI, VCD, EarlyReadout, Greedy, RegionRestart, SwapComponent, VerifyObjects,
                                          VerifyRelations)

    knobs = ZOO_KNOBS if zoo else {}
    room: dict[str, Any] = {"vcd": VCD(**knobs.get("vcd", {})), "pai": PAI(**knobs.get("pai", {})),
                            "early_readout": EarlyReadout(), "greedy": Greedy(), "region_restart": RegionRestart(),
                            "verify_objects": VerifyObjects(question=object_question, vocabulary=vocabulary),
                            "verify_relations": VerifyRelations(question=relation_question, vocabulary=vocabulary)}
    if reference is not None:
        room.update(swap_encoder=SwapComponent(reference, "encoder"), swap_projector=SwapComponent(reference, "projector"))
    return room


def _claim_keys(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    cols = [c for c in SAME_CLAIM if c in frame.columns]
    return [tuple("" if pd.isna(v) else str(v) for v in row) for row in frame[cols].itertuples(index=False)]


def confirm_diagnoses(model: Any, items: Sequence[Item], diagnoses: pd.DataFrame, *, max_new_tokens: int,
                      vocabulary: Any = None, progress: bool = True, reference: Any = None) -> pd.DataFrame:
    """Run each diagnosed error's confirming intervention on its item and judge the new output.

    Parameters
    ----------
    model : LVLM
    items : sequence of Item
        The diagnosed items (with scene graphs).
    diagnoses : DataFrame
        The cascade's output (``item_id, kind, polarity, subject, attribute, stage``).
    max_new_tokens : int
    reference : LVLM, optional
        A model sharing ``model``'s LLM with a known-good front end; encoder and projector diagnoses are tested
        only with one.

    Returns
    -------
    DataFrame
        Indexed like ``diagnoses``: ``confirmed`` (True / False / None) and ``confirmed_by`` (the intervention's
        name, None when not tested).
    """
    from lvlm_probe.interventions import decode
    from lvlm_probe.misalignment import claims_kept, judge_batch

    out = pd.DataFrame({"confirmed": pd.Series([None] * len(diagnoses), index=diagnoses.index, dtype=object),
                        "confirmed_by": pd.Series([None] * len(diagnoses), index=diagnoses.index, dtype=object)})
    from lvlm_probe.tracing.ask import is_organism, object_question, relation_question

    methods = confirming_interventions(reference, vocabulary, relation_question(model), zoo=is_organism(model),
                                       object_question=object_question(model))
    by_id = {it.id: it for it in items}
    wanted = diagnoses.stage.map(lambda s: CONFIRMING.get(s) if CONFIRMING.get(s) in methods else None)
    jobs = sorted({(str(i), m) for i, m in zip(diagnoses.item_id, wanted) if isinstance(m, str)})
    remaining: dict[tuple[str, str], set] = {}
    texts: dict[tuple[str, str], str] = {}
    unsupported: dict[str, str] = {}
    for iid, name in tqdm(jobs, desc="confirm", disable=not progress):
        item = by_id[iid]
        if name in unsupported:
            continue
        try:
            gen = decode(model, model.prepare_items([item]), methods[name], max_new_tokens=max_new_tokens)
        except InputError as e:  # the method cannot run on this model (e.g. PAI where attention edits are ignored)
            unsupported[name] = str(e)
            continue
        remaining[(iid, name)] = set(_claim_keys(judge_batch(gen, items=[item], vocabulary=vocabulary)))
        texts[(iid, name)] = gen.text[0]
    for name, why in unsupported.items():
        warnings.warn(f"confirmation by {name} not tested on this model: {why}", stacklevel=2)
    keys = _claim_keys(diagnoses)
    for idx, key, name, iid in zip(diagnoses.index, keys, wanted, diagnoses.item_id.astype(str)):
        if isinstance(name, str) and name not in unsupported:
            kept = claims_kept(diagnoses.loc[[idx]], [by_id[iid]], {iid: texts[(iid, name)]}, vocabulary)[0]
            out.at[idx, "confirmed"] = bool(key not in remaining[(iid, name)] and kept)
            out.at[idx, "confirmed_by"] = name
    return out


def confirmation_summary(diagnoses: pd.DataFrame) -> pd.DataFrame:
    """Per stage: errors, tested, confirmed and the confirmed share of the tested ones."""
    d = diagnoses.assign(tested=diagnoses.confirmed.notna(), yes=diagnoses.confirmed.eq(True))
    g = d.groupby("stage").agg(errors=("stage", "size"), tested=("tested", "sum"), confirmed=("yes", "sum"))
    g["confirmed_share"] = np.where(g.tested > 0, g.confirmed / g.tested.clip(lower=1), np.nan)
    return g.reset_index()
