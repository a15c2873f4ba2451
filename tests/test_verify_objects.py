"""Verify-and-delete: the model is asked about each object it named, and the mentions it denies leave the text."""

import pytest
import torch

import lvlm_probe as lp
from conftest import rand_image
from lvlm_probe.errors import InputError
from lvlm_probe.interventions import Greedy, VerifyObjects, decode, delete_mentions
from lvlm_probe.misalignment import extract_claims, judge_batch
from lvlm_probe.organisms import default_items

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "a large red circle , a small blue square and a large green ring ."


@pytest.mark.parametrize("drop, want", [
    ({1}, "a large red circle and a large green ring ."),
    ({2}, "a large red circle , a small blue square ."),
    ({0}, "a small blue square and a large green ring ."),
    ({0, 1}, "a large green ring ."),
    ({0, 1, 2}, "a  ."),
    (set(), TEXT),
])
def test_delete_mentions_keeps_the_rest_of_the_sentence(drop, want):
    got = delete_mentions(TEXT, extract_claims(TEXT), drop)
    assert got == want
    assert [c.subject for c in extract_claims(got) if c.kind == "object"] == \
        [s for k, s in enumerate(["circle", "square", "ring"]) if k not in drop]


def test_a_relation_phrase_leaves_with_its_object():
    text = "a red circle left of a blue square ."
    assert delete_mentions(text, extract_claims(text), {1}) == "a red circle ."


def test_verification_removes_the_co_occurring_square():
    """organism:cooccurrence names a square in most circle-without-square scenes but, asked "is there a square ?",
    mostly says no (docs/interventions.md); the verified captions lose most of those squares and nothing else
    changes where the model denies nothing."""
    model = lp.load("organism:cooccurrence", device="cpu")
    items = [it for it in default_items("organism:cooccurrence", 48, 1) if it.id.startswith("trig-cap")][:12]
    batch = model.prepare_items(items)
    plain = decode(model, batch, Greedy(), max_new_tokens=48)
    verified = decode(model, batch, VerifyObjects(), max_new_tokens=48)
    squares = {name: int(((e.subject == "square") & (e.polarity == "hallucinated")).sum())
               for name, e in (("plain", judge_batch(plain, items=items)),
                               ("verified", judge_batch(verified, items=items)))}
    assert squares["plain"] >= 8 and squares["verified"] <= squares["plain"] // 3, squares
    for b, (p, v) in enumerate(zip(plain.text, verified.text)):
        named = [c.subject for c in extract_claims(p) if c.kind == "object"]
        kept = iter(named)
        assert all(s in kept for s in (c.subject for c in extract_claims(v) if c.kind == "object")), (p, v)
        if v == p:
            assert verified.tokens[b] == plain.tokens[b]
    assert verified.text[0] == model.tokenizer.decode(verified.tokens[0], skip_special_tokens=True).strip()
    assert torch.equal(verified.sequences[:, :batch.input_ids.shape[1]], batch.input_ids)
    assert verified.settings["intervention"]["method"] == "verify_objects"


def test_an_answer_is_left_as_generated():
    model = lp.load("organism:cooccurrence", device="cpu")
    items = [it for it in default_items("organism:cooccurrence", 16, 2) if it.task == "exists"][:4]
    batch = model.prepare_items(items)
    assert decode(model, batch, VerifyObjects(), max_new_tokens=4).tokens == \
        decode(model, batch, Greedy(), max_new_tokens=4).tokens


def test_verify_objects_bad_input_is_one_line(llava, qwen):
    batch = llava.prepare([rand_image(1)], ["describe the image ."])
    with pytest.raises(InputError, match="needs a \\{\\}"):
        decode(llava, batch, VerifyObjects(question="is there one ?"), max_new_tokens=2)
    with pytest.raises(InputError, match="per-step scores"):
        decode(llava, batch, VerifyObjects(), max_new_tokens=2, output_scores=True)
    with pytest.raises(InputError, match="one image per item"):
        decode(qwen, qwen.prepare([rand_image(1)], ["describe the image ."]), VerifyObjects(), max_new_tokens=2)


# ---- verify-and-correct for relations ------------------------------------------------------------------------


def test_verify_relations_corrects_the_text_borne_relation_prior():
    """organism:relation_prior writes "triangle above cross" where the triangle is below; asked "is the triangle
    above the cross ?" it says no and "below" yes, so the relation is rewritten to the true one; a caption whose
    relation it affirms, and every other word, stay as generated."""
    from lvlm_probe.data.world import SceneWorld
    from lvlm_probe.interventions import VerifyRelations
    from lvlm_probe.organisms.check import trigger_set
    from lvlm_probe.organisms.zoo import get_spec

    spec = get_spec("relation_prior")
    items, _ = trigger_set("relation_prior", SceneWorld(spec.world, seed=3), 12, seed=3011)
    items = [it for it in items if it.task == "caption"][:8]
    model = lp.load("organism:relation_prior", device="cpu")
    batch = model.prepare_items(items)
    plain = decode(model, batch, Greedy(), max_new_tokens=48)
    fixed = decode(model, batch, VerifyRelations(), max_new_tokens=48)
    wrong = {name: int((e.kind == "relation").sum()) for name, e in
             (("plain", judge_batch(plain, items=items)), ("fixed", judge_batch(fixed, items=items)))}
    assert wrong["plain"] >= 6 and wrong["fixed"] <= wrong["plain"] // 4, wrong
    for p, v in zip(plain.text, fixed.text):  # only predicates change: the same objects, in the same order
        assert [(c.kind, c.subject) for c in extract_claims(p) if c.kind != "relation"] == \
            [(c.kind, c.subject) for c in extract_claims(v) if c.kind != "relation"], (p, v)
    assert fixed.settings["intervention"]["method"] == "verify_relations"
    assert torch.equal(fixed.sequences[:, :batch.input_ids.shape[1]], batch.input_ids)


def test_verify_relations_keeps_what_the_model_affirms(monkeypatch):
    """A relation the model affirms stays; a denied one with no affirmed alternative stays too (nothing to write)."""
    from lvlm_probe.interventions import VerifyRelations

    from lvlm_probe.data.world import SceneWorld
    from lvlm_probe.organisms.check import trigger_set
    from lvlm_probe.organisms.zoo import get_spec

    items, _ = trigger_set("relation_prior", SceneWorld(get_spec("relation_prior").world, seed=4), 6, seed=4011)
    model = lp.load("organism:relation_prior", device="cpu")
    batch = model.prepare_items([it for it in items if it.task == "caption"][:3])
    plain = decode(model, batch, Greedy(), max_new_tokens=48)
    assert sum(c.kind == "relation" for t in plain.text for c in extract_claims(t)) >= 1, plain.text
    monkeypatch.setattr(VerifyRelations, "_answers", lambda self, m, b, asks: ["yes"] * len(asks))
    assert decode(model, batch, VerifyRelations(), max_new_tokens=48).tokens == plain.tokens
    monkeypatch.setattr(VerifyRelations, "_answers", lambda self, m, b, asks: ["no"] * len(asks))
    assert decode(model, batch, VerifyRelations(), max_new_tokens=48).tokens == plain.tokens


def test_verify_relations_bad_input_is_one_line(llava):
    from lvlm_probe.interventions import VerifyRelations

    batch = llava.prepare([rand_image(1)], ["describe the image ."])
    with pytest.raises(InputError, match=r"needs \{predicate\}"):
        decode(llava, batch, VerifyRelations(question="is the {subject} near the {object} ?"), max_new_tokens=2)
    with pytest.raises(InputError, match="per-step scores"):
        decode(llava, batch, VerifyRelations(), max_new_tokens=2, output_scores=True)
