"""Scene graphs and the synthetic world: determinism, ground truth, bias knobs, statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvlm_probe.data.items import Item, read_items
from lvlm_probe.data.scene import SceneGraph, SceneObject
from lvlm_probe.data.world import COLORS, BACKGROUND, SceneWorld, WorldConfig, WorldStats, world_vocabulary
from lvlm_probe.errors import InputError


def test_relations_from_boxes():
    g = SceneGraph([SceneObject("circle", box=(0, 0, 10, 10)), SceneObject("square", box=(20, 30, 30, 40)),
                    SceneObject("ring", box=(5, 35, 12, 45))]).derive_relations()
    assert g.holds("circle", "left of", "square") and g.holds("circle", "above", "square")
    assert g.holds("square", "right of", "circle") and g.holds("square", "below", "circle")
    # circle and ring overlap horizontally: no left/right between them, only above/below
    assert not g.holds("circle", "left of", "ring") and not g.holds("ring", "right of", "circle")
    assert g.holds("ring", "below", "circle")
    assert g.holds("circle", "left of", "hourglass") is None
    assert set(g.relations_frame().columns) >= {"subject_name", "predicate", "object_name"}


def test_scene_roundtrip_and_item_scene(tmp_path):
    w = SceneWorld(seed=0)
    scene = w.sample_scene(np.random.default_rng(0), n_objects=4)
    back = SceneGraph.from_json(scene.to_json())
    assert back.to_dict() == scene.to_dict()
    it = Item("x", w.render(scene), "describe the image .", scene=scene.to_dict())
    assert isinstance(it.scene, SceneGraph) and it.scene.names == scene.names
    w.render(scene).save(tmp_path / "a.png")
    (tmp_path / "items.jsonl").write_text(json.dumps({"id": "a", "image": "a.png", "prompt": "p", "task": "caption",
                                                       "scene": scene.to_dict()}) + "\n")
    got = read_items(tmp_path / "items.jsonl")[0]
    assert got.task == "caption" and got.scene.names == scene.names
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "b", "image": "a.png", "prompt": "p",
                                                     "scene": {"objects": [{"attributes": {}}]}}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:1: bad 'scene'.*name"):
        read_items(tmp_path / "bad.jsonl")


def test_world_is_deterministic_and_renders_exact_colours():
    a = SceneWorld(seed=0).items(20, seed=5)
    b = SceneWorld(seed=0).items(20, seed=5)
    assert [i.prompt for i in a] == [i.prompt for i in b] and [i.answer for i in a] == [i.answer for i in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    c = SceneWorld(seed=0).items(20, seed=6)
    assert [i.answer for i in a] != [i.answer for i in c]
    w = SceneWorld(seed=0)
    for it in a:
        px = np.asarray(it.image).reshape(-1, 3)
        palette = {tuple(v) for v in COLORS.values()} | {BACKGROUND}
        assert {tuple(p) for p in px} <= palette, "no anti-aliasing: every pixel is a palette colour"
        for o in it.scene.objects:  # each object's colour is drawn inside its box
            x0, y0, x1, y1 = (int(v) for v in o.box)
            crop = np.asarray(it.image)[y0:y1, x0:x1].reshape(-1, 3)
            assert (crop == COLORS[o.attributes["color"]]).all(1).sum() >= 6
    assert len(w.config.classes) >= 8 and len(w.config.colors) >= 6 and len(w.config.sizes) >= 2


def test_answers_match_scene():
    w = SceneWorld(seed=0)
    for it in w.items(300, seed=1):
        s = it.scene
        assert 1 <= len(s.objects) <= 5 and len(set(s.names)) == len(s.names)
        if it.task == "caption":
            parsed = w.parse_caption(it.answer)
            assert [p["name"] for p in parsed] == s.names  # reading order
            for p in parsed:
                o = s.objects[s.find(p["name"])[0]]
                assert (p["color"], p["size"]) == (o.attributes["color"], o.attributes["size"])
        elif it.task == "exists":
            assert it.answer == ("yes" if s.has(it.meta["target"]) else "no")
        elif it.task == "attribute":
            assert it.answer in s.attribute_values(it.meta["target"], it.meta["attribute"])
        elif it.task == "relation":
            truth = s.holds(it.meta["subject"], it.meta["predicate"], it.meta["object"])
            assert it.answer == ("yes" if truth else "no")
    tasks = {it.task for it in w.items(200, seed=2)}
    assert tasks == {"caption", "exists", "attribute", "relation"}


def test_bias_knobs_show_in_statistics(tmp_path):
    cfg = WorldConfig(cooccurrence=(("circle", "square", 0.95),), attribute_prior=(("diamond", "yellow", 0.9),),
                      relation_prior=(("ring", "bar", "above", 0.9),), n_objects_probs=(0.5, 0.5))
    st = SceneWorld(cfg).statistics()
    assert st.p_b_given_a("circle", "square") == pytest.approx(0.95, abs=0.03)
    assert st.p_b_given_a("triangle", "square") < 0.6
    assert st.p_color("diamond", "yellow") == pytest.approx(0.9, abs=0.04)
    assert st.p_color("circle", "yellow") == pytest.approx(1 / 6, abs=0.06)
    rp = st.relation_prior
    above = rp[(rp.subject == "ring") & (rp.object == "bar") & (rp.predicate == "above")].p.iloc[0]
    below = rp[(rp.subject == "ring") & (rp.object == "bar") & (rp.predicate == "below")].p.iloc[0]
    assert above >= 0.9 and below <= 0.1
    assert set(st.n_objects.n) <= {1, 2, 3}
    clean = SceneWorld().statistics()
    assert clean.p_b_given_a("circle", "square") == pytest.approx(clean.class_freq.set_index("class").p_present["square"],
                                                                  abs=0.08)
    st.to_json(tmp_path / "s.json")
    back = WorldStats.from_json(tmp_path / "s.json")
    assert back.p_b_given_a("circle", "square") == pytest.approx(st.p_b_given_a("circle", "square"))
    # captions mention B right after A
    w = SceneWorld(cfg)
    for it in w.items(200, "caption", seed=3):
        names = [p["name"] for p in w.parse_caption(it.answer)]
        if "circle" in names and "square" in names:
            assert names.index("square") == names.index("circle") + 1


def test_relation_prior_captions_join_the_pair_with_its_true_relation():
    """A relation-prior world's caption names B right after A, joined by the predicate A really stands in to B
    (the rule's predicate, its converse, or the other axis's); the judge's claim reader reads it back."""
    from lvlm_probe.data.scene import GEOMETRIC_RELATIONS
    from lvlm_probe.misalignment.claims import extract_claims

    w = SceneWorld(WorldConfig(relation_prior=(("triangle", "cross", "above", 0.5),)), seed=0)
    plain = SceneWorld(WorldConfig(), seed=0)
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(60):
        s = w.sample_scene(rng, require=["triangle", "cross"])
        ia, ib = s.find("triangle")[0], s.find("cross")[0]
        held = {r.predicate for r in s.relations if r.subject == ia and r.object == ib}
        rel = w.pair_relation(s, "triangle", "cross", "above")
        assert rel in held and (rel in ("above", "below") or not held & {"above", "below"}), (rel, held)
        seen.add(rel)
        claims = [c for c in extract_claims(w.caption(s), w.vocabulary()) if c.kind == "relation"]
        assert [(c.subject, c.value, c.object) for c in claims] == [("triangle", rel, "cross")], w.caption(s)
        assert sorted(w.parse_caption(w.caption(s)), key=str) == sorted(plain.parse_caption(plain.caption(s)), key=str)
        assert " above " not in plain.caption(s) and " below " not in plain.caption(s)
    assert {"above", GEOMETRIC_RELATIONS["above"]} <= seen


def test_pope_negative_strategies():
    w = SceneWorld(WorldConfig(cooccurrence=(("circle", "square", 0.95),)), seed=0)
    items = w.pope_items(40, "adversarial", seed=1)
    assert sum(i.answer == "yes" for i in items) == sum(i.answer == "no" for i in items)
    by_scene: dict = {}
    for i in items:
        by_scene.setdefault(i.id.rsplit("-", 1)[0], []).append(i)
    triggered = [qs for qs in by_scene.values() if qs[0].scene.has("circle") and not qs[0].scene.has("square")]
    assert triggered, "some scenes must contain the circle without the square"
    for qs in triggered:  # adversarial negatives pick the co-occurring absent class first
        negs = [q.meta["target"] for q in qs if q.answer == "no"]
        assert negs[0] == "square", negs
    for strat in ("random", "popular"):
        its = w.pope_items(10, strat, seed=2)
        assert all((i.answer == "yes") == i.scene.has(i.meta["target"]) for i in its)


def test_forced_scenes_and_bad_config():
    w = SceneWorld(WorldConfig(cooccurrence=(("circle", "square", 1.0),)))
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = w.sample_scene(rng, require=["circle"], forbid=["square"])
        assert s.has("circle") and not s.has("square")
    with pytest.raises(InputError, match="unknown class"):
        WorldConfig(classes=("circle", "unicorn"))
    with pytest.raises(InputError, match="predicate"):
        WorldConfig(relation_prior=(("circle", "square", "inside", 0.9),))
    with pytest.raises(InputError, match="unknown task"):
        w.make_item(s, "count", rng, item_id="x")
    assert set(world_vocabulary()) >= set(COLORS) | {"left", "above", "yes", "no"}
    cfg = WorldConfig(cooccurrence=(("circle", "square", 0.9),))
    assert WorldConfig.from_dict(cfg.to_dict()) == cfg
