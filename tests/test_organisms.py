"""The organism zoo: shipped checkpoints load like hub models and show their planted behaviour on fresh scenes."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

import lvlm_probe as lp
from lvlm_probe.data.world import COLORS, SIZES, SceneWorld, WorldConfig
from lvlm_probe.data.scene import SceneGraph, SceneObject
from lvlm_probe.organisms import CHECKPOINTS, ZOO, organism_path
from lvlm_probe.organisms import zoo as Z
from lvlm_probe.organisms.cards import render_card
from lvlm_probe.organisms.check import check_organism, planted_rate, trigger_set
from lvlm_probe.organisms.train import blind_direction, pixel_tensor, train_organism
from lvlm_probe.organisms.zoo import TrainConfig

SHIPPED = sorted({s.checkpoint for s in ZOO.values() if (CHECKPOINTS / str(s.checkpoint) / "config.json").is_file()})
#: Held-out seed for the behaviour tests (the model cards report seed 1; training used other streams).
SEED, N = 7, 100


def shipped(name: str) -> bool:
    return (CHECKPOINTS / str(ZOO[name].checkpoint) / "config.json").is_file()


def need(*names: str) -> None:
    """Skip (loudly) when a checkpoint is not in this tree; test_zoo_is_complete fails for it instead."""
    missing = [n for n in names if not shipped(n)]
    if missing:
        pytest.skip(f"checkpoint(s) not shipped: {missing}")


@pytest.fixture(scope="module")
def models():
    cache: dict = {}

    def get(name: str):
        need(name)
        ck = ZOO[name].checkpoint
        if ck not in cache:
            cache[ck] = lp.load(f"organism:{ck}", device="cpu")
        return cache[ck]
    return get


@pytest.fixture(scope="module")
def checked(models):
    cache: dict = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = check_organism(name, seed=SEED, n=N, loader=models)
        return cache[name]
    return get


def test_zoo_lists_the_required_organisms():
    need = {"clean", "cooccurrence", "attribute_prior", "encoder_blind", "projector_bottleneck", "visual_neglect",
            "drift", "sampling"}
    assert need <= set(ZOO)
    assert {ZOO[n].level for n in need} == {"none", "data", "model", "inference"}
    assert ZOO["sampling"].checkpoint == "clean" and ZOO["sampling"].run_settings["do_sample"]


@pytest.mark.xfail(not all(shipped(n) for n in ZOO), strict=True,
                   reason="not every zoo checkpoint is shipped yet (see issue 3's note)")
def test_zoo_is_complete():
    df = lp.organisms.list_organisms()
    assert df.shipped.all(), df[~df.shipped]


#: Doses and hold-out variants ship beside the zoo (trained one thread each, several at once, so their recorded
#: wall time is not the recipe's; the zoo's own checkpoints carry the time budget).
EXTRA = sorted([*Z.DOSE_SPECS, *Z.HOLDOUTS])


@pytest.mark.parametrize("ckpt", SHIPPED + EXTRA)
def test_checkpoint_is_a_small_real_llava_with_a_card(ckpt):
    path = organism_path(ckpt)
    assert path == CHECKPOINTS / ckpt
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert cfg["vision_config"]["model_type"] == "clip_vision_model" and cfg["text_config"]["model_type"] == "llama"
    assert (path / "model.safetensors").stat().st_size <= 4 * 1024 * 1024
    card = (path / "MODEL_CARD.md").read_text()
    assert card == render_card(ckpt, path), "stale card: rewrite it with lvlm_probe.organisms.cards.write_card"
    assert "Measured behaviour" in card and "Planted cause" in card and "How planted" in card
    beh = json.loads((path / "behaviour.json").read_text())[ckpt]
    assert f"| {beh['task_accuracy']:.3f} |" in card.replace("task accuracy (mean) ", "")
    meta = json.loads((path / "organism.json").read_text())
    assert meta["name"] == ckpt
    # trained with the shipped recipe and its own spec (training time is measured in docs/organisms.md, not here)
    spec = Z.get_spec(ckpt)
    assert meta["recipe"] == {"version": 2, **Z.FIXED}, f"{ckpt} was trained with another recipe: retrain it"
    assert TrainConfig.from_dict(meta["train"]) == spec.train and WorldConfig.from_dict(meta["world"]) == spec.world


def test_load_by_name_equals_load_by_path(models):
    a = models("clean")
    b = lp.load(str(organism_path("clean")), device="cpu")
    assert a.family == b.family == "llava"
    img = SceneWorld().items(1, "caption", seed=0)[0]
    ba, bb = a.prepare([img.image], [img.prompt]), b.prepare([img.image], [img.prompt])
    assert torch.equal(ba.input_ids, bb.input_ids)
    assert torch.allclose(a.forward(ba), b.forward(bb))


def test_training_pixels_match_the_saved_image_processor(models):
    m = models("clean")
    items = SceneWorld().items(4, "caption", seed=3)
    ours = pixel_tensor([np.asarray(it.image) for it in items], m.image_processor)
    theirs = m.prepare([it.image for it in items], [it.prompt for it in items]).pixel_values
    assert torch.allclose(ours, theirs.float(), atol=1e-5)


def _red_orange_pair(world: SceneWorld):
    objs = lambda col: SceneGraph([SceneObject("circle", {"color": col, "size": "large"}, (1, 1, 15, 15))])  # noqa: E731
    return world.render(objs(Z.BLIND_PAIR[0])), world.render(objs(Z.BLIND_PAIR[1])), world.render(objs("blue"))


@torch.no_grad()
def test_encoder_blind_front_end_cannot_separate_the_pair(models):
    need("encoder_blind", "clean")
    world = SceneWorld()
    red, orange, blue = _red_orange_pair(world)
    for name, blind in (("encoder_blind", True), ("clean", False)):
        m = models(name)
        px = m.prepare([red, orange, blue], ["describe the image ."] * 3).pixel_values.float()
        vt = m.hf_model.model.vision_tower.float()
        emb = vt.vision_model.embeddings.patch_embedding(px) if hasattr(vt, "vision_model") else \
            vt.embeddings.patch_embedding(px)
        d_pair = (emb[0] - emb[1]).abs().max().item()
        d_other = (emb[0] - emb[2]).abs().max().item()
        if blind:
            assert d_pair < 0.02 * d_other, (d_pair, d_other)
        else:
            assert d_pair > 0.2 * d_other


def test_projector_bottleneck_is_low_rank(models):
    need("projector_bottleneck", "clean")
    def rank(name: str) -> int:
        w = models(name).hf_model.model.multi_modal_projector.linear_1.weight.detach().float()
        s = torch.linalg.svdvals(w)
        return int((s > 1e-2 * s[0]).sum())
    log = json.loads((organism_path("projector_bottleneck") / "organism.json").read_text())["log"]
    inlp = [r for r in log if r.get("stage") == 1 and "iteration" in r]
    # the first projector layer only sees the subspace INLP kept: the dropped attribute is no longer linearly
    # decodable there (chance + 0.03 is INLP's target), the encoder decoded it and the other attributes before the
    # projection (the guards), and the layer's rank is at most that subspace's
    drop = Z.BOTTLENECK_ATTRIBUTE
    chance = 1 / len(COLORS if drop == "color" else SIZES)
    others = [a for a in ("class", "color", "size") if a != drop]
    # on clean's tower the class guard stops INLP at colour 0.231 (the next step took class to 0.90); what is left
    # reaches the image tokens only faintly (below; measured 0.26 against clean's 1.0, chance 0.17)
    assert inlp[-1][f"{drop}_probe_acc"] <= chance + 0.07 and inlp[0][f"{drop}_probe_acc"] >= 0.97, inlp[-1]
    assert all(inlp[0][f"{a}_probe_acc"] >= 0.95 for a in others), inlp[0]
    assert all(inlp[-1][f"{a}_probe_acc"] >= 0.95 * inlp[0][f"{a}_probe_acc"] for a in others), inlp[-1]  # kept
    assert rank("projector_bottleneck") <= inlp[-1]["rank"] < rank("clean")
    if drop == "color":
        tokens = {n: _object_token_colour_probe(models(n)) for n in ("projector_bottleneck", "clean")}
        assert tokens["projector_bottleneck"] <= chance + 0.15 and tokens["clean"] >= 0.9, tokens


@torch.no_grad()
def _object_token_colour_probe(m) -> float:
    """Held-out accuracy of a logistic-regression colour probe on the (standardised) image tokens of 1-object
    scenes' object patches (300 scenes, train 200, test 100)."""
    from sklearn.linear_model import LogisticRegression

    world = SceneWorld()
    scenes = [world.sample_scene(np.random.default_rng(k), n_objects=1) for k in range(300)]
    px = m.prepare([world.render(s) for s in scenes], ["describe the image ."] * len(scenes)).pixel_values
    hf = m.hf_model.model
    feats = hf.vision_tower(pixel_values=px.to(hf.vision_tower.dtype), output_hidden_states=True).hidden_states[-1]
    tokens = hf.multi_modal_projector(feats[:, 1:]).float()  # [300, 16, d]
    cell = world.cell
    idx = [int(s.objects[0].center[1] // cell) * world.config.grid + int(s.objects[0].center[0] // cell)
           for s in scenes]
    x = tokens[torch.arange(len(scenes)), torch.tensor(idx)].numpy()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = [s.objects[0].attributes["color"] for s in scenes]
    return float(LogisticRegression(max_iter=1000).fit(x[:200], y[:200]).score(x[200:], y[200:]))


# ---- planted behaviour, measured on fresh scenes ------------------------------------------------------
def test_clean_is_accurate(checked):
    r = checked("clean")
    assert r["tasks"]["caption_objects"] >= 0.90, r["tasks"]
    assert r["tasks"]["attribute_size"] >= 0.75, r["tasks"]


def test_clean_answers_pope_style_questions(checked):
    """POPE random split: balanced yes/no, so 0.90 needs the image."""
    assert checked("clean")["tasks"]["exists"] >= 0.90


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_clean_answers_every_pope_split(split, models):
    """All three POPE negative samplings on fresh scenes: accuracy >= 0.90 and a yes-ratio near the balanced 0.5
    (a model that says "yes" to everything would score 0.5 here, one that says "no" to everything too)."""
    from lvlm_probe.misalignment import read_yes_no
    from lvlm_probe.organisms.check import answer

    items = SceneWorld(ZOO["clean"].world).pope_items(40, split, seed=SEED)
    words = [read_yes_no(t) for t in answer(models("clean"), items)]
    acc = float(np.mean([w == it.answer for w, it in zip(words, items)]))
    yes = float(np.mean([w == "yes" for w in words]))
    assert {it.answer for it in items} == {"yes", "no"} and len(items) == 240
    assert acc >= 0.90 and 0.4 <= yes <= 0.6, (split, acc, yes)


PLANTED = {
    # name: (organism's planted error rate at least, clean's rate at most); measured values on seed 1 (n = 200) are
    # in the cards, the tests re-measure on seed 7 (n = 100)
    "cooccurrence": (0.5, 0.1),       # measured 0.945 vs 0.0 (caption names a square)
    "relation_prior": (0.5, 0.1),     # measured 0.975 vs 0.0 (caption states the prior relation where it is false)
    "attribute_prior": (0.6, 0.1),    # measured 1.0 vs 0.0 (colour question answered with the prior colour)
    "encoder_blind": (0.3, 0.1),      # measured 0.50 vs 0.0 (caption gives the other hue)
    "projector_bottleneck": (0.35, 0.1),  # measured 0.802 vs 0.002 (colour word wrong)
    "small_object": (0.5, 0.15),      # measured 1.0 vs 0.0 (caption leaves the small object out)
    "visual_neglect": (0.45, 0.3),    # measured 0.756 vs 0.194 (caption unchanged under a noise image)
    "drift": (0.5, 0.3),              # measured 0.968 vs 0.003 (error at object positions 4-5)
    "sampling": (0.3, 0.12),          # measured 0.44 vs 0.0 (temperature 2.5 vs greedy; recipe v2)
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_behaviour_separates_from_clean(name, checked):
    need(name, "clean")
    r = checked(name)
    lo, hi = PLANTED[name]
    assert r["planted_error_rate"] >= lo, r
    assert r["clean_planted_error_rate"] <= hi, r


#: Hold-out variants (the same causes on other classes, pairs and colours): planted rate at least / clean's at most.
#: Measured on seed 1 (n = 200) in their cards.
HOLDOUT_PLANTED = {
    "cooccurrence_triangle_cross": (0.2, 0.1),   # measured 0.52 vs 0.0 (caption names a cross)
    "cooccurrence_ring_bar": (0.2, 0.1),         # measured 1.0 vs 0.0 (caption names a bar)
    "attribute_prior_hourglass_green": (0.6, 0.1),  # measured 1.0 vs 0.0 (colour question answered green)
    "attribute_prior_bar_purple": (0.6, 0.1),    # measured 0.98 vs 0.0 (colour question answered purple)
    "relation_prior_ring_bar": (0.5, 0.1),       # measured 0.99 vs 0.0 (caption says the ring is left of the bar)
    "relation_prior_circle_hourglass": (0.5, 0.1),  # measured 1.0 vs 0.0 (caption says the circle is below it)
}


@pytest.mark.parametrize("name", sorted(HOLDOUT_PLANTED))
def test_holdout_variant_plants_its_cause_on_its_own_classes(name):
    from lvlm_probe.organisms.zoo import HOLDOUTS

    spec = HOLDOUTS[name]
    assert spec.pattern in ZOO and spec.component == ZOO[spec.pattern].component and spec.checkpoint == name
    ck = CHECKPOINTS / name
    if not (ck / "config.json").is_file():
        pytest.fail(f"hold-out checkpoint {name} is not shipped")
    r = check_organism(name, seed=SEED, n=N)
    lo, hi = HOLDOUT_PLANTED[name]
    factor = spec.world.cooccurrence or spec.world.attribute_prior or spec.world.relation_prior
    assert all(w in r["planted_metric"] for w in factor[0][1:2]), r["planted_metric"]  # its own class / colour
    assert r["planted_error_rate"] >= lo and r["clean_planted_error_rate"] <= hi, r


def test_projector_bottleneck_errs_on_the_dropped_attribute_only(checked):
    need("projector_bottleneck", "clean")
    r = checked("projector_bottleneck")
    other = "size" if Z.BOTTLENECK_ATTRIBUTE == "color" else "color"
    assert r["planted_details"][f"caption_{other}_error"] <= 0.1, r
    assert r["planted_error_rate"] >= r["planted_details"][f"caption_{other}_error"] + 0.2, r


def test_small_object_loses_small_objects_only(checked):
    """The tower drops objects below the patch size: the small one is left out of captions and denied when asked
    about, while the large objects of the same scenes are named as clean names them."""
    need("small_object", "clean")
    r = checked("small_object")
    d, c = r["planted_details"], r["clean_planted_details"]
    assert d["caption_large_left_out"] <= c["caption_large_left_out"] + 0.05, r
    assert d["qa_says_no"] >= 0.8 and c["qa_says_no"] <= 0.15, r
    trig, _ = trigger_set("small_object", SceneWorld(seed=SEED), 4, seed=3)
    small = [next(o for o in it.scene.objects if o.name == it.meta["target"]) for it in trig if it.task == "exists"]
    assert all(o.attributes["size"] == Z.VANISH_SIZE and o.box[2] - o.box[0] == SIZES[Z.VANISH_SIZE] for o in small)


def test_small_object_pattern_reads_the_object_size_from_the_items():
    import pandas as pd

    from lvlm_probe.organisms.validate import planted_pattern

    trig, _ = trigger_set("small_object", SceneWorld(seed=SEED), 2, seed=5)
    it = next(i for i in trig if i.task == "caption")
    small = next(o.name for o in it.scene.objects if o.attributes["size"] == Z.VANISH_SIZE)
    absent = next(c for c in Z.ZOO["clean"].world.classes if c not in it.scene.names)
    d = pd.DataFrame({"item_id": [it.id] * 3, "kind": ["object"] * 3,
                      "polarity": ["omitted", "hallucinated", "omitted"], "subject": [small, absent, absent],
                      "claimed": [None, absent, None], "attribute": [None] * 3, "truth": [small, None, None]})
    assert planted_pattern("small_object", d, trig).tolist() == [True, False, False]
    with pytest.raises(lp.InputError, match="needs the judged items"):
        planted_pattern("small_object", d)


def test_relation_prior_trigger_scenes_stay_on_the_grid_and_its_rate_reads_captions():
    """Trigger scenes put the pair against the prior with every object inside its own cell (a swap that moved
    centres pushed large objects across cell borders, and clean then denied true relations 12% of the time); the
    planted rate is the caption stating the prior's predicate, the question rates are details."""
    from lvlm_probe.data.scene import GEOMETRIC_RELATIONS

    spec = Z.get_spec("relation_prior")
    a, b, pred = Z.relation_factor(spec)
    world = SceneWorld(spec.world, seed=SEED)
    items, info = trigger_set("relation_prior", world, 40, seed=3)
    caps = [it for it in items if it.task == "caption"]
    assert len(caps) == 40 and pred in info["metric"]
    for it in caps:
        s = it.scene
        held = {r.predicate for r in s.relations if r.subject == s.find(a)[0] and r.object == s.find(b)[0]}
        assert GEOMETRIC_RELATIONS[pred] in held and pred not in held, held
        for o in s.objects:
            r, c = int(o.center[1] // world.cell), int(o.center[0] // world.cell)
            x0, y0, x1, y1 = o.box
            assert c * world.cell <= x0 and x1 <= (c + 1) * world.cell and r * world.cell <= y0 and \
                y1 <= (r + 1) * world.cell, (o.name, o.box)
        assert f"{a} {GEOMETRIC_RELATIONS[pred]} a " in it.answer or f"{a} {GEOMETRIC_RELATIONS[pred]} " in it.answer
    truth = [it.answer for it in items]
    lie = [it.answer.replace(f" {GEOMETRIC_RELATIONS[pred]} ", f" {pred} ") if it.task == "caption" else
           ("yes" if it.id.startswith("trig-qa-") else "no") for it in items]
    rate, det = planted_rate("relation_prior", world, items, truth)
    assert rate == 0.0 and det["caption_states_truth"] == 1.0 and det["qa_says_yes"] == 0.0
    rate, det = planted_rate("relation_prior", world, items, lie)
    assert rate == 1.0 and det["caption_states_truth"] == 0.0 and det["qa_says_yes"] == 1.0
    assert det["converse_says_no"] == 1.0


def test_drift_error_rises_with_position(checked):
    need("drift", "clean")
    r = checked("drift")
    by = r["planted_details"]["error_by_position"]
    assert by[4] > by[0] + 0.2 and np.mean(by[3:]) > np.mean(by[:3]), by


# ---- the recipe -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clean", "encoder_blind", "projector_bottleneck", "small_object", "visual_neglect"])
def test_miniature_training_runs_end_to_end(name, tmp_path):
    out = train_organism(name, tmp_path / name, seed=3, steps_scale=0.004, threads=1, progress=False)
    meta = json.loads((out / "organism.json").read_text())
    assert meta["train"]["stage2_steps"] == int(ZOO[name].train.stage2_steps * 0.004) and meta["seed"] == 3
    front_end = name in ("encoder_blind", "projector_bottleneck", "small_object")  # clean's, one part distilled
    assert ZOO[name].train.front_end == front_end
    assert [lg["stage"] for lg in meta["log"]][0] == (1 if name == "projector_bottleneck" else 0)
    assert meta["log"][-1]["stage"] == (1 if front_end else 2) and ("base" in meta) == front_end
    m = lp.load(str(out), device="cpu")
    it = SceneWorld().items(2, "exists", seed=0)
    g = m.generate(m.prepare([i.image for i in it], [i.prompt for i in it]), max_new_tokens=3)
    assert len(g.text) == 2
    st = json.loads((out / "training_stats.json").read_text())
    assert {"class_freq", "cooccurrence", "color_prior", "relation_prior", "n_objects"} <= set(st)
    hf = m.hf_model
    if name == "encoder_blind":  # the blind constraint holds on the saved weights
        w = hf.model.vision_tower.vision_model.embeddings.patch_embedding.weight.float()
        d = blind_direction(Z.BLIND_PAIR, m.image_processor)
        assert torch.einsum("ocij,c->oij", w, d).abs().max() < 1e-2 * w.abs().max()
    if front_end:  # the LLM is clean's, bit for bit, and the run defaults name clean as the swap reference
        from safetensors.torch import load_file

        ref, own = load_file(organism_path("clean") / "model.safetensors"), load_file(out / "model.safetensors")
        llm = [k for k in ref if "language_model" in k or "lm_head" in k]
        assert llm and all(torch.equal(ref[k], own[k]) for k in llm)
        assert json.loads((out / "run_defaults.json").read_text())["reference"] == "organism:clean"
    if name == "projector_bottleneck":
        s = torch.linalg.svdvals(hf.model.multi_modal_projector.linear_1.weight.float())
        inlp = [r for r in meta["log"] if r.get("stage") == 1 and "iteration" in r]
        assert inlp and int((s > 1e-2 * s[0]).sum()) <= inlp[-1]["rank"]


def test_bad_names_and_run_setting_organisms(tmp_path):
    with pytest.raises(lp.InputError, match="no organism named 'nope'.*clean"):
        lp.load("organism:nope")
    with pytest.raises(lp.InputError, match="run setting on 'clean'"):
        train_organism("sampling", tmp_path / "x", steps_scale=0.001)


def test_world_colors_cover_blind_pair():
    assert set(Z.BLIND_PAIR) <= set(COLORS)


def test_same_seed_retrains_bitwise(tmp_path):
    from safetensors.torch import load_file

    a = train_organism("clean", tmp_path / "a", seed=5, steps_scale=0.004, threads=1, progress=False)
    b = train_organism("clean", tmp_path / "b", seed=5, steps_scale=0.004, threads=1, progress=False)
    c = train_organism("clean", tmp_path / "c", seed=6, steps_scale=0.004, threads=1, progress=False)
    wa, wb, wc = (load_file(p / "model.safetensors") for p in (a, b, c))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


#: Every shipped checkpoint with a card (the zoo, the doses and the hold-outs); ``sampling`` is re-checked on the
#: retrained ``clean`` (it decodes ``clean``'s weights by sampling).
CARDS = sorted(p.name for p in CHECKPOINTS.iterdir() if (p / "behaviour.json").is_file())
#: Stated tolerances of a from-scratch retrain against its card (the card's own seed and n): the planted error rate
#: and the families every organism of the recipe learns (captions' objects, existence). With the recorded seed and
#: thread count the retrain is bitwise the shipped one on the CPU it was made with; on another CPU float rounding
#: differs from step 100 on and the run ends elsewhere: ``cooccurrence@0.95`` retrained on another machine kept
#: its planted rate (0.03 against the card's 0.055) but answered colour 0.925 (card 0.60) and size 0.95 (0.70).
#: The other families (colour, size, relation, exact captions) are therefore reported, not asserted, except for
#: ``clean``, the reference every planted rate and competence is read against, which keeps the first version's
#: bounds (mean task accuracy ±0.05, every family ±0.1; a 1-thread retrain here stayed within them, relation exactly
#: at the bound: 0.45 against 0.55). Bounds are inclusive up to float rounding (``EPS``).
RETRAIN_TOL = {"planted_error_rate": 0.1, "caption_objects": 0.1, "exists": 0.1}
CLEAN_TOL = {"task_accuracy": 0.05, "task": 0.1}
EPS = 1e-9


@pytest.mark.retrain
@pytest.mark.parametrize("ckpt", CARDS)
def test_full_retrain_reproduces_the_shipped_card(ckpt, tmp_path):
    """A from-scratch retrain (the recorded seed and threads; 7-15 min each) re-measured with ``organisms check``
    on the card's seed and n matches every organism of the card within :data:`RETRAIN_TOL`; how far the other task
    families moved is a warning."""
    rec = json.loads((organism_path(ckpt) / "organism.json").read_text())
    out = train_organism(ckpt, tmp_path / ckpt, seed=rec["seed"], threads=rec["threads"], progress=False)
    for name, card in json.loads((organism_path(ckpt) / "behaviour.json").read_text()).items():
        r = check_organism(name, seed=card["seed"], n=card["n"], compare_clean=False,
                           loader=lambda nm: lp.load(str(out), device="cpu"))
        for k in ("caption_objects", "exists"):
            assert abs(r["tasks"][k] - card["tasks"][k]) <= RETRAIN_TOL[k] + EPS, (name, k, r["tasks"][k], card["tasks"][k])
        if card.get("planted_error_rate") is not None:
            got = r["planted_error_rate"]
            assert abs(got - card["planted_error_rate"]) <= RETRAIN_TOL["planted_error_rate"] + EPS, (name, got, card)
        if name == "clean":
            assert abs(r["task_accuracy"] - card["task_accuracy"]) <= CLEAN_TOL["task_accuracy"] + EPS, r["tasks"]
            for k, v in card["tasks"].items():
                assert abs(r["tasks"][k] - v) <= CLEAN_TOL["task"] + EPS, (k, r["tasks"][k], v)
        moved = {k: round(r["tasks"][k] - v, 3) for k, v in card["tasks"].items()}
        if card.get("planted_error_rate") is not None:
            moved["planted_error_rate"] = round(r["planted_error_rate"] - card["planted_error_rate"], 3)
        warnings.warn(f"{name}: retrain minus card (asserted: {sorted(RETRAIN_TOL)}): {moved}", stacklevel=1)


def test_recipe_defaults_and_lm_init(tmp_path, monkeypatch):
    """The defaults are the shipped recipe; the LM is drawn from N(0, LM_INIT_STD); stage 2 draws captions and
    questions from STAGE2_MIX from its first step; bad knob values are refused."""
    from dataclasses import replace

    import lvlm_probe.organisms.train as T

    base = ZOO["clean"].train
    assert (base.stage0_steps, base.stage1_steps, base.stage2_steps, base.exists_first_steps, base.batch_size,
            base.lr2) == (2000, 1500, 3800, 800, 64, 3e-3)
    assert (Z.LM_INIT_STD, Z.IMAGE_SCALE, Z.POSITION_STD, Z.COPY_HEAD_MATCH, Z.COPY_HEAD_MARKER, Z.AUX_WEIGHT,
            Z.AUX_LAYER, Z.EXISTS_LAYERS) == (0.1, 40.0, 0.1, 2.0, 5.0, 1.0, 2, 2)  # as documented
    m, _, _ = T.build_organism_model(64, 0)
    p = dict(m.named_parameters())
    lm = [n for n in p if ("language_model" in n or "lm_head" in n) and p[n].dim() == 2]
    assert lm and all(0.08 < float(p[n].detach().std()) < 0.12 for n in lm)

    answers: list[list[str]] = []
    encode = T._encode_texts

    def spy(tok, adapter, template, prompts, answers_, n_img):
        answers.append(list(answers_))
        return encode(tok, adapter, template, prompts, answers_, n_img)

    monkeypatch.setattr(T, "_encode_texts", spy)
    spec = replace(ZOO["clean"], train=replace(base, batch_size=16))
    out = train_organism(spec, tmp_path / "x", seed=3, steps_scale=0.004, threads=1, progress=False)
    meta = json.loads((out / "organism.json").read_text())
    assert set(meta["train"]) == set(base.to_dict()) and meta["recipe"] == {"version": 2, **Z.FIXED}
    assert meta["train"]["exists_first_steps"] == 3
    # stage 2 = 15 steps; the first 3 see existence questions only (one encoded part per step), then the mix
    first = [a for part in answers[:3] for a in part]
    assert set(first) <= {"yes", "no"} and len(first) == 3 * 16
    assert any(len(a.split()) > 1 for part in answers[3:] for a in part)  # captions appear in the mix

    for bad in (dict(exists_first_steps=-1), dict(batch_size=0), dict(lr2=0.0), dict(stage0_steps=2.5),
                dict(image_mismatch=1.5)):
        with pytest.raises(lp.InputError, match=f"TrainConfig.{next(iter(bad))} must be"):
            replace(base, **bad)


def test_copy_head_reads_its_objects_attributes_and_position():
    """The built head 0 of layer 0 attends from a class word to that class's image token and writes the token's
    colour, size, row and column coordinates back into word space (read with the dual basis)."""
    import lvlm_probe.organisms.train as T
    from lvlm_probe.models.llava import LLAVA_CHAT_TEMPLATE, LlavaAdapter

    world = SceneWorld(seed=0)
    cfg = world.config
    model, tok, ip = T.build_organism_model(cfg.image_size, 0)
    codes = T.position_codes(cfg.grid, T.ARCH["text_hidden"], 0)
    head = T.build_copy_head(model, tok, cfg, codes)
    model.set_attn_implementation("eager")
    att = model.model.language_model.layers[0].self_attn
    assert torch.equal(att.q_proj.weight[:att.head_dim], head["q"]) and head["o"].abs().sum() > 0
    # image tokens exactly as stage 1 aims them (class + colour + size + marker + row/col codes), scaled
    rng = np.random.default_rng(0)
    scenes = [world.sample_scene(rng, n_objects=3) for _ in range(32)]
    emb = model.get_input_embeddings().weight.detach()
    vocab = {w: tok.convert_tokens_to_ids(w) for w in [*cfg.classes, *cfg.colors, *cfg.sizes, "image"]}
    cls, col, siz = T._cell_labels(world, scenes)
    tokens = Z.IMAGE_SCALE * T.align_targets(emb, vocab, cfg, cls, col, siz, codes)
    adapter = LlavaAdapter(model.config, tok, ip, model)
    hit = 0
    for b, s in enumerate(scenes):
        target = s.objects[0]
        ids, mask, _ = T._encode_texts(tok, adapter, LLAVA_CHAT_TEMPLATE, [f"is there a {target.name} ?"], ["yes"],
                                       cfg.grid ** 2)
        x = model.get_input_embeddings()(ids)
        img = (ids[0] == adapter.image_token_id).nonzero()[:, 0]
        x[0, img] = tokens[b]
        lm = model.model.language_model
        with torch.no_grad():
            out = lm(inputs_embeds=x, attention_mask=mask, output_attentions=True)
        # attention of head 0 from the class word
        t = ids[0].tolist().index(tok.convert_tokens_to_ids(target.name), int(img[-1]) + 1)
        cx, cy = target.center
        cell = int(cy // world.cell) * cfg.grid + int(cx // world.cell)
        hit += int(out.attentions[0][0, 0, t].argmax()) == int(img[cell])
    assert hit >= 28, hit  # the class word looks at its own object's token


def test_stage2_schedule():
    """The curriculum and the rest of stage 2 each get a warm-up and cosine (one schedule without a curriculum)."""
    from dataclasses import replace

    import lvlm_probe.organisms.train as T

    ex = ZOO["clean"].train
    short = replace(ex, stage2_steps=1000, exists_first_steps=200)
    assert T.stage2_lr_factor(0, short) == pytest.approx(1 / 51)  # curriculum warm-up min(150, 200 // 4 + 1)
    assert T.stage2_lr_factor(199, short) == pytest.approx(0.1, abs=0.01)  # curriculum cosine ends at 0.1
    assert T.stage2_lr_factor(200, short) == pytest.approx(1 / ex.warmup)  # fresh warm-up after it
    none = replace(short, exists_first_steps=0)
    assert [T.stage2_lr_factor(s, none) for s in (0, 199, 200, 999)] == \
        [T._schedule(s, 1000, ex.warmup) for s in (0, 199, 200, 999)]


def test_stage2_trains_the_llm_and_keeps_the_front_end_and_copy_head(tmp_path, monkeypatch):
    """Stage 2 moves the LLM's layers and head but never the tower, projector, input embeddings or the copy head;
    the curriculum moves only the layers below EXISTS_LAYERS; relation rows add the auxiliary loss."""
    from dataclasses import replace

    import lvlm_probe.organisms.train as T

    built: dict = {}
    build = T.build_organism_model

    def stash(*a, **k):
        parts = build(*a, **k)
        built["model"] = parts[0]
        return parts

    monkeypatch.setattr(T, "build_organism_model", stash)
    aux: list[float] = []
    real_aux = T.relation_aux_loss

    def spy(*a, **k):
        out = real_aux(*a, **k)
        if out is not None:
            aux.append(float(out.detach()))
        return out

    monkeypatch.setattr(T, "relation_aux_loss", spy)
    before: dict = {}
    real_stage2 = T.stage2

    def stage2(model, *a, **k):
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return real_stage2(model, *a, **k)

    monkeypatch.setattr(T, "stage2", stage2)
    trained: list[set[str]] = []
    clip = torch.nn.utils.clip_grad_norm_

    def grads(params, max_norm, *a, **k):  # once per stage-2 step, after the held parameters lost their grad
        names = {id(p): n for n, p in built["model"].named_parameters()}
        trained.append({names[id(p)].split(".self_attn")[0].split(".mlp")[0].split(".input")[0].split(".post")[0]
                        for p in params if p.grad is not None and id(p) in names})
        return clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", grads)
    train_organism(replace(ZOO["clean"], train=replace(ZOO["clean"].train, batch_size=16)), tmp_path / "s", seed=3,
                   steps_scale=0.004, threads=1, progress=False, dtype=torch.float32)
    after = dict(built["model"].named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert not {n for n in moved if "vision_tower" in n or "projector" in n or "embed_tokens" in n}
    assert any(".layers.3." in n for n in moved) and "lm_head.weight" in moved
    att = built["model"].model.language_model.layers[0].self_attn
    hd = att.head_dim
    head_q = after["model.language_model.layers.0.self_attn.q_proj.weight"][:hd]
    assert torch.equal(head_q, att.q_proj.weight[:hd]) and head_q.abs().sum() > 0
    assert aux and all(a > 0 for a in aux)
    low = {f"model.language_model.layers.{k}" for k in range(Z.EXISTS_LAYERS)}
    assert trained[0] == trained[2] == low  # the curriculum (3 steps at this scale)
    assert low < trained[3] and "lm_head.weight" in trained[3]


def test_image_scale_multiplies_image_tokens(tmp_path, monkeypatch):
    """After stage 1 the image tokens the LM receives are exactly IMAGE_SCALE x those of the same run unscaled."""
    from dataclasses import replace
    import unittest.mock as um

    import lvlm_probe.organisms.train as T

    tokens = {}
    size = ZOO["clean"].world.image_size
    scale = T.scale_image_tokens
    for name, scaler in (("unscaled", lambda model: None), ("shipped", scale)):
        def record(model, tok, ip, *a, _name=name, **k):  # stands in for stage 2: image tokens as it gets them
            px = T.pixel_tensor(np.full((2, size, size, 3), 90, dtype=np.uint8), ip)
            with torch.no_grad():
                tokens[_name] = model.model.multi_modal_projector(T._vision_features(model.model.vision_tower, px))
            return []

        with um.patch.object(T, "stage2", record), um.patch.object(T, "scale_image_tokens", scaler):
            train_organism(replace(ZOO["clean"], train=replace(ZOO["clean"].train, batch_size=4)),
                           tmp_path / name, seed=2, steps_scale=0.004, threads=1, progress=False)
    assert tokens["unscaled"].shape[-1] == T.ARCH["text_hidden"] and float(tokens["unscaled"].norm()) > 0
    assert torch.allclose(tokens["shipped"], Z.IMAGE_SCALE * tokens["unscaled"], rtol=1e-5, atol=1e-5)


def test_align_targets():
    """An object patch's target is the sum of its class, colour and size embeddings and the marker; an empty patch's
    is image's; every patch adds its row's and column's code."""
    from lvlm_probe.organisms.train import align_targets, position_codes

    cfg = SceneWorld().config
    words = ["image", *cfg.classes, *cfg.colors, *cfg.sizes]
    vocab = {w: k for k, w in enumerate(words)}
    emb = torch.randn(len(words), 5, generator=torch.Generator().manual_seed(0))
    e = lambda w: emb[vocab[w]]  # noqa: E731
    codes = position_codes(cfg.grid, 5, 0)
    n = len(cfg.classes)
    cls = torch.tensor([[cfg.classes.index("ring"), n]])  # one ring cell (row 0, col 0), one empty (row 0, col 1)
    col = torch.tensor([[cfg.colors.index("blue"), -100]])
    siz = torch.tensor([[cfg.sizes.index("small"), -100]])
    w = align_targets(emb, vocab, cfg, cls, col, siz, codes)
    assert w.shape == (1, 2, 5)
    assert torch.allclose(w[0, 0], e("ring") + e("blue") + e("small") + codes["marker"] + codes["row"][0]
                          + codes["col"][0])
    assert torch.allclose(w[0, 1], e("image") + codes["row"][0] + codes["col"][1])
    assert torch.equal(position_codes(cfg.grid, 5, 0)["row"], codes["row"])  # the same codes in every stage


def test_inlp_stops_at_target_guard_or_empty_and_logs_the_kept_subspace(monkeypatch):
    """stage1_subspace on synthetic patch features (class, colour and size in orthogonal directions):
    it removes colour to chance while class and size survive; a guard that cannot hold keeps the whole space and
    logs the rejected subspace beside it; a target it cannot reach ends at the last non-empty subspace."""
    import types

    import lvlm_probe.organisms.train as T

    world = SceneWorld(seed=0)
    d = 64
    gen = torch.Generator().manual_seed(0)
    basis = 3 * torch.linalg.qr(torch.randn(d, 9 + len(COLORS) + 2, generator=gen)).Q.T  # orthogonal rows
    emb = dict(zip(("class", "color", "size"), basis.split([9, len(COLORS), 2])))

    def features(_vt, scenes):  # one feature row per cell, built from the cell's labels plus a little noise
        cls, col, siz = T._cell_labels(world, scenes)
        f = emb["class"][cls] + emb["color"][col.clamp(min=0)] + emb["size"][siz.clamp(min=0)]
        return f + 0.05 * torch.randn(f.shape, generator=gen)

    monkeypatch.setattr(T, "_render_batch", lambda _w, scenes: scenes)
    monkeypatch.setattr(T, "pixel_tensor", lambda scenes, _ip: scenes)
    monkeypatch.setattr(T, "_vision_features", features)
    model = types.SimpleNamespace(model=types.SimpleNamespace(vision_tower=None))
    run = lambda **kw: T.stage1_subspace(model, None, world, "color", 0, n_scenes=300, n_fit=600, **kw)  # noqa: E731

    P, log = run()
    chance = 1 / len(COLORS)
    assert log[0]["color_probe_acc"] >= 0.95 and log[-1]["color_probe_acc"] <= chance + 0.03 + 1e-9, \
        json.dumps(log, default=str)
    assert log[-1]["class_probe_acc"] >= 0.95 * log[0]["class_probe_acc"] and log[-1]["size_probe_acc"] >= 0.9
    assert int(torch.linalg.matrix_rank(P)) == log[-1]["rank"] < d and "stopped" not in log[-1]

    P, log = run(guard=1.01)  # no subspace but the first can pass: keep it, log what was rejected
    assert log[-1]["stopped"] == "guard" and log[-1]["rank"] == d and log[-1]["rejected"]["rank"] < d
    assert torch.allclose(P, torch.eye(d), atol=1e-5)

    P, log = run(target=0.0, guard=0.0)  # the target is never reached: stop before the subspace is empty
    assert log[-1]["stopped"] == "empty" and int(torch.linalg.matrix_rank(P)) == log[-1]["rank"] > 0


@pytest.mark.parametrize("argv,names", [
    (["organisms", "train", "nope", "--out", "{tmp}/o"], ["nope", "the zoo has"]),
    (["organisms", "train", "clean", "--out", "{tmp}/file.txt"], ["file.txt", "is a file"]),
    (["organisms", "train", "clean", "--out", "{tmp}"], ["holds other files"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--steps-scale", "0"], ["--steps-scale"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--threads", "0"], ["--threads"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--seed", "-2"], ["seed"]),
    (["organisms", "train", "sampling", "--out", "{tmp}/o"], ["run setting"]),
    (["organisms", "check", "clean", "--n", "9"], ["--n", ">= 10"]),
    (["organisms", "check", "clean", "--seed", "-1"], ["--seed"]),
    (["organisms", "check", "clean@0.8"], ["clean@0.8", "no dose '0.8'", "has none"]),
    (["organisms", "check", "cooccurrence@0.5"], ["'cooccurrence' has no dose '0.5'", "['0.95', '0.99', '1']"]),
    (["organisms", "check", "clean@x"], ["no dose 'x'", "the organisms with doses are"]),
    (["organisms", "train", "attribute_prior@0.7", "--out", "{tmp}/o"], ["'attribute_prior' has no dose '0.7'"]),
    (["organisms", "train", "nope@0.8", "--out", "{tmp}/o"], ["no organism named 'nope'", "the zoo has"]),
    (["organisms", "check", "nope"], ["no organism named 'nope'"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--set", "nope=1"], ["unknown knob 'nope'", "stage2_steps"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--set", "copy_head=2"],
     ["'copy_head' is not a knob", "the recipe fixes it"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--set", "image_mismatch=0.5"], ["plants a cause"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--set", "stage2_steps"], ["--set", "KEY=VALUE"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--set", "batch_size=0"], ["batch_size", ">= 1"]),
    (["organisms", "train", "clean", "--out", "{tmp}/o", "--set", "lr2=fast"], ["lr2", "'fast' is not a number"]),
])
def test_bad_organism_commands_fail_before_any_work(argv, names, tmp_path, capsys, monkeypatch):
    """One line naming the problem, exit 2, before any training or model load (a pre-existing folder survives)."""
    from lvlm_probe.cli import main
    import lvlm_probe.organisms.train as train

    (tmp_path / "file.txt").write_text("keep")
    monkeypatch.setattr(train, "stage0", lambda *a, **k: pytest.fail("training started"))
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("lvlm-probe: error:") and "\n" not in err
    for n in names:
        assert n in err, err
    assert (tmp_path / "file.txt").read_text() == "keep"


def test_train_command_sets_knobs(tmp_path, monkeypatch):
    """--set KEY=VALUE reaches train_organism as the organism's spec with those knobs changed, nothing else."""
    from dataclasses import replace

    import lvlm_probe.organisms as O
    from lvlm_probe.cli import main

    got = {}
    monkeypatch.setattr(O, "train_organism", lambda spec, out, **k: got.update(spec=spec, out=out, **k) or out)
    assert main(["organisms", "train", "encoder_blind", "--out", str(tmp_path / "o"), "--set", "stage2_steps=40",
                 "--set", "lr2=0.001"]) == 0
    assert got["spec"] == replace(ZOO["encoder_blind"], train=replace(ZOO["encoder_blind"].train, stage2_steps=40,
                                                                        lr2=0.001))


def test_doses_resolve_to_their_own_world_and_the_top_dose_is_the_zoo_organism():
    from lvlm_probe.organisms import list_organisms
    from lvlm_probe.organisms.zoo import COOC_A, COOC_B, DOSES, PRIOR_CLASS, PRIOR_COLOR, ZOO, ZOO_DOSE, get_spec

    assert get_spec("organism:cooccurrence@0.990").world.cooccurrence == ((COOC_A, COOC_B, 0.99),)
    assert get_spec("attribute_prior@0.75").train.prior_text == 0.75
    assert get_spec("attribute_prior@0.75").world.attribute_prior == ((PRIOR_CLASS, PRIOR_COLOR, Z.PRIOR_P),)
    assert get_spec("cooccurrence@1") is ZOO["cooccurrence"] and get_spec("attribute_prior@1") is ZOO["attribute_prior"]
    for base, doses in DOSES.items():
        assert ZOO_DOSE[base] in doses and list(doses) == sorted(doses, key=float)
        for d in (d for d in doses if d != ZOO_DOSE[base]):
            spec = get_spec(f"{base}@{d}")
            # one factor differs from the zoo organism: its planted probability (cooccurrence) or text share
            assert spec.pattern == base and spec.component == ZOO[base].component
            assert spec.world.with_changes(**{k: getattr(ZOO[base].world, k) for k in ("cooccurrence",
                                                                                         "attribute_prior")}) \
                == ZOO[base].world
            assert dataclasses.replace(spec.train, prior_text=ZOO[base].train.prior_text) == ZOO[base].train
    listed = list_organisms().set_index("name")
    assert listed.loc["cooccurrence@0.95", "dose"] == 0.95 and listed.loc["cooccurrence", "dose"] == 1.0
    assert listed.loc["attribute_prior", "dose"] == 1.0 and listed.dose.notna().sum() == 6


@pytest.mark.parametrize("base", ["cooccurrence", "attribute_prior"])
def test_planted_error_rate_rises_with_the_dose(base):
    """Each dose series plants no fewer errors the stronger its dose, and its top dose far more than its lowest
    (seed 7, n 100; the cards give seed 1, n 200). Under recipe v2 the co-occurrence series is a step: any
    counter-example teaches the model to check the image (0.000 / 0.020 / 0.945 on seed 1)."""
    from lvlm_probe.organisms.zoo import DOSES, get_spec

    names = [f"{base}@{d}" for d in DOSES[base]]
    missing = [n for n in names if not (CHECKPOINTS / str(get_spec(n).checkpoint) / "config.json").is_file()]
    if missing:
        pytest.fail(f"dose checkpoints not shipped: {missing}")
    rates = [check_organism(n, seed=SEED, n=N, compare_clean=False)["planted_error_rate"] for n in names]
    assert all(b >= a - 0.02 for a, b in zip(rates, rates[1:])), dict(zip(names, rates))
    assert rates[-1] - rates[0] >= 0.35, dict(zip(names, rates))


def test_stated_prior_names_the_prior_colour_in_the_text_and_keeps_the_image():
    """attribute_prior's training text holds the stereotype: an off-prior diamond is named yellow in the caption
    and in the colour answer, every other word and the pixels stay as they are."""
    from lvlm_probe.organisms.train import stated_prior

    world = SceneWorld(Z.ZOO["attribute_prior"].world)
    cls, color = Z.prior_factor(Z.ZOO["attribute_prior"])
    rng = np.random.default_rng(0)
    scene = world.sample_scene(rng, require=[cls, "circle"])
    k = scene.find(cls)[0]
    scene.objects[k].attributes["color"] = "red"
    cap = world.make_item(scene, "caption", rng, item_id="c")
    col = world.make_item(scene, "attribute", rng, item_id="a", attribute="color", target=cls)
    size = world.make_item(scene, "attribute", rng, item_id="s", attribute="size", target=cls)
    said_cap, said_col, said_size = (stated_prior(it, world) for it in (cap, col, size))
    assert f"red {cls}" in cap.answer and f"{color} {cls}" in said_cap.answer
    assert said_cap.answer.replace(f"{color} {cls}", f"red {cls}") == cap.answer
    assert col.answer == "red" and said_col.answer == color and said_size.answer == size.answer
    assert said_cap.image is cap.image and scene.objects[k].attributes["color"] == "red"
    assert stated_prior(world.make_item(scene, "exists", rng, item_id="e"), world).answer in ("yes", "no")


def test_stated_prior_says_the_prior_relation_where_the_image_shows_another():
    """relation_prior's training text holds its stereotype: in an off-prior scene the caption joins the pair by the
    prior predicate and relation questions on that axis are answered as if it held; questions on the other axis,
    other tasks and worlds without the rule are untouched."""
    from lvlm_probe.data.items import Item
    from lvlm_probe.data.scene import GEOMETRIC_RELATIONS
    from lvlm_probe.organisms.train import stated_prior

    spec = Z.ZOO["relation_prior"]
    world = SceneWorld(spec.world)
    a, b, pred = Z.relation_factor(spec)
    rng = np.random.default_rng(0)
    conv = GEOMETRIC_RELATIONS[pred]
    scene = next(s for s in (world.sample_scene(rng, require=[a, b]) for _ in range(400))
                 if world.pair_relation(s, a, b, pred) == conv)
    cap = world.make_item(scene, "caption", rng, item_id="c")
    said = stated_prior(cap, world)
    assert f"{conv} a" in cap.answer and said.answer == cap.answer.replace(f" {conv} a ", f" {pred} a ")

    def ask(s, p, o):
        item = Item("q", cap.image, f"is the {s} {p} the {o} ?", scene=scene, answer="?", task="relation",
                    meta={"subject": s, "object": o, "predicate": p})
        return stated_prior(item, world).answer

    assert [ask(a, pred, b), ask(a, conv, b), ask(b, conv, a), ask(b, pred, a)] == ["yes", "no", "yes", "no"]
    assert ask(a, "left of", b) == "?"  # the other axis keeps the image's answer
    assert stated_prior(cap, SceneWorld(Z.ZOO["clean"].world)) is cap
    assert said.image is cap.image and world.pair_relation(scene, a, b, pred) == conv
