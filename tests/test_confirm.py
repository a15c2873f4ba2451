"""Interventional confirmation: each diagnosed error's confirming intervention runs on its item."""

import numpy as np
import pandas as pd
import pytest

import lvlm_probe as lp
from lvlm_probe.organisms import default_items
from lvlm_probe.tracing.confirm import CONFIRMING, confirm_diagnoses, confirmation_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sampled_errors_are_confirmed_by_greedy_decoding(tmp_path):
    """organism:sampling's errors are decoding errors: greedy removes most of them (measured 43 of 48 on seed 3)."""
    items = default_items("organism:sampling", n=16, seed=3)
    cfg = lp.DiagnoseConfig(n_probe_items=60, curve_sites=None, confirm=True)
    rep = lp.diagnose("organism:sampling", items, cfg, out=tmp_path / "run", progress=False)
    d = rep.diagnoses
    dec = d[d.stage == "decoding"]
    assert len(dec) >= 20 and (dec.confirmed_by == "greedy").all()
    assert dec.confirmed.eq(True).mean() >= 0.8
    assert d[d.stage == "undetermined"].confirmed.isna().all()
    s = confirmation_summary(d).set_index("stage")
    assert s.loc["decoding", "tested"] == len(dec)
    from lvlm_probe.tracing.calibration import shipped_calibrator

    assert np.allclose(d.confidence, shipped_calibrator(confirmation=True).predict(d), equal_nan=True)
    again = lp.diagnose("organism:sampling", items, cfg, out=tmp_path / "run", progress=False)
    assert again.manifest["timings"]["confirm"] == "resumed"
    untested = "not tested"
    assert again.diagnoses.confirmed.fillna(untested).tolist() == d.confirmed.fillna(untested).tolist()
    lp.render_diagnosis(rep, tmp_path / "report")
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Interventional confirmation" in html
    assert "cooccurrence: verify_objects" in html and "llm fusion: early_readout" in html  # the map in use, not a stale list


def test_front_end_stages_without_a_reference_are_not_tested():
    model = lp.load("organism:cooccurrence", device="cpu")
    items = default_items("organism:cooccurrence", n=4, seed=0)
    d = pd.DataFrame({"item_id": [items[0].id, items[0].id], "kind": ["object", "attribute"],
                      "polarity": ["hallucinated"] * 2, "subject": ["square", "circle"], "attribute": [None, "color"],
                      "stage": ["encoder", "projector"]})
    c = confirm_diagnoses(model, items, d, max_new_tokens=8, progress=False)
    assert c.confirmed.isna().all() and c.confirmed_by.isna().all()
    assert CONFIRMING["encoder"] == "swap_encoder" and CONFIRMING["projector"] == "swap_projector"
    assert CONFIRMING["cooccurrence"] == "verify_objects" and "reference" not in model.run_defaults


def test_without_confirm_no_intervention_runs(monkeypatch):
    """confirm=False (the default) adds no step and no column, and never decodes under an intervention."""
    import lvlm_probe.interventions as room

    monkeypatch.setattr(room, "decode", lambda *a, **k: pytest.fail("an intervention ran without confirm=True"))
    cfg = lp.DiagnoseConfig(n_probe_items=0, curve_sites=None)
    assert cfg.confirm is False
    rep = lp.diagnose("organism:sampling", default_items("organism:sampling", n=4, seed=3), cfg, progress=False)
    assert len(rep.diagnoses) and "confirmed" not in rep.diagnoses and "confirm" not in rep.manifest["timings"]


def test_long_generation_is_confirmed_by_restarting_the_enumeration():
    """organism:drift drops the middle objects of five-object scenes; a region restart names them."""
    from lvlm_probe.misalignment import judge_batch

    model = lp.load("organism:drift", device="cpu")
    items = [it for it in default_items("organism:drift", 16, 1) if it.id.startswith("trig-long")][:3]
    gen = model.generate(model.prepare_items(items), max_new_tokens=32)
    errs = judge_batch(gen, items=items)
    d = errs[errs.polarity == "omitted"].assign(stage="long generation")
    assert len(d) >= 4
    c = confirm_diagnoses(model, items, d, max_new_tokens=32, progress=False)
    assert (c.confirmed_by == "region_restart").all() and c.confirmed.eq(True).all()


def test_cooccurrence_is_confirmed_by_asking_about_the_object():
    """organism:cooccurrence names a square beside most circles; asked "is there a square ?" it mostly says no, so
    verify-and-delete removes the square, and the co-occurrence diagnosis is confirmed."""
    from lvlm_probe.misalignment import judge_batch

    model = lp.load("organism:cooccurrence", device="cpu")
    items = [it for it in default_items("organism:cooccurrence", 48, 1) if it.id.startswith("trig-cap")][:10]
    errs = judge_batch(model.generate(model.prepare_items(items), max_new_tokens=48), items=items)
    d = errs[(errs.subject == "square") & (errs.polarity == "hallucinated")].assign(stage="cooccurrence")
    assert len(d) >= 6
    c = confirm_diagnoses(model, items, d, max_new_tokens=48, progress=False)
    assert (c.confirmed_by == "verify_objects").all() and c.confirmed.eq(True).mean() >= 0.7, c


def test_a_question_left_without_an_answer_is_not_confirmed(monkeypatch):
    """A colour error "confirmed" by an intervention that makes the model answer "no" would be a dropped answer,
    not a removed cause: confirmation needs a readable answer (a different, right colour does confirm)."""
    import types

    import lvlm_probe.interventions as room
    from lvlm_probe.data.items import Item
    from lvlm_probe.data.scene import SceneGraph

    scene = SceneGraph.from_dict({"objects": [{"name": "diamond", "attributes": {"color": "green"}}]})
    item = Item(id="q", image=None, task="attribute", prompt="what color is the diamond ?", scene=scene,
                meta={"target": "diamond", "attribute": "color"})
    d = pd.DataFrame({"item_id": ["q"], "kind": ["attribute"], "polarity": ["hallucinated"], "subject": ["diamond"],
                      "attribute": ["color"], "stage": ["attribute prior"]})
    fake = types.SimpleNamespace(prepare_items=lambda items: items)
    for answer, expect in (("no", False), ("green", True), ("yellow", False)):
        monkeypatch.setattr(room, "decode", lambda *a, _t=answer, **k: types.SimpleNamespace(text=[_t]))
        c = confirm_diagnoses(fake, [item], d, max_new_tokens=4, progress=False)
        assert c.confirmed.tolist() == [expect], answer


def test_a_method_the_model_cannot_run_leaves_its_errors_untested(monkeypatch):
    """Where decode refuses a confirming method on this model (an InputError, e.g. an attention edit the bridge
    would ignore), its errors are not tested (with a warning naming why) and the other stages are still
    confirmed."""
    import types

    import lvlm_probe.interventions as room
    from lvlm_probe.errors import InputError

    items = default_items("organism:cooccurrence", n=4, seed=0)
    cap = next(it for it in items if it.task == "caption")
    d = pd.DataFrame({"item_id": [items[0].id, cap.id], "kind": ["attribute", "object"],
                      "polarity": ["hallucinated"] * 2, "subject": ["diamond", "square"],
                      "attribute": ["color", None], "stage": ["attribute prior", "decoding"]})

    def fake(model, batch, method, **kw):
        if method.name == "pai":
            raise InputError("pai: this model's bridge ignores edits of attention scores")
        return types.SimpleNamespace(text=["a circle ."])

    monkeypatch.setattr(room, "decode", fake)
    with pytest.warns(UserWarning, match="confirmation by pai not tested.*ignores edits"):
        c = confirm_diagnoses(types.SimpleNamespace(prepare_items=lambda x: x), items, d, max_new_tokens=4,
                              progress=False)
    assert c.confirmed.tolist() == [None, True] and c.confirmed_by.tolist() == [None, "greedy"]


def test_front_end_errors_are_confirmed_by_swapping_the_part_back():
    """encoder_blind shares clean's LLM: its blind-spot errors go away under the encoder swap, not the projector
    swap; diagnose loads clean as the reference from the run defaults."""
    from lvlm_probe.organisms.mitigation import planted_errors_of
    from lvlm_probe.tracing.diagnose import _reference

    model = lp.load("organism:encoder_blind", device="cpu")
    clean = _reference(model)
    assert clean is not None and model.run_defaults["reference"] == "organism:clean"
    assert _reference(lp.load("organism:cooccurrence", device="cpu")) is None
    items = default_items("organism:encoder_blind", n=16, seed=1)
    planted, _, _ = planted_errors_of("encoder_blind", model, clean, items, seed=1)
    assert len(planted) >= 5
    for stage, want in (("encoder", "swap_encoder"), ("projector", "swap_projector")):
        d = planted.assign(stage=stage)
        c = confirm_diagnoses(model, items, d, max_new_tokens=64, progress=False, reference=clean)
        assert (c.confirmed_by == want).all()
        share = c.confirmed.eq(True).mean()
        assert share >= 0.8 if stage == "encoder" else share <= 0.1, (stage, share)
    keys_only = planted[["item_id", "kind", "polarity", "subject", "attribute"]].assign(stage="encoder")
    with pytest.raises(lp.InputError, match="needs its 'truth' column"):
        confirm_diagnoses(model, items, keys_only, max_new_tokens=64, progress=False, reference=clean)


def test_relation_prior_is_confirmed_by_asking_about_the_relation():
    """organism:relation_prior writes "triangle above cross" where the triangle is below; asked about that relation it
    says no and affirms the true one, so verify-and-correct rewrites the caption and the diagnosis is confirmed."""
    from lvlm_probe.data.world import SceneWorld
    from lvlm_probe.misalignment import judge_batch
    from lvlm_probe.organisms.check import trigger_set
    from lvlm_probe.organisms.zoo import get_spec

    items, _ = trigger_set("relation_prior", SceneWorld(get_spec("relation_prior").world, seed=5), 10, seed=5011)
    items = [it for it in items if it.task == "caption"][:8]
    model = lp.load("organism:relation_prior", device="cpu")
    errs = judge_batch(model.generate(model.prepare_items(items), max_new_tokens=48), items=items)
    d = errs[errs.kind == "relation"].assign(stage="relation prior")
    assert len(d) >= 5 and CONFIRMING["relation prior"] == "verify_relations"
    c = confirm_diagnoses(model, items, d, max_new_tokens=48, progress=False)
    assert (c.confirmed_by == "verify_relations").all() and c.confirmed.eq(True).mean() >= 0.8, c


def test_hub_models_are_confirmed_with_the_papers_settings(monkeypatch):
    """The zoo's knobs (set for 4-layer LLMs) and its prompt format apply to organisms only: a model whose run
    defaults name no organism is confirmed with VCD and PAI at their papers' settings and asked the hub existence
    question; a `questions.object` in the run defaults wins, and one without a slot for the class is refused."""
    import types

    import lvlm_probe.interventions as room
    from lvlm_probe.errors import InputError
    from lvlm_probe.interventions import PAI, VCD
    from lvlm_probe.tracing.ask import HUB_OBJECT_QUESTION
    from lvlm_probe.tracing.confirm import ZOO_KNOBS

    items = default_items("organism:cooccurrence", n=4, seed=0)
    cap = next(it for it in items if it.task == "caption")
    d = pd.DataFrame({"item_id": [items[0].id, cap.id], "kind": ["attribute", "object"],
                      "polarity": ["hallucinated"] * 2, "subject": ["diamond", "square"],
                      "attribute": ["color", None], "truth": ["purple", None],
                      "stage": ["attribute prior", "cooccurrence"]})
    seen = {}

    def fake(model, batch, method, **kw):
        seen[method.name] = method
        return types.SimpleNamespace(text=["a circle ."])

    monkeypatch.setattr(room, "decode", fake)

    def run(run_defaults):
        seen.clear()
        model = types.SimpleNamespace(prepare_items=lambda x: x, run_defaults=run_defaults)
        confirm_diagnoses(model, items, d, max_new_tokens=4, progress=False)
        return seen["pai"], seen["verify_objects"].question

    assert run({}) == (PAI(), HUB_OBJECT_QUESTION)
    assert PAI().alpha == 0.2 and PAI().first_layer == 2 and VCD().alpha == 1.0  # the papers' settings
    assert run({"organism": "cooccurrence"}) == (PAI(**ZOO_KNOBS["pai"]), "is there a {} ?")
    assert run({"questions": {"object": "Q: is a {} shown?"}})[1] == "Q: is a {} shown?"
    with pytest.raises(InputError, match="needs a \\{\\} where the class goes.*questions.object"):
        run({"questions": {"object": "is there a cat?"}})
