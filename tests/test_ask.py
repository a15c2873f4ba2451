"""Behavioural evidence: the direct relation question, and the cascade's veto on front-end verdicts it gives."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import lvlm_probe as lp
from lvlm_probe.data.world import SceneWorld
from lvlm_probe.schema import RELATION_QUESTION
from lvlm_probe.errors import InputError
from lvlm_probe.organisms import organism_path, run_defaults
from lvlm_probe.organisms.zoo import get_spec
from lvlm_probe.tracing.ask import HUB_RELATION_QUESTION, answer_evidence, relation_question
from lvlm_probe.tracing.cascade import Thresholds, diagnose_error

# a relation error whose encoder probe is low among the correct relations: the encoder rule fires without answers
REL = dict(kind="relation", polarity="hallucinated", subject="triangle", object="cross", claimed="above",
           truth="below|left of", enc_p_true=0.1, proj_p_true=0.1, q_enc=0.02, p_emit=0.99, p_noimg=0.99,
           pmi_img=0.1, img_use=2.0, q_pmi=0.4, q_use=0.5, ref_pmi=3.0, prior_train=0.97, prior_lift=2.3,
           prior_context="triangle|cross", context_in_image=1.0)


def test_a_right_answer_vetoes_the_front_end_verdicts():
    """Asked about the same image, a model that says "yes" to every true relation and "no" to the claimed one has
    the relation in its LLM: no encoder or projector verdict; a yes to the claim too (a yes-sayer) vetoes nothing."""
    th = Thresholds()
    assert diagnose_error(REL, th).stage == "encoder"
    right = diagnose_error({**REL, "qa_truth": 1.0, "qa_claim": 0.0}, th)
    assert right.stage == "relation prior" and "encoder" not in right.causes, right.causes
    assert "asked directly, the model answers the true relation" in right.rule
    assert right.scores["encoder"] == 0.0 and right.scores["projector"] == 0.0
    for qa in ({"qa_truth": 1.0, "qa_claim": 1.0}, {"qa_truth": 0.5, "qa_claim": 0.0},
               {"qa_truth": 1.0, "qa_claim": math.nan}, {"qa_truth": 0.0, "qa_claim": 0.0}):
        d = diagnose_error({**REL, **qa}, th)
        assert d.stage == "encoder" and "asked directly" not in d.rule, (qa, d.rule)
    # the projector rule (encoder decodes it, projector does not) is vetoed the same way
    proj = {**REL, "enc_p_true": 0.95, "q_enc": 0.6}
    assert diagnose_error(proj, th).stage == "projector"
    assert diagnose_error({**proj, "qa_truth": 1.0, "qa_claim": 0.0}, th).stage == "relation prior"
    # without a prior the vetoed error goes to the next rule that holds, or stays undetermined
    bare = {**REL, "prior_train": 0.1, "qa_truth": 1.0, "qa_claim": 0.0}
    assert diagnose_error(bare, th).stage not in ("encoder", "projector")


def test_the_relation_question_comes_from_the_run_defaults():
    class M:
        run_defaults: dict = {}

    m = M()
    assert relation_question(m) == HUB_RELATION_QUESTION
    m.run_defaults = run_defaults("relation_prior")
    assert relation_question(m) == RELATION_QUESTION == "is the {subject} {predicate} the {object} ?"
    m.run_defaults = {"questions": {"relation": "is the {subject} near the {object} ?"}}
    with pytest.raises(InputError, match=r"needs \{predicate\}.*questions.relation"):
        relation_question(m)
    # the organisms' questions are the world's own: a trained relation question reads back as one
    item = SceneWorld(get_spec("clean").world, seed=4).items(1, "relation", seed=5)[0]
    m.run_defaults = run_defaults("clean")
    meta = item.meta
    assert relation_question(m).format(subject=meta["subject"], predicate=meta["predicate"],
                                       object=meta["object"]) == item.prompt


@pytest.mark.skipif(not (organism_path("relation_prior") / "model.safetensors").is_file(),
                    reason="relation_prior checkpoint not shipped")
def test_relation_prior_knows_the_relation_its_caption_denies():
    """The planted relation prior is in the text only: its captions put the triangle above the cross, but asked
    about an image where the triangle is below, it says so (every true relation "yes", the claimed one "no");
    rows that are not relation errors, or lack a claim, get NaN."""
    from lvlm_probe.organisms.check import trigger_set

    spec = get_spec("relation_prior")
    items, _ = trigger_set("relation_prior", SceneWorld(spec.world, seed=7), 12, seed=7011)
    model = lp.load("organism:relation_prior", device="cpu")
    rows = []
    for it in items:
        truths = [p for p in ("below", "left of", "right of") if it.scene.holds("triangle", p, "cross")]
        if it.task == "caption" and "below" in truths and not it.scene.holds("triangle", "above", "cross"):
            rows.append({"item_id": it.id, "kind": "relation", "subject": "triangle", "object": "cross",
                         "claimed": "above", "truth": "|".join(truths)})
    assert len(rows) >= 4, len(rows)
    errors = pd.DataFrame(rows + [{"item_id": rows[0]["item_id"], "kind": "object", "subject": "square",
                                   "claimed": "square", "truth": None},
                                  {**rows[0], "claimed": None}])
    qa = answer_evidence(model, items, errors, batch_size=5, progress=False)
    assert list(qa.index) == list(errors.index) and list(qa.columns) == ["qa_truth", "qa_claim"]
    assert qa.iloc[-2:].isna().all().all()
    got = qa.iloc[:-2]
    assert (got.qa_claim == 0.0).mean() >= 0.75 and (got.qa_truth == 1.0).mean() >= 0.75, got
    assert np.isfinite(got.to_numpy()).all()


def _caption_errors(n_mentions: float, stage_two: bool = False) -> pd.DataFrame:
    """A caption that says "square" (a co-occurrence prior: the circle is in the image) and leaves out a cross."""
    hal = dict(error_id="e0", item_id="i0", kind="object", polarity="hallucinated", claimed="square", truth=None,
               p_emit=0.9, p_noimg=0.9, pmi_img=0.1, img_use=2.0, prior_train=0.9, prior_lift=3.0,
               prior_context="circle", context_in_image=1.0, enc_p_true=0.95, proj_p_true=0.95,
               n_mentions=n_mentions, n_scene_objects=3.0, pos_quantile=0.2)
    omi = dict(error_id="e1", item_id="i0", kind="object", polarity="omitted", claimed=None, truth="cross",
               img_use=2.0, enc_p_true=0.95, proj_p_true=0.95, n_mentions=n_mentions, n_scene_objects=3.0,
               pos_quantile=0.5)
    rows = [hal, omi]
    if stage_two:  # a second hallucination with another stage: which one displaced the cross is not known
        rows.append({**hal, "error_id": "e2", "claimed": "ring", "enc_p_true": 0.1, "proj_p_true": 0.1})
    return pd.DataFrame(rows)


def test_an_omission_displaced_by_a_hallucination_gets_its_stage():
    from lvlm_probe.tracing import cascade

    d = cascade(_caption_errors(3.0))
    assert d.stage.tolist() == ["cooccurrence", "cooccurrence"], d[["stage", "rule"]]
    assert d.rule[1].startswith("displaced: the caption names 3 objects for the scene's 3; the hallucinated 'square'")
    assert d.level[1] == "data" and 0.0 < d.confidence[1] <= 1.0
    assert d.score_cooccurrence[1] == d.score_cooccurrence[0]
    # a caption that ran short left the cross out for another reason; two causes for two hallucinations: no link
    assert cascade(_caption_errors(2.0)).stage[1] == "undetermined"
    two = cascade(_caption_errors(3.0, stage_two=True))
    assert set(two.stage[[0, 2]]) == {"cooccurrence", "encoder"} and two.stage[1] == "undetermined"
