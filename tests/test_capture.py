"""capture(): values equal what the model computes, rows map to the right patches and steps."""

import pytest
import torch

import lvlm_probe as lp
from conftest import mixed_batch, rand_image


def _items(n, sizes=None, prompt="what is in the image ?"):
    return [lp.Item(id=f"it{k}", image=rand_image(k, *(sizes[k % len(sizes)] if sizes else (40, 48))),
                    prompt=prompt + " ?" * (k % 3)) for k in range(n)]


def test_prompt_selections_equal_cache(family, tmp_path):
    model, _ = family
    items = _items(3, sizes=[(40, 60), (60, 40), (50, 50)])
    store = lp.capture(model, items, sites=["llm.resid_post.1", "llm.mlp_out.0", "llm.final_norm"],
                       select=["image_mean", "last_prompt", "text_mean", "image_patches"],
                       out=tmp_path / "s", batch_size=3, progress=False)
    assert store.item_ids == [it.id for it in items]
    batch = model.prepare([it.image for it in items], [it.prompt for it in items])
    _, cache = model.run_with_cache(batch, ["llm.resid_post.1", "llm.mlp_out.0", "llm.final_norm"])
    for site in ("llm.resid_post.1", "llm.mlp_out.0", "llm.final_norm"):
        h = cache[site]
        r = batch.roles
        for b in range(3):
            assert torch.allclose(store.get(site, "image_mean")[b], h[b][r.image[b]].mean(0), atol=1e-5)
            assert torch.allclose(store.get(site, "text_mean")[b], h[b][r.question[b]].mean(0), atol=1e-5)
            assert torch.allclose(store.get(site, "last_prompt")[b], h[b, -1], atol=1e-5)
        rows, idx = store.get_rows(site, "image_patches")
        for b, iid in enumerate(store.item_ids):
            m = (idx["item_id"] == iid).to_numpy()
            coords = r.patch_coords[b][r.image[b]]
            assert idx[m][["image", "row", "col"]].to_numpy().tolist() == coords.tolist()
            assert torch.allclose(rows[torch.from_numpy(m.copy())], h[b][r.image[b]], atol=1e-6)


def test_projector_patches_are_the_llm_image_embeddings(family, tmp_path):
    """projector.out rows, mapped back to (image,row,col), equal the LLM input at those image tokens.
    For Qwen2.5-VL this checks that the window permutation is undone."""
    model, _ = family
    items = [lp.Item(id="a", image=[rand_image(1, 40, 70), rand_image(2, 70, 40)], prompt="what is in the image ?"),
             lp.Item(id="b", image=rand_image(3, 56, 56), prompt="what ?")]
    store = lp.capture(model, items, sites=["projector.out", "llm.resid_pre.0"], select=["image_patches"],
                       out=tmp_path / "s", batch_size=2, progress=False)
    p_rows, p_idx = store.get_rows("projector.out", "image_patches")
    l_rows, l_idx = store.get_rows("llm.resid_pre.0", "image_patches")
    key = ["item_id", "image", "tile", "row", "col"]
    pm = {tuple(r): k for k, r in enumerate(p_idx[key].itertuples(index=False, name=None))}
    assert len(pm) == len(p_idx)  # (image, tile, row, col) names each projector row once
    lk = [tuple(r) for r in l_idx[key].itertuples(index=False, name=None)]
    mine = [k for k, r in enumerate(lk) if r in pm]
    if not (l_idx.tile > 0).any():
        assert len(p_idx) == len(l_idx) == len(mine)
    else:  # a tiling family: the projector site holds the base view (tile 0) of every image; the LLM also sees the
        # other tiles (and off-grid newlines, e.g. after a OneVision multi-image item's base views)
        on_base = ((l_idx.tile == 0) & (l_idx.row >= 0)).sum()
        assert len(mine) == len(p_idx) == on_base and set(p_idx.tile) == {0}
    order = torch.tensor([pm[lk[k]] for k in mine])
    assert torch.allclose(p_rows[order], l_rows[mine], atol=1e-5)


def test_vision_patches_in_raster_order(family, tmp_path):
    model, _ = family
    items = [lp.Item(id="a", image=rand_image(5, 42, 84), prompt="what is in the image ?")]
    L = model.adapter.n_vision_layers - 1
    store = lp.capture(model, items, sites=[f"vision.resid_post.{L}", "projector.out"],
                       select=["image_patches", "image_mean"], out=tmp_path / "s", progress=False)
    rows, idx = store.get_rows(f"vision.resid_post.{L}", "image_patches")
    proj, pidx = store.get_rows("projector.out", "image_patches")
    assert torch.allclose(store.get(f"vision.resid_post.{L}", "image_mean")[0], rows.mean(0), atol=1e-5)
    H, W = int(idx["row"].max()) + 1, int(idx["col"].max()) + 1
    assert idx[["row", "col"]].to_numpy().tolist() == [[r, c] for r in range(H) for c in range(W)]
    grid = rows.reshape(H, W, -1)
    if model.family == "qwen2_5_vl":
        # regroup the raster grid into merge units and apply the merger: must give projector.out
        m = model.adapter.merge
        units = grid.reshape(H // m, m, W // m, m, -1).permute(0, 2, 1, 3, 4).reshape(-1, rows.shape[-1])
        with torch.no_grad():
            merged = model.hf_model.model.visual.merger(units)
        assert torch.allclose(merged, proj, atol=1e-5)
    else:
        batch = model.prepare([items[0].image], [items[0].prompt])
        _, cache = model.run_with_cache(batch, [f"vision.resid_post.{L}"])  # the raw hook tensor (any backend)
        raw = cache[f"vision.resid_post.{L}"][0]
        ref = raw[raw.shape[0] - H * W:]  # drop CLS (LLaVA's CLIP has one, Gemma3's SigLIP and Pixtral none)
        assert torch.allclose(rows, ref, atol=1e-6)


def test_generated_rows_equal_teacher_forced_states(family, tmp_path):
    """Row t of `generated` is the state that emitted generated token t (KV-cached decoding
    must agree with one full forward over prompt + generated tokens)."""
    model, _ = family
    items = _items(2)
    store = lp.capture(model, items, sites=["llm.resid_post.1", "llm.attn_pattern.1"],
                       select=["generated", "last_prompt"], out=tmp_path / "s", generate=6, batch_size=2,
                       progress=False)
    batch = model.prepare([it.image for it in items], [it.prompt for it in items])
    gen = model.generate(batch, max_new_tokens=6)
    full = gen.as_batch()
    _, cache = model.run_with_cache(full, ["llm.resid_post.1"])
    rows, idx = store.get_rows("llm.resid_post.1", "generated")
    T = gen.prompt_length
    for b, iid in enumerate(store.item_ids):
        m = torch.from_numpy((idx["item_id"] == iid).to_numpy().copy())
        n = len(gen.tokens[b])
        assert int(m.sum()) == n
        assert idx[m.numpy()]["token_id"].tolist() == gen.tokens[b]
        assert idx[m.numpy()]["step"].tolist() == list(range(n))
        assert torch.allclose(rows[m], cache["llm.resid_post.1"][b, T - 1:T - 1 + n], atol=1e-4)
        assert store.item_meta().set_index("item_id").loc[iid, "generated_text"] == gen.text[b]
    # attention mass per role sums to one for every head and step
    att, _ = store.get_rows("llm.attn_pattern.1", "generated")
    assert att.shape[1:] == (model.hf_model.config.text_config.num_attention_heads, len(lp.ROLE_NAMES))
    assert torch.allclose(att.sum(-1), torch.ones(att.shape[:2]), atol=1e-5)
    padded = store.get("llm.resid_post.1", "generated")
    assert padded.shape[:2] == (2, max(len(t) for t in gen.tokens))


def test_store_round_trip_and_manifest(llava, tmp_path):
    items = _items(5)
    items[2].meta = {"split": "random"}
    lp.capture(llava, items, sites=["llm.resid_post.*", "projector.out"],
                       select=["image_mean", "last_prompt"], out=tmp_path / "s", batch_size=2, shard_items=2,
                       progress=False)
    again = lp.ActivationStore(tmp_path / "s")
    assert again.item_ids == [it.id for it in items]
    assert len(again.manifest["shards"]) == 3
    stacked = again.get("llm.resid_post.*", "image_mean")
    assert stacked.shape == (5, 2, llava.hf_model.config.text_config.hidden_size)
    assert torch.equal(stacked[:, 1], again.get("llm.resid_post.1", "image_mean"))
    sub = again.get("llm.resid_post.1", "last_prompt", items=["it3", "it0"])
    full = again.get("llm.resid_post.1", "last_prompt")
    assert torch.equal(sub, full[[3, 0]])
    assert again.get("projector.out", "image_mean", as_numpy=True).shape == (5, full.shape[1])
    got = dict(again.iter_items("llm.resid_post.0", "last_prompt"))
    assert torch.equal(got["it4"][0], again.get("llm.resid_post.0", "last_prompt")[4])
    m = again.manifest
    assert m["model"]["config_hash"] == llava.info()["config_hash"]
    assert {"lvlm_probe", "torch", "transformers", "transformer_lens"} <= set(m["library"])
    assert m["settings"]["sites"][:2] == ["llm.resid_post.0", "llm.resid_post.1"]
    assert m["keys"]["llm.resid_post.0|image_mean"]["row_shape"] == [full.shape[1]]
    assert again.item_meta().set_index("item_id").loc["it2", "item_meta"] == {"split": "random"}
    assert not list((tmp_path / "s").rglob("*.tmp"))
    with pytest.raises(lp.StoreError, match="no"):
        again.get("llm.resid_post.0", "text_mean")


def test_resume_skips_done_and_rejects_other_settings(llava, tmp_path):
    items = _items(4)
    kw = dict(sites=["llm.resid_post.1"], select=["last_prompt"], batch_size=2, progress=False)
    lp.capture(llava, items[:2], out=tmp_path / "s", **kw)
    store = lp.capture(llava, items, out=tmp_path / "s", **kw)
    assert store.item_ids == ["it0", "it1", "it2", "it3"]
    ref = lp.capture(llava, items, out=tmp_path / "r", **kw)
    assert torch.equal(store.get("llm.resid_post.1", "last_prompt"), ref.get("llm.resid_post.1", "last_prompt"))
    with pytest.raises(lp.StoreError, match="different settings"):
        lp.capture(llava, items, sites=["llm.resid_post.0"], select=["last_prompt"], out=tmp_path / "s",
                   batch_size=2, progress=False)


def test_store_dtype(llava, tmp_path):
    store = lp.capture(llava, _items(2), sites=["llm.resid_post.0"], select=["image_mean"], out=tmp_path / "s",
                       dtype="float16", progress=False)
    assert store.get("llm.resid_post.0", "image_mean").dtype == torch.float16


def test_bad_item_is_recorded_and_run_goes_on(llava, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    items = _items(3)
    items.insert(1, lp.Item(id="missing", image=str(tmp_path / "nope.png"), prompt="what ?"))
    items.insert(3, lp.Item(id="corrupt", image=str(bad), prompt="what ?"))
    store = lp.capture(llava, items, sites=["llm.resid_post.1"], select=["image_mean"], out=tmp_path / "s",
                       batch_size=2, progress=False)
    assert store.item_ids == ["it0", "it1", "it2"]
    assert set(store.failed) == {"missing", "corrupt"}
    assert "nope.png" in store.failed["missing"] and "corrupt" in store.failed["corrupt"]


def test_batch_size_does_not_change_values(llava, tmp_path):
    items = _items(4)
    a = lp.capture(llava, items, sites=["llm.resid_post.1"], select=["image_mean", "last_prompt"],
                   out=tmp_path / "a", batch_size=1, progress=False)
    b = lp.capture(llava, items, sites=["llm.resid_post.1"], select=["image_mean", "last_prompt"],
                   out=tmp_path / "b", batch_size=4, progress=False)
    for sel in ("image_mean", "last_prompt"):
        assert torch.allclose(a.get("llm.resid_post.1", sel), b.get("llm.resid_post.1", sel), atol=1e-5)


def test_mixed_batch_helper_consistency(llava):
    b = mixed_batch(llava)
    assert b.item_ids == ["a", "b"]


def test_lp_capture_stays_the_function_after_the_subpackage_is_imported():
    import importlib
    import subprocess
    import sys

    importlib.import_module("lvlm_probe.capture.store")
    assert callable(lp.capture) and lp.capture.__module__ == "lvlm_probe.capture.run"
    code = ("import lvlm_probe as lp\nimport lvlm_probe.capture\nfrom lvlm_probe import capture\n"
            "print(callable(lp.capture), capture is lp.capture)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["True", "True"], r.stderr[-1000:]


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(llava, tmp_path):
    items = [lp.Item(id="a", image=rand_image(0), prompt="what is in the image ?")]
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"name": "my web app"}')
    (mine / "precious.txt").write_text("keep")
    with pytest.raises(lp.StoreError, match="is not an activation store"):
        lp.capture(llava, items, sites=["llm.resid_post.0"], select=["image_mean"], out=mine, overwrite=True,
                   progress=False)
    assert (mine / "precious.txt").read_text() == "keep"
    store = lp.capture(llava, items, sites=["llm.resid_post.0"], select=["image_mean"], out=tmp_path / "s",
                       progress=False)
    again = lp.capture(llava, items, sites=["llm.resid_post.1"], select=["image_mean"], out=store.path,
                       overwrite=True, progress=False)
    assert again.sites() == ["llm.resid_post.1"]


@pytest.mark.parametrize("kw, match", [(dict(batch_size=0), "batch_size must be a positive integer"),
                                       (dict(batch_size=-1), "batch_size must be a positive integer"),
                                       (dict(generate=0), "generate must be None, a positive number"),
                                       (dict(dtype="int8"), "cannot hold activations"),
                                       (dict(dtype="bool"), "cannot hold activations")])
def test_bad_capture_settings_fail_the_call(llava, tmp_path, kw, match):
    items = [lp.Item(id="a", image=rand_image(0), prompt="what is in the image ?")]
    with pytest.raises(lp.InputError, match=match):
        lp.capture(llava, items, sites=["llm.resid_post.0"], select=["image_mean"], out=tmp_path / "s",
                   progress=False, **kw)
    assert not (tmp_path / "s").exists()


def test_one_writer_per_store_and_stale_locks_are_taken_over(llava, tmp_path):
    import json as _json
    import socket
    import subprocess
    import sys

    from lvlm_probe.capture.store import LOCK_FILE, writer_lock

    items = [lp.Item(id="a", image=rand_image(0), prompt="what is in the image ?")]
    out = tmp_path / "s"
    with writer_lock(out):  # another writer holds the store
        with pytest.raises(lp.StoreError, match=rf"being written by pid {__import__('os').getpid()} on "):
            lp.capture(llava, items, sites=["llm.resid_post.0"], select=["image_mean"], out=out, progress=False)
    # a lock left by a killed process on this host (its pid is gone) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(_json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                              "started": "earlier"}))
    store = lp.capture(llava, items, sites=["llm.resid_post.0"], select=["image_mean"], out=out, progress=False)
    assert len(store) == 1 and not (out / LOCK_FILE).exists()  # released after the run
    # a holder on another host cannot be checked: refused, with the way out in the message
    (out / LOCK_FILE).write_text(_json.dumps({"pid": 1, "host": "elsewhere", "started": "t0"}))
    with pytest.raises(lp.StoreError, match=r"pid 1 on elsewhere since t0.*delete"):
        lp.capture(llava, items, sites=["llm.resid_post.0"], select=["image_mean"], out=out, progress=False)
    (out / LOCK_FILE).unlink()
    again = lp.capture(llava, items, sites=["llm.resid_post.1"], select=["image_mean"], out=out, overwrite=True,
                       progress=False)
    assert again.sites() == ["llm.resid_post.1"] and not (out / LOCK_FILE).exists()
