"""patch_attribution (captum) and image_attention: completeness, planted zeros, pixel→patch layout, role masses."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import lvlm_probe as lp
from conftest import mixed_batch, rand_image
from lvlm_probe.attribution import image_attention, image_attention_maps, patch_attribution
from lvlm_probe.attribution._pixels import split_items


def _completeness(res, tol):
    for b, m in enumerate(res.maps):
        total = float(np.nansum(m.numpy()))
        diff = float(res.f_input[b] - res.f_baseline[b])
        assert abs(total - diff) <= tol * max(1.0, abs(diff)), (b, total, diff)
        assert abs(float(res.delta[b])) <= tol * max(1.0, abs(diff))
        assert abs(float(res.delta[b]) - (total - diff)) < 1e-6  # the reported delta is this very gap


@pytest.mark.parametrize("method", ["integrated_gradients", "layer_ig"])
def test_ig_completeness(family, method):
    model, _ = family
    batch = mixed_batch(model, n_images_second=2)
    res = patch_attribution(model, batch, method=method, n_steps=64, internal_batch_size=16, progress=False)
    _completeness(res, 5e-3)
    # maps sit on each item's LLM grids, one map per image
    for b, m in enumerate(res.maps):
        grids = batch.roles.grids[b]
        assert m.shape[0] == len(grids)
        for k, (h, w) in enumerate(grids):
            assert not torch.isnan(m[k, :h, :w]).any()
    # f_input is the target's log-prob at the last position, and the target defaults to the argmax
    logits = model.forward(batch)[:, -1]
    assert res.targets == logits.argmax(-1).tolist()
    ref = logits.log_softmax(-1).gather(1, torch.tensor(res.targets)[:, None]).squeeze(1).double()
    assert torch.allclose(res.f_input, ref, atol=1e-5)


def test_frame_matches_patch_coords(family):
    model, _ = family
    batch = mixed_batch(model, n_images_second=2)
    res = patch_attribution(model, batch, method="saliency", progress=False)
    df = res.frame()
    assert list(df.columns) == ["b", "item_id", "image", "method", "target", "target_id", "row", "col", "value"]
    # b is the row in the batch (an int), item_id the item's id
    assert df.drop_duplicates("b")[["b", "item_id"]].values.tolist() == [[0, "a"], [1, "b"]]
    for b in range(len(batch)):
        r = batch.roles
        grid_tokens = r.image[b] & (r.patch_tiles[b] == 0) & (r.patch_coords[b, :, 1] >= 0)  # tile 0: the map grid
        coords = r.patch_coords[b][grid_tokens].tolist()
        got = df[df["b"] == b][["image", "row", "col"]].to_numpy().tolist()
        assert sorted(map(tuple, got)) == sorted(map(tuple, coords))
    assert (df["value"] >= 0).all()  # saliency is |gradient|
    assert df["target_id"].tolist()[0] == res.targets[0] and res.delta.isnan().all()


def _zero_cell(model, batch, b, cell, value=0.0):
    """The batch with item b's pixels of item-local cell ``cell`` set to ``value`` (any family layout)."""
    items = split_items(model, batch)
    pv = batch.pixel_values.clone()
    start = sum(it.batch.pixel_values.shape[0] for it in items[:b])
    sub = pv[start:start + items[b].batch.pixel_values.shape[0]]
    sub[items[b].cells == cell] = value
    return replace(batch, pixel_values=pv), items


def test_planted_zero_cells(family):
    """Zero input → zero InputXGradient; a baseline equal to the input on a patch → zero IG and zero occlusion."""
    model, _ = family
    batch = mixed_batch(model)
    zb, items = _zero_cell(model, batch, 1, cell=1)
    ixg = patch_attribution(model, zb, method="input_x_gradient", progress=False)
    assert ixg.maps[1][0, 0, 1] == 0.0
    assert (ixg.maps[1][0].abs().sum() > 0) and (ixg.maps[0].abs().sum() > 0)
    # baseline = the input on cell (0, 0) of item 0 and -1 elsewhere: that cell gets exactly zero
    one = mixed_batch(model)
    one_item = split_items(model, one)[0]
    x = one_item.batch.pixel_values
    base = torch.where(one_item.cells == 0, x, torch.full_like(x, -1.0))
    for method in ("integrated_gradients", "occlusion"):
        res = patch_attribution(model, one_item.batch, method=method, baseline=base, n_steps=16, progress=False)
        m = res.maps[0][0]
        # IG multiplies by (input - baseline) = 0: exactly zero; occlusion re-runs an unchanged input in a
        # batch of perturbations: zero up to batched-kernel rounding
        assert abs(float(m[0, 0])) <= (0.0 if method == "integrated_gradients" else 1e-5), method
        assert (m.abs() > 1e-3).sum() > 1, method


def test_pixel_layout_maps_cells(family):
    """A single bright LLM cell in the image lands on that cell of the pixel→patch mask."""
    model, _ = family
    if model.family == "qwen2_5_vl":
        H, W, cell = 56, 84, 28
    elif model.family == "gemma3":  # every image squashed to one square, patches average-pooled to the grid
        H = W = model.image_processor.size["height"]
        cell = H // model.adapter.tokens_per_side
    elif model.family == "mistral3":  # aspect kept, no resize below the longest edge: a non-square image as is
        cell = model.adapter.token_pixels
        H, W = 5 * cell, 8 * cell
    else:
        H = W = (model.image_processor.crop_size or model.image_processor.size)["height"]  # OneVision: no crop_size
        cell = model.adapter.patch_size
    arr = np.zeros((H, W, 3), dtype=np.uint8)
    r, c = 1, 2
    arr[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = 255
    batch = model.prepare([Image.fromarray(arr)], ["what is in the image ?"])
    it = split_items(model, batch)[0]
    h, w = it.grids[0]
    assert (h, w) == (H // cell, W // cell)
    bright = batch.pixel_values > 0  # white > 0 > black after mean/std normalisation
    assert torch.equal(bright, it.cells == r * w + c)


def test_generation_step_target(llava):
    batch = mixed_batch(llava)
    gen = llava.generate(batch, max_new_tokens=4)
    res = patch_attribution(llava, gen, method="input_x_gradient", step=2, progress=False)
    assert res.targets == [t[2] for t in gen.tokens]
    T = gen.prompt_length
    logits = llava.forward(gen.as_batch())[:, T + 1]
    ref = logits.log_softmax(-1).gather(1, torch.tensor(res.targets)[:, None]).squeeze(1).double()
    assert torch.allclose(res.f_input, ref, atol=1e-5)
    word = res.target_tokens[0]
    by_word = patch_attribution(llava, gen, target=[word, None], method="input_x_gradient", step=2, progress=False)
    assert by_word.targets == res.targets


def test_attribution_errors(llava):
    batch = mixed_batch(llava)
    gen = llava.generate(batch, max_new_tokens=2)
    with pytest.raises(lp.InputError, match="unknown attribution method"):
        patch_attribution(llava, batch, method="gradcam")
    with pytest.raises(lp.InputError, match="step=t"):
        patch_attribution(llava, gen, method="saliency")
    with pytest.raises(lp.InputError, match="fewer than 6 tokens"):
        patch_attribution(llava, gen, method="saliency", step=5)
    with pytest.raises(lp.InputError, match="not in the tokenizer"):
        patch_attribution(llava, batch, target="zebra-unicorn", method="saliency")
    with pytest.raises(lp.InputError, match="has no image"):
        patch_attribution(llava, llava.prepare([rand_image(0), None], ["what ?", "what ?"]), method="saliency")


def test_image_attention_masses_sum_to_one(family):
    model, _ = family
    batch = mixed_batch(model, n_images_second=2)
    gen = model.generate(batch, max_new_tokens=5)
    df, maps = image_attention(model, gen, maps=True)
    assert list(df.columns) == ["b", "item_id", "step", "position", "layer", "head", "to_role", "mass"]
    assert df.drop_duplicates("b")[["b", "item_id"]].values.tolist() == [[0, "a"], [1, "b"]]
    assert set(df["to_role"]) == set(lp.ROLE_NAMES)
    sums = df.groupby(["b", "step", "layer", "head"])["mass"].sum()
    assert np.allclose(sums.to_numpy(), 1.0, atol=1e-5)
    for b in range(len(batch)):
        assert df[df["b"] == b]["step"].nunique() == len(gen.tokens[b])
    # generated tokens are never attended at step 0, and step t attends to t generated keys at most
    s0 = df[(df["step"] == 0) & (df["to_role"] == "generated")]
    assert (s0["mass"] == 0).all()
    # per-patch maps add up to the image mass
    img = df[df["to_role"] == "image"].set_index(["b", "step", "layer", "head"])["mass"]
    per = maps.groupby(["b", "step", "layer", "head"])["attention"].sum()
    assert np.allclose(per.reindex(img.index).to_numpy(), img.to_numpy(), atol=1e-5)
    # and they equal the raw pattern read through run_with_cache
    _, cache = model.run_with_cache(gen.as_batch(), ["llm.attn_pattern.1"])
    pat = cache["llm.attn_pattern.1"]
    pos = batch.roles.image[0].nonzero().squeeze(-1)
    q = gen.prompt_length - 1
    got = maps[(maps["b"] == 0) & (maps["step"] == 0) & (maps["layer"] == 1) & (maps["head"] == 0)]
    assert np.allclose(got["attention"].to_numpy(), pat[0, 0, q, pos].numpy(), atol=1e-6)


def test_image_attention_batch_and_maps_helper(llava):
    batch = mixed_batch(llava)
    df = image_attention(llava, batch, layers=[0])
    assert set(df["step"]) == {0} and set(df["layer"]) == {0}
    assert (df["position"] == batch.input_ids.shape[1] - 1).all()
    maps = image_attention_maps(llava, batch, layers=[1])
    assert list(maps.columns) == ["b", "item_id", "step", "layer", "head", "image", "tile", "row", "col", "attention"]
    assert (maps["tile"] == 0).all()  # one tile per image for families without tiles
    with pytest.raises(lp.InputError, match="layer"):
        image_attention(llava, batch, layers=[7])


def test_occlusion_default_baseline_is_the_background(family):
    """Occluding a patch that shows only background with the background colour changes nothing: exactly zero.
    The old dark default (-1) painted a fake object on such patches."""
    model, _ = family
    world = lp.SceneWorld(seed=0)
    scene = world.sample_scene(np.random.default_rng(3))
    batch = model.prepare([world.render(scene)], ["describe the image ."])
    item = split_items(model, batch)[0]
    view = model.adapter.channel_view(item.batch.pixel_values)
    med = view.transpose(0, 1).reshape(view.shape[1], -1).median(dim=1).values
    is_bg = (view == med[None, :, None]).all(dim=1)  # [rows, -1] element positions showing the background
    cells = model.adapter.channel_view(item.cells)[:, 0]
    n = item.n_cells
    bg_cells = [c for c in range(n) if bool(is_bg[cells == c].all())]
    assert len(bg_cells) >= 2, "the scene needs patches of pure background"
    occ = patch_attribution(model, batch, method="occlusion", progress=False)
    dark = patch_attribution(model, batch, method="occlusion", baseline=-1.0, progress=False)
    flat, flat_dark = occ.maps[0].flatten(), dark.maps[0].flatten()
    grid_w = item.grids[0][1]
    # the unchanged image inside captum's batch of perturbations can differ from the single forward by float
    # rounding (batch-size dependent kernels on some CPUs; Pixtral runs the batch's images as one sequence)
    tol = 1e-5
    for c in bg_cells:
        r, col = divmod(c, grid_w)
        assert abs(float(occ.maps[0][0, r, col])) <= tol
    fake = torch.stack([dark.maps[0][0, c // grid_w, c % grid_w] for c in bg_cells]).abs().max()
    assert float(fake) > 100 * tol  # the dark default paints an object where there is none
    assert torch.isfinite(flat).any() and torch.isfinite(flat_dark).any()


def test_unconverged_ig_warns_with_the_steps_to_try(llava):
    batch = mixed_batch(llava)
    with pytest.warns(UserWarning, match=r"integrated gradients did not converge .* Try n_steps=4"):
        patch_attribution(llava, batch, method="integrated_gradients", n_steps=1, progress=False)


def test_patch_attribution_notebook_view(llava):
    batch = mixed_batch(llava)
    res = patch_attribution(llava, batch, method="saliency", progress=False)
    r, h = repr(res), res._repr_html_()
    assert r.startswith("PatchAttribution(saliency, 2 items") and "tensor(" not in r
    assert "item_id" in h and "top patch" in h and "data:image/png;base64," in h and "a" in h
