"""Logit lens: parity with the model's logits, word probabilities, store-backed residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lvlm_probe as lp
from conftest import mixed_batch, rand_image
from lvlm_probe.probing import (LENS_COLUMNS, WORD_COLUMNS, internal_confidence, lens_logits, lens_modules, logit_lens,
                                word_probability)



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def test_lens_at_last_layer_equals_model_logits(family):
    model, _ = family
    batch = mixed_batch(model, n_images_second=2)
    L = model.adapter.n_llm_layers - 1
    logits, cache = model.run_with_cache(batch, [f"llm.resid_post.{L}"])
    got = lens_logits(model, cache[f"llm.resid_post.{L}"])
    keep = batch.attention_mask.bool()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got[keep], logits[keep].float(), atol=1e-5, rtol=1e-5)
    V = logits.shape[-1]
    lens = logit_lens(model, batch, layers=[-1], positions="last", k=V)
    assert list(lens.columns) == list(LENS_COLUMNS)
    assert len(lens) == len(batch) * V and set(lens.layer) == {L} and set(lens.site) == {f"llm.resid_post.{L}"}
    T = batch.input_ids.shape[1]
    for b in range(len(batch)):
        rows = lens[lens.b == b].sort_values("rank")
        ref = logits[b, -1].float()
        assert rows.item_id.iloc[0] == batch.item_ids[b] and (rows.position == T - 1).all()
        assert rows.token_id.iloc[0] == int(ref.argmax())
        tid = torch.from_numpy(rows.token_id.to_numpy().copy())
        np.testing.assert_allclose(rows.logit.to_numpy(), ref[tid].numpy(), atol=1e-5)
        np.testing.assert_allclose(rows.prob.to_numpy(), ref.softmax(-1)[tid].numpy(), atol=1e-6)
        assert rows.prob.sum() == pytest.approx(1.0, abs=1e-5)
        assert rows.token.iloc[0] == model.tokenizer.decode([int(ref.argmax())])


def test_lens_rows_carry_roles_and_patch_coords(llava):
    batch = mixed_batch(llava)
    lens = logit_lens(llava, batch, layers=[0, 1], positions="image", k=3)
    r = batch.roles
    n_img = int(r.image.sum())
    assert len(lens) == n_img * 2 * 3 and set(lens.role) == {"image"}
    first = lens[(lens["rank"] == 1) & (lens.layer == 0)]
    coords = r.patch_coords[r.image]
    assert first[["image", "row", "col"]].astype(int).to_numpy().tolist() == coords.tolist()
    allpos = logit_lens(llava, batch, layers=[0], positions="all", k=1)
    assert len(allpos) == int(batch.attention_mask.sum())  # padding skipped
    assert allpos[allpos.role != "image"].row.isna().all()
    assert set(allpos.role) <= set(lp.ROLE_NAMES)
    q = logit_lens(llava, batch, layers=[1], positions="question", k=1)
    assert len(q) == int(r.question.sum())
    # final_norm switch: without it the lens is lm_head(h)
    norm, head = lens_modules(llava)
    _, cache = llava.run_with_cache(batch, ["llm.resid_post.0"])
    h = cache["llm.resid_post.0"][:, -1]
    with torch.no_grad():
        torch.testing.assert_close(lens_logits(llava, h, final_norm=False), head(h).float())
        torch.testing.assert_close(lens_logits(llava, h), head(norm(h)).float())
    raw = logit_lens(llava, batch, layers=[0], positions="last", k=1, final_norm=False)
    np.testing.assert_allclose(raw.logit.to_numpy(), head(h).max(-1).values.detach().numpy(), atol=1e-5)
    with pytest.raises(lp.InputError, match="positions='nowhere'"):
        logit_lens(llava, batch, positions="nowhere")
    with pytest.raises(lp.InputError, match="out of range"):
        logit_lens(llava, batch, layers=[7])


def test_word_probability_agrees_with_logit_lens(family):
    model, _ = family
    batch = mixed_batch(model)
    lens = logit_lens(model, batch, positions="image", k=2)
    ids = sorted(set(lens.token_id.tolist()))[:6]
    wp = word_probability(model, batch, ids)  # token ids pass through
    assert list(wp.columns) == list(WORD_COLUMNS)
    assert len(wp) == int(batch.roles.image.sum()) * model.adapter.n_llm_layers * len(ids)
    m = lens.merge(wp, on=["b", "item_id", "layer", "position", "token_id"], suffixes=("_lens", "_word"))
    assert len(m) > 0
    np.testing.assert_allclose(m.prob_lens, m.prob_word, atol=1e-6)
    np.testing.assert_allclose(m.logit_lens, m.logit_word, atol=1e-5)
    # words as strings: the first token of the word
    word = model.tokenizer.decode([ids[0]]).strip() or model.tokenizer.decode([ids[0]])
    tok = model.tokenizer(word, add_special_tokens=False)["input_ids"][0]
    ws = word_probability(model, batch, [word], layers=[0])
    assert set(ws.word) == {word} and set(ws.token_id) == {tok}
    # per-item word lists
    per = word_probability(model, batch, [[ids[0]], [ids[1], ids[2]]], layers=[0])
    assert set(per[per.b == 0].token_id) == {ids[0]} and set(per[per.b == 1].token_id) == {ids[1], ids[2]}
    # vl-interp renormalisation over the top-n logits
    top = word_probability(model, batch, list(range(model.tokenizer.vocab_size)), layers=[0], positions="last",
                           renorm_top=5)
    s = top.groupby("b").prob.agg(["sum", lambda p: int((p > 0).sum())])
    np.testing.assert_allclose(s["sum"], 1.0, atol=1e-5)
    assert (s.iloc[:, 1] == 5).all()
    conf = internal_confidence(wp)
    assert len(conf) == len(batch) * len(ids)
    assert list(conf.columns) == list(internal_confidence(wp.iloc[:0]).columns) == [
        "b", "item_id", "word", "token_id", "confidence", "layer", "position", "tile", "row", "col"]
    best = wp.groupby(["b", "word"]).prob.max().reset_index()
    np.testing.assert_allclose(conf.sort_values(["b", "word"]).confidence.to_numpy(),
                               best.sort_values(["b", "word"]).prob.to_numpy())


def test_lens_on_store_residuals_equals_live(family, tmp_path):
    model, _ = family
    items = [lp.Item(id=f"it{k}", image=rand_image(k, 40 + 8 * k, 48), prompt="what is in the image ?" + " ?" * k)
             for k in range(3)]
    store = lp.capture(model, items, sites=["llm.resid_post.*"], select=["image_patches", "last_prompt"],
                       out=tmp_path / "s", batch_size=3, progress=False)
    batch = model.prepare([it.image for it in items], [it.prompt for it in items], item_ids=[it.id for it in items])
    live = logit_lens(model, batch, positions="last", k=4)
    stored = logit_lens(model, store, selection="last_prompt", k=4)
    assert stored.position.isna().all() and set(stored.role) == {"last_prompt"}
    key = ["item_id", "layer", "rank"]
    a, b = live.sort_values(key).reset_index(drop=True), stored.sort_values(key).reset_index(drop=True)
    assert a.token_id.tolist() == b.token_id.tolist()
    np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)
    live_img = word_probability(model, batch, [3, 5], positions="image")
    store_img = word_probability(model, store, [3, 5], items=["it2", "it0"])
    # rows follow the store's order; `b` is the position in the given items list
    assert set(store_img[store_img.item_id == "it2"].b) == {0} and set(store_img[store_img.item_id == "it0"].b) == {1}
    key = ["item_id", "layer", "image", "tile", "row", "col", "token_id"]
    live_img, store_img = live_img[live_img.row.notna()], store_img[store_img.row.notna()]  # grid tokens
    m = live_img.merge(store_img, on=key, suffixes=("_live", "_store"))
    assert len(m) == len(store_img) and len(m) > 0
    np.testing.assert_allclose(m.prob_live, m.prob_store, atol=1e-5)
    with pytest.raises(lp.InputError, match="not in the store"):
        logit_lens(model, store, items=["nope"])
