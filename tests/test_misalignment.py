"""Misalignment: claim extraction and typed judging against scene graphs, with exact character and token spans."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lvlm_probe.data.items import Item
from lvlm_probe.data.scene import Relation, SceneGraph, SceneObject
from lvlm_probe.data.world import SceneWorld, WorldConfig
from lvlm_probe.errors import InputError
from lvlm_probe.misalignment import (FRAME_COLUMNS, Misalignment, Vocabulary, claims_frame, extract_claims, judge,
                                     judge_batch, judge_frame, misalignments_frame, plural, tokens_for_span)

SYNONYMS = Path(__file__).resolve().parents[2] / "shared" / "bench_samples" / "chair" / "synonyms.txt"


def scene3() -> SceneGraph:
    """circle (large red) top-left, square (small blue) top-right, ring (large green) bottom-left."""
    return SceneGraph([SceneObject("circle", {"color": "red", "size": "large"}, (0, 0, 10, 10)),
                       SceneObject("square", {"color": "blue", "size": "small"}, (20, 0, 30, 10)),
                       SceneObject("ring", {"color": "green", "size": "large"}, (0, 20, 10, 30))]).derive_relations()


def ws_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of a whitespace tokenisation."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def fake_generation(texts: list[str], spans: list[list[tuple[int, int]]] | None = None) -> SimpleNamespace:
    return SimpleNamespace(text=texts, tokens=[[0] * len(ws_spans(t)) for t in texts],
                           token_spans=spans if spans is not None else [ws_spans(t) for t in texts])


def rows(ms: list[Misalignment], text: str | None = None) -> list[tuple]:
    """(kind, polarity, subject, claimed, truth, surface text of span) per misalignment."""
    out = []
    for m in ms:
        surface = None if m.span is None else text[m.span[0]:m.span[1]]
        assert surface == m.text
        out.append((m.kind, m.polarity, m.subject, m.claimed, m.truth, surface))
    return out


# ----------------------------------------------------------------------------------------------- claims
def test_extract_claims_world_caption_spans() -> None:
    text = "a large red circle , a small blue square and a large green ring ."
    claims = extract_claims(text)
    got = [(c.kind, c.subject, c.attribute, c.value, text[c.span[0]:c.span[1]], text[c.claim_span[0]:c.claim_span[1]],
            c.mention) for c in claims]
    assert got == [
        ("attribute", "circle", "size", "large", "large", "large red circle", 0),
        ("attribute", "circle", "color", "red", "red", "large red circle", 0),
        ("object", "circle", None, "circle", "circle", "large red circle", 0),
        ("attribute", "square", "size", "small", "small", "small blue square", 1),
        ("attribute", "square", "color", "blue", "blue", "small blue square", 1),
        ("object", "square", None, "square", "square", "small blue square", 1),
        ("attribute", "ring", "size", "large", "large", "large green ring", 2),
        ("attribute", "ring", "color", "green", "green", "large green ring", 2),
        ("object", "ring", None, "ring", "ring", "large green ring", 2),
    ]
    assert claims[0].span == (2, 7) and claims[2].span == (12, 18)
    assert not any(c.negated for c in claims) and all(c.token_indices == [] for c in claims)


def test_extract_relations_and_predicatives() -> None:
    text = "A red circle to the left of the square. The ring is below a large circle, and the square is small and blue."
    claims = extract_claims(text)
    rel = [(c.subject, c.predicate, c.object, c.text, text[c.claim_span[0]:c.claim_span[1]], c.negated)
           for c in claims if c.kind == "relation"]
    assert rel == [("circle", "left of", "square", "to the left of", "red circle to the left of the square", False),
                   ("ring", "below", "circle", "below", "ring is below a large circle", False)]
    assert claims[2].kind == "relation" and claims[2].object_mention == 1 and claims[2].mention == 0
    attrs = [(c.subject, c.attribute, c.value, c.text) for c in claims if c.kind == "attribute"]
    assert attrs == [("circle", "color", "red", "red"), ("circle", "size", "large", "large"),
                     ("square", "size", "small", "small"), ("square", "color", "blue", "blue")]
    # synonyms of the geometric predicates, case-insensitive, longest phrase first
    for phrase, pred in [("on top of", "above"), ("over", "above"), ("under", "below"), ("beneath", "below"),
                         ("Right Of", "right of"), ("on the right side of", "right of"), ("left of", "left of")]:
        t = f"the circle is {phrase} the ring"
        (r,) = [c for c in extract_claims(t) if c.kind == "relation"]
        assert (r.subject, r.value, r.object, r.text) == ("circle", pred, "ring", phrase)


def test_extract_negation_and_plurals() -> None:
    text = "There is no ring and the circle is not red. The square isn't left of the bar. I don't see any crosses or diamonds."
    got = [(c.kind, c.subject, c.value, c.negated, c.text) for c in extract_claims(text)]
    assert got == [("object", "ring", "ring", True, "ring"),
                   ("object", "circle", "circle", False, "circle"),
                   ("attribute", "circle", "red", True, "red"),
                   ("object", "square", "square", False, "square"),
                   ("relation", "square", "left of", True, "left of"),
                   ("object", "bar", "bar", False, "bar"),
                   ("object", "cross", "cross", True, "crosses"),
                   ("object", "diamond", "diamond", True, "diamonds")]
    # "no red circle" denies a red circle, not every circle: only a negated attribute claim
    assert [(c.kind, c.value, c.negated) for c in extract_claims("there is no red circle")] == [("attribute", "red", True)]
    # "X is not a Y" is not a denial of Y's existence
    assert [(c.subject, c.negated) for c in extract_claims("the circle is not a square")] == [("circle", False),
                                                                                           ("square", False)]
    # "no circle above the ring" denies the relation
    assert [(c.kind, c.value, c.negated) for c in extract_claims("there is no circle above the ring")] == [
        ("relation", "above", True), ("object", "ring", False)]


def test_extract_empty_and_no_vocabulary_words() -> None:
    assert extract_claims("") == []
    assert extract_claims("   ") == []
    assert extract_claims("a picture of nothing in particular .") == []
    assert claims_frame([]).columns.tolist()[:3] == ["kind", "subject", "value"]


def test_claims_frame_round_trip() -> None:
    text = "a small blue square above the ring ."
    df = claims_frame(extract_claims(text, token_spans=ws_spans(text)))
    assert df.kind.tolist() == ["attribute", "attribute", "object", "relation", "object"]
    assert [text[s:e] for s, e in zip(df.start, df.end)] == ["small", "blue", "square", "above", "ring"]
    assert df.token_indices.tolist() == [[1], [2], [3], [4], [6]]


# ----------------------------------------------------------------------------------------------- judging free text
def test_judge_every_error_kind_with_spans() -> None:
    text = "a small red circle , a yellow square and a triangle . the circle is right of the square ."
    ms = judge(text, scene3())
    assert rows(ms, text) == [
        ("attribute", "hallucinated", "circle", "small", "large", "small"),
        ("attribute", "hallucinated", "square", "yellow", "blue", "yellow"),
        ("object", "hallucinated", "triangle", "triangle", None, "triangle"),
        ("relation", "hallucinated", "circle", "right of", "left of", "right of"),
        ("object", "omitted", "ring", None, "ring", None),
    ]
    assert [m.attribute for m in ms] == ["size", "color", None, None, None]
    assert ms[3].object == "square"
    assert text[ms[3].claim_span[0]:ms[3].claim_span[1]] == "circle is right of the square"
    assert ms[4].span is None and ms[4].token_indices == [] and ms[4].first_token is None
    assert judge(text, scene3(), omissions=False) == ms[:4]


def test_judge_correct_caption_has_no_errors() -> None:
    text = "a large red circle left of a small blue square , and a large green ring below the circle ."
    assert judge(text, scene3()) == []
    # several objects of a class: a mention matches the object that fits most of its attributes
    sc = SceneGraph([SceneObject("circle", {"color": "blue", "size": "large"}),
                     SceneObject("circle", {"color": "red", "size": "small"})])
    assert judge("a small red circle and a large blue circle", sc) == []
    assert rows(judge("a large red circle", sc), "a large red circle") == [
        ("attribute", "hallucinated", "circle", "red", "blue", "red")]  # tie: the first circle is the referent


def test_judge_world_captions_and_swapped_colour() -> None:
    world = SceneWorld(WorldConfig(), seed=0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        scene = world.sample_scene(rng)
        cap = world.caption(scene)
        assert judge(cap, scene) == [], cap
    scene = world.sample_scene(np.random.default_rng(1), n_objects=3)
    cap = world.caption(scene)
    first = scene.objects[world.caption_order(scene)[0]]
    wrong = next(c for c in ("red", "blue") if c != first.attributes["color"])
    bad = cap.replace(first.attributes["color"], wrong, 1)
    ms = judge(bad, scene)
    assert rows(ms, bad) == [("attribute", "hallucinated", first.name, wrong, first.attributes["color"], wrong)]
    assert bad.index(wrong) == ms[0].span[0]


def test_judge_negations() -> None:
    sc = scene3()
    text = "there is no ring . the circle is not red and the square is not left of the circle . no triangle ."
    assert rows(judge(text, sc), text) == [
        ("object", "omitted", "ring", "ring", "ring", "ring"),
        ("attribute", "omitted", "circle", "red", "red", "red"),
    ]
    ms = judge("the circle is not left of the square", sc)
    assert rows(ms, "the circle is not left of the square") == [
        ("relation", "omitted", "circle", "left of", "left of", "left of"), ("object", "omitted", "ring", None, "ring", None)]
    assert ms[0].negated and not ms[1].negated
    # true denials are no error; a denied attribute that is false leaves the class unmentioned
    assert judge("the circle is not blue , there is no triangle", sc, omissions=False) == []
    assert rows(judge("there is no blue ring", sc)) == [("object", "omitted", "circle", None, "circle", None),
                                                         ("object", "omitted", "square", None, "square", None),
                                                         ("object", "omitted", "ring", None, "ring", None)]


def test_relation_ground_truth_rules() -> None:
    sc = scene3()
    # a relation with an absent class is reported once, as an object hallucination
    assert rows(judge("the circle is above a triangle", sc, omissions=False), "the circle is above a triangle") == [
        ("object", "hallucinated", "triangle", "triangle", None, "triangle")]
    # no true predicate between the pair: truth is None; several: joined with "|"
    sc2 = SceneGraph([SceneObject("circle", box=(0, 0, 10, 10)), SceneObject("bar", box=(20, 20, 30, 30))]).derive_relations()
    ms = judge("the bar is above the circle", sc2)
    assert [(m.claimed, m.truth) for m in ms] == [("above", "below|right of")]
    # predicates the scene does not annotate are not judged (COCO-style "next to" in the shapes world)
    cv = Vocabulary.synthetic().extend(relations={"next to": "next to"})
    assert judge("the bar is next to the circle", sc2, vocabulary=cv) == []
    # scene relations given by hand with synonyms are canonicalised ("on top of" -> "above")
    sc3 = SceneGraph([SceneObject("circle"), SceneObject("ring")], relations=[Relation(0, "on top of", 1)])
    assert judge("the circle is over the ring", sc3) == []
    assert [m.kind for m in judge("the circle is below the ring", sc3)] == ["relation"]


def test_token_indices_whitespace_subword_and_specials() -> None:
    text = "a small red circle , a yellow square and a triangle . the circle is right of the square ."
    gen = fake_generation([text])
    ms = judge(gen, scene3())
    assert [m.token_indices for m in ms] == [[1], [6], [10], [15, 16], []]
    assert [m.first_token for m in ms] == [1, 6, 10, 15, None]
    # sub-word tokens with leading spaces, and an EOS with an empty span
    text2 = "a triangle"
    spans = [(0, 1), (1, 5), (5, 10), (10, 10)]  # "a", " tri", "angle", </s>
    ms2 = judge(fake_generation(["x", text2], [[(0, 1)], spans]), scene3(), b=1, omissions=False)
    assert [(m.subject, m.span, m.token_indices) for m in ms2] == [("triangle", (2, 10), [1, 2])]
    assert tokens_for_span((2, 10), spans) == [1, 2]
    assert tokens_for_span((0, 1), spans) == [0]
    assert tokens_for_span(None, spans) == [] and tokens_for_span((0, 3), None) == []
    # a generation without token spans still gives character spans
    assert judge(SimpleNamespace(text=[text2], token_spans=[]), scene3(), omissions=False)[0].token_indices == []


def test_frames_and_batch() -> None:
    text = "a yellow square and a triangle ."
    df = judge_frame(text, scene3(), omissions=True)
    assert df.columns.tolist() == FRAME_COLUMNS
    assert df.kind.tolist() == ["attribute", "object", "object", "object"]
    assert df.polarity.tolist() == ["hallucinated", "hallucinated", "omitted", "omitted"]
    assert df.start.tolist()[:2] == [2, 22] and df.start.isna().tolist() == [False, False, True, True]
    assert str(df.start.dtype) == "Int64"
    assert misalignments_frame([]).columns.tolist() == FRAME_COLUMNS

    world = SceneWorld(WorldConfig(), seed=0)
    items = world.items(2, task="caption", seed=5)
    assert items[1].scene.names == ["cross", "hourglass", "triangle", "square", "diamond"]  # seeded
    texts = [items[0].answer, "a small ring and a cross ."]
    out = judge_batch(fake_generation(texts), items=items)
    assert FRAME_COLUMNS[0] == "item_id" and "item" not in FRAME_COLUMNS
    assert out.columns.tolist() == ["item_id", "b", *FRAME_COLUMNS[1:]]
    assert set(out.b) == {1} and out.item_id.tolist() == [items[1].id] * 5
    assert out[["kind", "polarity", "subject", "text"]].values.tolist() == [
        ["object", "hallucinated", "ring", "ring"], ["object", "omitted", "hourglass", None],
        ["object", "omitted", "triangle", None], ["object", "omitted", "square", None], ["object", "omitted", "diamond", None]]
    assert out.token_indices.tolist() == [[2], [], [], [], []]
    assert out.first_token.tolist()[:1] == [2] and out.first_token.isna().tolist() == [False, True, True, True, True]
    # plain texts with scenes; item_id is then the batch index as a string
    out2 = judge_batch(["", "a triangle"], scenes=[scene3(), scene3()], omissions=False)
    assert out2[["item_id", "b", "subject"]].values.tolist() == [["1", 1, "triangle"]]
    assert judge_batch(["", ""], scenes=[scene3(), scene3()], omissions=False).columns.tolist()[:2] == ["item_id", "b"]


# ----------------------------------------------------------------------------------------------- QA
def qa(task: str, prompt: str, meta: dict, answer: str = "yes") -> Item:
    return Item("q1", None, prompt, scene=scene3(), answer=answer, task=task, meta=meta)


def test_qa_exists() -> None:
    absent = qa("exists", "is there a triangle ?", {"target": "triangle"})
    present = qa("exists", "is there a ring ?", {"target": "ring"})
    (m,) = judge("Yes, there is.", item=absent)
    assert (m.kind, m.polarity, m.subject, m.claimed, m.truth, m.span, m.text, m.item_id, m.source) == (
        "object", "hallucinated", "triangle", "triangle", None, (0, 3), "Yes", "q1", "qa")
    assert judge_frame("Yes, there is.", item=absent).item_id.tolist() == ["q1"]
    (m,) = judge(fake_generation(["no ."]), item=present)
    assert (m.kind, m.polarity, m.negated, m.token_indices, m.truth) == ("object", "omitted", True, [0], "ring")
    assert judge("no", item=absent) == [] and judge("yes", item=present) == []
    (m,) = judge("There isn't one.", item=present)  # a negation word counts as "no"
    assert (m.polarity, m.text) == ("omitted", "isn't")
    assert judge("maybe", item=present) == []
    # no meta: the target is read from the prompt
    assert [m.subject for m in judge("yes", item=qa("exists", "is there a triangle ?", {}))] == ["triangle"]


def test_qa_attribute_and_relation() -> None:
    item = qa("attribute", "what color is the square ?", {"target": "square", "attribute": "color"})
    assert judge("blue", item=item) == [] and judge("It is blue.", item=item) == []
    text = "The square is large and red."
    (m,) = judge(text, item=item)  # "large" is a size, not the colour asked about
    assert (m.kind, m.polarity, m.attribute, m.claimed, m.truth, text[m.span[0]:m.span[1]]) == (
        "attribute", "hallucinated", "color", "red", "blue", "red")
    size = qa("attribute", "what size is the circle ?", {})  # read from the prompt
    assert [(m.attribute, m.claimed, m.truth) for m in judge("small", item=size)] == [("size", "small", "large")]
    assert judge("square", item=size) == []

    rel = {"subject": "circle", "predicate": "right of", "object": "square"}
    (m,) = judge("yes", item=qa("relation", "is the circle right of the square ?", rel))
    assert (m.kind, m.polarity, m.subject, m.object, m.claimed, m.truth) == (
        "relation", "hallucinated", "circle", "square", "right of", "left of")
    assert judge("no", item=qa("relation", "is the circle right of the square ?", rel)) == []
    (m,) = judge("No.", item=qa("relation", "is the circle above the ring ?", {}))
    assert (m.kind, m.polarity, m.claimed, m.truth, m.negated, m.span) == (
        "relation", "omitted", "above", "above", True, (0, 2))


def test_qa_world_items_right_and_flipped() -> None:
    world = SceneWorld(WorldConfig(), seed=0)
    for task in ("exists", "attribute", "relation"):
        for item in world.items(6, task=task, seed=11):
            assert judge(item.answer, item=item) == [], (item.prompt, item.answer)
            if task == "attribute":
                wrong = next(v for v in ("red", "blue", "small", "large") if v != item.answer and
                             (v in ("small", "large")) == (item.meta["attribute"] == "size"))
            else:
                wrong = "no" if item.answer == "yes" else "yes"
            (m,) = judge(wrong, item=item)
            kind = {"exists": "object", "attribute": "attribute", "relation": "relation"}[task]
            polarity = "omitted" if wrong == "no" else "hallucinated"
            assert (m.kind, m.polarity, m.span, m.item_id) == (kind, polarity, (0, len(wrong)), item.id)


# ----------------------------------------------------------------------------------------------- COCO
def test_coco_vocabulary_inline_synonyms() -> None:
    v = Vocabulary.coco({"person": "person", "man": "person", "people": "person", "dog": "dog", "puppy": "dog",
                         "couch": "couch", "sofa": "couch", "orange": "orange", "cat": "cat", "dining table": "dining table",
                         "table": "dining table", "knife": "knife"})
    text = "Two dogs and a man sitting on a sofa, three puppies, an orange cat next to an orange on the dining table, knives."
    got = [(c.kind, c.subject, c.value, c.text) for c in extract_claims(text, v)]
    assert got == [("object", "dog", "dog", "dogs"), ("object", "person", "person", "man"),
                   ("relation", "person", "on", "on"), ("object", "couch", "couch", "sofa"),
                   ("object", "dog", "dog", "puppies"), ("attribute", "cat", "orange", "orange"),
                   ("object", "cat", "cat", "cat"), ("relation", "cat", "next to", "next to"),
                   ("object", "orange", "orange", "orange"), ("relation", "orange", "on", "on"),
                   ("object", "dining table", "dining table", "dining table"), ("object", "knife", "knife", "knives")]
    # scene names are canonicalised through the vocabulary ("men" in the scene is a person)
    sc = SceneGraph([SceneObject("men"), SceneObject("couch"), SceneObject("dog", {"color": "black"})],
                    relations=[Relation(0, "on", 1)])
    text2 = "A man on a couch, a white dog and a cat."
    assert rows(judge(text2, sc, vocabulary=v), text2) == [
        ("attribute", "hallucinated", "dog", "white", "black", "white"), ("object", "hallucinated", "cat", "cat", None, "cat")]
    assert rows(judge("a dog on a couch", sc, vocabulary=v), "a dog on a couch") == [
        ("relation", "hallucinated", "dog", "on", None, "on"), ("object", "omitted", "person", None, "person", None)]


def test_coco_vocabulary_from_chair_synonyms() -> None:
    if not SYNONYMS.is_file():
        pytest.skip("shared CHAIR synonyms not present")
    from lvlm_probe.benchmarks.chair import load_synonyms

    v = Vocabulary.coco(SYNONYMS)
    assert Vocabulary.coco(load_synonyms(SYNONYMS)).objects == v.objects
    assert len(v.classes) == 80
    text = "Two dogs and a man ride a motor bike past a fire hydrant; people, a baby cat, a Bow Tie and an iPhone."
    got = [(c.subject, c.text) for c in extract_claims(text, v) if c.kind == "object"]
    assert got == [("dog", "dogs"), ("person", "man"), ("motorcycle", "motor bike"), ("fire hydrant", "fire hydrant"),
                   ("person", "people"), ("cat", "baby cat"), ("tie", "Bow Tie"), ("cell phone", "iPhone")]
    sc = SceneGraph([SceneObject("person"), SceneObject("dog")])
    ms = judge("A woman walks two puppies past a fire hydrant.", sc, vocabulary=v)
    # two puppies for the scene's one dog: an extra instance (a count error), then the absent hydrant
    assert rows(ms, "A woman walks two puppies past a fire hydrant.") == [
        ("object", "hallucinated", "dog", "dog", "1 in the scene", "puppies"),
        ("object", "hallucinated", "fire hydrant", "fire hydrant", None, "fire hydrant")]


def test_vocabulary_helpers() -> None:
    assert [plural(w) for w in ("circle", "cross", "hourglass", "man", "person", "knife", "sheep", "teddy bear", "bus",
                                "toy", "pony")] == ["circles", "crosses", "hourglasses", "men", "people", "knives", "sheep",
                                                    "teddy bears", "buses", "toys", "ponies"]
    v = Vocabulary.synthetic()
    assert v.objects["hourglasses"] == "hourglass" and v.attributes["red"] == ("color", "red")
    assert v.relations["to the left of"] == "left of" and v.relations["on top of"] == "above"
    assert v.classes == sorted(["circle", "square", "triangle", "diamond", "cross", "ring", "bar", "hourglass"])
    small = Vocabulary.synthetic(classes=["circle"], colors=["red"], sizes=[])
    assert extract_claims("a red circle and a blue square", small)[0].value == "red"
    assert [c.value for c in extract_claims("a red circle and a blue square", small)] == ["red", "circle"]
    # the cached phrase table follows additions; extend() leaves the original alone
    small.objects["square"] = "square"
    assert [c.value for c in extract_claims("a blue square", small)] == ["square"]
    bigger = small.extend(attributes={"blue": ("color", "blue")})
    assert [c.value for c in extract_claims("a blue square", bigger)] == ["blue", "square"]
    assert "blue" not in small.attributes and "8 classes" in repr(v)


# ----------------------------------------------------------------------------------------------- errors
def test_input_errors() -> None:
    with pytest.raises(InputError, match="scene must be a SceneGraph"):
        judge("a circle", ["circle"])
    with pytest.raises(InputError, match="scene must be a SceneGraph"):
        judge("a circle")
    with pytest.raises(InputError, match="cannot judge task 'pope'"):
        judge("yes", item=qa("pope", "is there a ring ?", {}))
    with pytest.raises(InputError, match=r"meta lacks \['target'\]"):
        judge("yes", item=qa("exists", "is there anything ?", {}))
    with pytest.raises(InputError, match="Generation-like"):
        judge(42, scene3())
    with pytest.raises(InputError, match="outside the generation's 1 item"):
        judge(fake_generation(["a circle"]), scene3(), b=1)
    with pytest.raises(InputError, match="vocabulary must be a Vocabulary"):
        judge("a circle", scene3(), vocabulary={"circle": "circle"})
    with pytest.raises(InputError, match="needs a str"):
        extract_claims(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="CHAIR synonym list"):
        Vocabulary.coco(None)
    with pytest.raises(InputError, match=r"\(attribute type, value\)"):
        Vocabulary(attributes={"red": "red"})  # type: ignore[dict-item]
    with pytest.raises(InputError, match="2 scenes for 1 generated texts"):
        judge_batch(["a"], scenes=[scene3(), scene3()])
    with pytest.raises(InputError, match="needs scenes"):
        judge_batch(["a"])
    with pytest.raises(InputError, match="has no scene"):
        judge("a", item=Item("x", None, "describe the image .", task="caption"))
    # a scene as a dict is accepted (the Item / JSON form)
    assert judge("a triangle", scene3().to_dict(), omissions=False)[0].subject == "triangle"


def test_misalignment_imports_no_model_code() -> None:
    pkg = Path(__file__).resolve().parents[1] / "lvlm_probe" / "misalignment"
    for f in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert not n.startswith(("lvlm_probe.models", "torch", "transformers", "lvlm_probe.capture")), (f, n)
    assert isinstance(pd.DataFrame(), pd.DataFrame)


def test_one_reader_per_answer_form():
    """yes/no, attribute values and caption objects are read one way by the judge, the organisms' checks and
    the cards (lvlm_probe.misalignment.readers)."""
    from lvlm_probe.data import SceneWorld
    from lvlm_probe.misalignment import caption_objects, read_attribute_value, read_yes_no, yes_no_span

    assert read_yes_no("Yes, there is.") == "yes" and read_yes_no("no .") == "no"
    assert read_yes_no("There isn't one.") == "no" and yes_no_span("it is not")[1] == (6, 9)
    assert read_yes_no("a circle") is None
    assert read_attribute_value("it is red .", "color") == "red" and read_attribute_value("large", "color") is None
    assert read_attribute_value("the large one", "size") == "large"
    world = SceneWorld()
    text = "a small red circle , a large blue square and a green ring ."
    objs = caption_objects(text, world.vocabulary())
    assert objs == [{"name": "circle", "size": "small", "color": "red"},
                    {"name": "square", "size": "large", "color": "blue"}, {"name": "ring", "color": "green"}]
    assert world.parse_caption(text) == objs  # the cards' reader is the judge's
    assert world.parse_caption("there is no circle , only a red square .") == [{"name": "square", "color": "red"}]


def test_instances_beyond_the_scene_count_are_object_errors() -> None:
    """Counting: a repeated new mention beyond the scene's count is an extra (hallucinated) instance; an explicit
    count word is judged against the scene; references back ("the triangle") introduce nothing."""
    sc = SceneGraph([SceneObject("triangle", {"color": "green", "size": "large"}),
                     SceneObject("circle", {"color": "red"}), SceneObject("circle", {"color": "blue"})])

    def counts(text):
        return [(m.polarity, m.subject, m.truth) for m in judge(text, sc) if m.source == "count"]

    assert counts("a large green triangle and a large green triangle .") == [("hallucinated", "triangle",
                                                                              "1 in the scene")]
    assert counts("a red circle , a blue circle and a green triangle . the triangle is large .") == []
    assert counts("three circles and a triangle .") == [("hallucinated", "circle", "2 in the scene")]
    assert counts("two circles and a triangle .") == []
    assert counts("one circle and a triangle .") == [("omitted", "circle", "2 in the scene")]
    assert counts("a circle and a triangle .") == []  # an indefinite mention is no count
    assert counts("a square .") == []  # an absent class is already an object hallucination, not counted again
    ms = judge("a large green triangle and a large green triangle .", sc)
    extra = [m for m in ms if m.source == "count"][0]
    assert extra.span == (41, 49) and extra.kind == "object"  # the second "triangle"
