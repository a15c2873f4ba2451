"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) against HF's own pipeline on a tiny random-init
checkpoint.

The reference inputs come from HF's ``LlavaOnevisionProcessor`` (``conftest.hf_processor``: the directory's image
processor, tokenizer and processor settings; no video processor where torchvision does not import) called with
the images nested per item, and the reference outputs from a fresh HF model with eager attention, never from
inputs lvlm_probe built. The tiny model has the choices that matter: a SigLIP tower (no CLS), a Qwen2 LM with
grouped-query attention, scaled pinpoints, and ``vision_aspect_ratio = "anyres_max_2"``, so in one batch a wide
image gets 4 crops whose 6×8 unpadded grid is **shrunk** to 4×6, a small square one 2 crops and no shrink, and an
item with two images gets only their base views (one newline each), with ``batch_num_images = [1, 2, 1]``.
"""

from __future__ import annotations

import pytest
import torch

import lvlm_probe as lp
from conftest import MIXED_QUESTIONS, hf_eager, hf_pipeline_inputs, rand_image
from _hf_parity import assert_greedy_matches_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [*MIXED_QUESTIONS, "is there a red circle ?"]


def _images():
    """Item a: a wide image (4 crops, shrunk); item b: a tall and a small image (base views only); item c: a small
    square image (2 crops, not shrunk)."""
    return [rand_image(0, 40, 60), [rand_image(1, 90, 30), rand_image(2, 20, 20)], rand_image(3, 20, 20)]


@pytest.fixture(scope="module")
def setup(llava_onevision, llava_onevision_dir):
    """(model, batch from prepare, HF processor output, fresh HF eager model)."""
    imgs = _images()
    batch = llava_onevision.prepare(imgs, QUESTIONS, item_ids=["a", "b", "c"])
    ref = hf_pipeline_inputs(llava_onevision_dir, llava_onevision, imgs, QUESTIONS)
    return llava_onevision, batch, ref, hf_eager(llava_onevision_dir, llava_onevision)


def test_prepare_equals_hf_processor_and_roles(setup):
    model, batch, ref, _ = setup
    assert set(ref) == {"input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images"}
    kw = batch.model_inputs()
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])
    assert torch.equal(batch.pixel_values, ref["pixel_values"])
    assert torch.equal(kw["image_sizes"], ref["image_sizes"])
    assert torch.equal(kw["batch_num_images"], ref["batch_num_images"]) and ref["batch_num_images"].tolist() == [1, 2, 1]
    r = batch.roles
    assert torch.equal(r.image, ref["input_ids"] == model.image_token_id)
    lays = [model.adapter._layout_of(batch.image_inputs, k) for k in range(4)]
    assert [lay.n_crops for lay in lays] == [4, 0, 0, 2]  # the two-image item: base views only
    assert ref["pixel_values"].shape[1] == 5 and (ref["pixel_values"][3, 3:] == 0).all()  # zero crops pad image 3
    assert (ref["pixel_values"][1:3, 1:] == 0).all()  # the multi-image views: no crops
    # the anyres_max shrink triggers for image 0 (6×8 unpadded > 1.1² · 2 base grids) and not for image 3 (4×4);
    # HF's processor counts the shrunk grid: 16 + 4·(6 + 1) = 44 tokens, not 16 + 6·(8 + 1) = 70
    assert lays[0].high == (6, 8) and lays[0].shrunk == (4, 6) and lays[0].shrinks
    assert lays[3].high == lays[3].shrunk == (4, 4) and not lays[3].shrinks
    assert int((ref["input_ids"][0] == model.image_token_id).sum()) == 16 + 4 * 7
    assert r.tile_grids == [[[(4, 4), (4, 6)]], [[(4, 4)], [(4, 4)]], [[(4, 4), (4, 4)]]]
    assert r.grids == [[(4, 4)], [(4, 4), (4, 4)], [(4, 4)]]  # the attribution grid: tile 0 (base view)
    assert batch.n_image_tokens == [16 + 4 * 7, 2 * (16 + 1), 16 + 4 * 5]
    stack = torch.stack([r.mask(n) for n in lp.ROLE_NAMES]).long().sum(0)
    assert torch.equal(stack, batch.attention_mask)  # one role per real token, none on padding
    assert not r.separator.any()  # the newlines are image-token ids: role image, on no grid cell
    for b in range(3):
        coords, tiles = r.patch_coords[b][r.image[b]], r.patch_tiles[b][r.image[b]]
        for i in range(batch.n_images[b]):
            grids = r.tile_grids[b][i]
            mine, mt = coords[coords[:, 0] == i], tiles[coords[:, 0] == i]
            h, w = grids[0]
            base = [[y, x] for y in range(h) for x in range(w)]
            if len(grids) == 1:  # base grid once in raster order, then one newline on tile 0
                assert mt.tolist() == [0] * (h * w + 1)
                assert mine[:, 1:].tolist() == base + [[-1, -1]]
                continue
            rows, cols = grids[1]  # base grid, then each (shrunk) high-res row in raster order + its newline
            assert mt.tolist() == [0] * (h * w) + [1] * (rows * (cols + 1))
            assert mine[mt == 0][:, 1:].tolist() == base
            assert mine[mt == 1][:, 1:].tolist() == [p for y in range(rows)
                                                     for p in [[y, x] for x in range(cols)] + [[-1, -1]]]
        newline = r.off_grid[b]
        assert int(newline.sum()) == sum(g[1][0] if len(g) > 1 else 1 for g in r.tile_grids[b])
        assert (r.patch_coords[b][~r.image[b]] == -1).all() and (r.patch_tiles[b][~r.image[b]] == -1).all()
    tok = model.tokenizer
    assert tok.convert_ids_to_tokens(batch.input_ids[1][r.template[1]].tolist()) == [
        "<|im_start|>", "user", "<|im_end|>", "<|im_start|>", "assistant"]
    assert tok.decode(batch.input_ids[1][r.question[1]].tolist()) == QUESTIONS[1]
    df = r.table(1)
    assert df.groupby("tile").size().to_dict() == {-1: int((~r.image[1]).sum()), 0: 2 * 17}
    sub = r.select([2, 0])
    assert sub.tile_grids == [r.tile_grids[2], r.tile_grids[0]]


def test_logits_match_hf_pipeline(setup):
    model, batch, ref, hf = setup
    with torch.no_grad():
        want = hf(**ref).logits
        via_bridge = model.bridge(batch.input_ids, **batch.model_inputs())
    got = model.forward(batch)
    keep = batch.attention_mask.bool()
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any()  # mixed lengths, left padded
    assert torch.allclose(got[keep], want[keep], atol=1e-4)
    assert torch.allclose(via_bridge[keep], want[keep], atol=1e-4)
    # each item alone or reordered: batch_num_images follows the items, every image keeps its views
    for rows in ([0], [1], [2], [1, 0], [2, 1]):
        sub = batch.select(rows)
        assert sub.model_inputs()["batch_num_images"].tolist() == [batch.n_images[r] for r in rows]
        torch.testing.assert_close(model.forward(sub), got[rows], atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_hf(setup):
    model, batch, ref, hf = setup
    assert_greedy_matches_hf(model, batch, ref, hf, n_items=3)


def test_capture_equals_hf_hidden_states(setup, tmp_path):
    """``llm.resid_post.l`` = ``hidden_states[l + 1]`` below the last layer, ``llm.final_norm`` the last one.
    ``projector.out`` of each image's base view equals the LLM input at its tile-0 tokens; the LLM input at the
    tile-1 tokens of the shrunk image is the bilinear resize of its unpadded crop rows (the shrink, at the
    coordinates ``prepare`` gave); the vision layers come out on the 4×4 base grid (no CLS)."""
    model, batch, ref, hf = setup
    imgs = _images()
    items = [lp.Item(id=i, image=im, prompt=q) for i, im, q in zip("abc", imgs, QUESTIONS)]
    L = model.adapter.n_llm_layers
    Lv = model.adapter.n_vision_layers - 1
    store = lp.capture(model, items, sites=["llm.resid_post.*", "llm.final_norm", f"vision.resid_post.{Lv}"],
                       select=["last_prompt", "image_mean", "image_patches"], out=tmp_path / "s", batch_size=3,
                       progress=False)
    with torch.no_grad():
        hs = hf(**ref, output_hidden_states=True).hidden_states
    image = ref["input_ids"] == model.image_token_id
    for site, h in zip([f"llm.resid_post.{layer}" for layer in range(L - 1)] + ["llm.final_norm"], hs[1:]):
        assert torch.allclose(store.get(site, "last_prompt"), h[:, -1], atol=1e-4), site
        means = torch.stack([h[b][image[b]].mean(0) for b in range(3)])
        assert torch.allclose(store.get(site, "image_mean"), means, atol=1e-4), site
    _, v_idx = store.get_rows(f"vision.resid_post.{Lv}", "image_patches")
    assert v_idx.groupby(["item_id", "image"]).size().to_dict() == {
        ("a", 0): 16, ("b", 0): 16, ("b", 1): 16, ("c", 0): 16}
    one = v_idx[(v_idx["item_id"] == "b") & (v_idx["image"] == 1)]
    assert one[["row", "col"]].to_numpy().tolist() == [[r, c] for r in range(4) for c in range(4)]
    _, cache = model.run_with_cache(batch, ["projector.out", "llm.resid_pre.0", f"vision.resid_post.{Lv}"])
    proj, emb = cache["projector.out"], cache["llm.resid_pre.0"]
    parts = model.adapter.vision_patches(model.adapter.parse_site("projector.out"), proj, batch.image_inputs)
    r, k = batch.roles, 0
    for b in range(3):
        for i in range(batch.n_images[b]):
            base = r.image[b] & (r.patch_coords[b, :, 0] == i) & (r.patch_tiles[b] == 0) & ~r.off_grid[b]
            rc = r.patch_coords[b][base][:, 1:]
            rows, (h, w) = parts[k]
            assert torch.allclose(rows[rc[:, 0] * w + rc[:, 1]], emb[b][base], atol=1e-5)
            k += 1
    # the shrunk tile: crops of image 0 (projector rows 1..4) assembled on the 8×8 canvas grid, unpadded to 6×8
    # (one row off above and below), resized bilinearly to 4×6: what the LLM reads at (tile 1, row, col)
    crops = proj[1:5].reshape(2, 2, 4, 4, -1).permute(4, 0, 2, 1, 3).reshape(-1, 8, 8)[:, 1:7]
    shrunk = torch.nn.functional.interpolate(crops[None], [4, 6], mode="bilinear")[0]
    t1 = r.image[0] & (r.patch_tiles[0] == 1) & ~r.off_grid[0]
    rc = r.patch_coords[0][t1][:, 1:]
    assert torch.allclose(shrunk[:, rc[:, 0], rc[:, 1]].T, emb[0][t1], atol=1e-5)
    newline = model.hf_model.model.image_newline
    assert torch.allclose(emb[r.off_grid].float(), newline.expand(int(r.off_grid.sum()), -1), atol=1e-6)
    raw = cache[f"vision.resid_post.{Lv}"]  # [5 + 1 + 1 + 3, 16, d]: item c's base view is row 7
    vis = model.adapter.vision_patches(model.adapter.parse_site(f"vision.resid_post.{Lv}"), raw, batch.image_inputs)
    assert raw.shape[:2] == (5 + 1 + 1 + 3, 16) and torch.equal(vis[3][0], raw[7]) and torch.equal(vis[2][0], raw[6])


def test_logit_lens_at_last_layer_equals_logits(setup):
    from lvlm_probe.probing import lens_logits

    model, batch, _, _ = setup
    L = model.adapter.n_llm_layers - 1
    logits, cache = model.run_with_cache(batch, [f"llm.resid_post.{L}"])
    keep = batch.attention_mask.bool()
    torch.testing.assert_close(lens_logits(model, cache[f"llm.resid_post.{L}"])[keep], logits[keep].float(),
                               atol=1e-5, rtol=1e-5)


def test_knockout_attention_and_occlusion_maps(setup):
    from lvlm_probe.attribution import image_attention_maps, knockout, patch_attribution

    model, batch, _, _ = setup
    ko = knockout(model, batch, from_roles="image", to_roles=["question", "last"])
    assert len(ko) == 3 and (ko["delta_p"].abs() > 0).all()
    maps = image_attention_maps(model, batch, layers=[0, 1])
    heads = model.hf_model.config.text_config.num_attention_heads
    assert set(maps.groupby(["b", "image", "tile"]).size().index) == {(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 1, 0),
                                                                        (2, 0, 0), (2, 0, 1)}
    for (b, i, tile), grp in maps.groupby(["b", "image", "tile"]):
        grids = batch.roles.tile_grids[b][i]
        rows, cols = grids[tile]
        on = grp[grp["row"] >= 0]
        assert len(on) == 2 * heads * rows * cols  # every cell of the tile once per layer and head
        assert set(on["row"]) == set(range(rows)) and set(on["col"]) == set(range(cols))
        n_newlines = rows if tile == 1 else (1 if len(grids) == 1 else 0)
        assert len(grp) - len(on) == 2 * heads * n_newlines
    occ = patch_attribution(model, batch, method="occlusion", progress=False)
    assert [tuple(m.shape) for m in occ.maps] == [(1, 4, 4), (2, 4, 4), (1, 4, 4)]  # the base grid of each image
    assert all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in occ.maps)


def test_pixel_cells_follow_the_image_in_every_view(llava_onevision):
    """A bright square on one base cell lands on that cell in the base view and in every crop that shows it (the
    shrink moves no pixel); in a multi-image item the base view (padded to a square) is the only view."""
    import numpy as np
    from PIL import Image

    from lvlm_probe.attribution._pixels import split_items

    arr = np.zeros((64, 64, 3), dtype=np.uint8)  # canvas 64×64: four 32-px crops, 8×8 grid shrunk to 5×5
    arr[16:32, 32:48] = 255  # base cell (1, 2) of the 4×4 grid
    batch = llava_onevision.prepare([Image.fromarray(arr), [Image.fromarray(arr), rand_image(1, 20, 40)]],
                                    ["what is in the image ?", "what is in the image ?"])
    assert batch.roles.tile_grids[0] == [[(4, 4), (5, 5)]] and batch.roles.tile_grids[1] == [[(4, 4)], [(4, 4)]]
    items = split_items(llava_onevision, batch)
    pv, cells = batch.pixel_values[0], items[0].cells[0]
    assert items[0].grids == [(4, 4)] and pv.shape[0] == 5
    black = pv[0, :, 0, 0]  # a black pixel, normalised
    assert torch.equal((pv[1:] != black[None, :, None, None]), cells[1:] == 6)  # crops: the square, on cell 6
    grid = (torch.arange(32)[:, None] // 8) * 4 + torch.arange(32)[None, :] // 8
    assert torch.equal(cells[0, 0], grid)
    assert torch.bincount(cells.flatten(), minlength=16).min() > 0  # every cell has pixels
    # the multi-image item: every row (the base view and the zero rows that pad the batch) on the token cells
    for j, c in enumerate(items[1].cells):  # item-local cell ids: image j's cells start at 16·j
        assert (c == grid + 16 * j).all()


def test_placeholders_sizes_and_errors(llava_onevision, llava_onevision_dir):
    ph = llava_onevision.adapter.image_placeholder
    a = llava_onevision.prepare([rand_image(0)], [f"{ph} what is in the image ?"], chat_template=False)
    assert torch.equal(a.roles.image, a.input_ids == llava_onevision.image_token_id)
    assert llava_onevision.tokenizer.decode(a.input_ids[0][a.roles.question[0]].tolist()) == "what is in the image ?"
    with pytest.raises(lp.InputError, match=r"item 'two'.* 2 image placeholder\(s\) but 1 image\(s\)"):
        llava_onevision.prepare([rand_image(0)], [f"{ph} {ph} what ?"], chat_template=False, item_ids=["two"])
    with pytest.raises(lp.InputError, match=r"item 'x'.* 1 image placeholder\(s\) but 2 image\(s\)"):
        llava_onevision.prepare([[rand_image(0), rand_image(1)]], [f"{ph} what ?"], chat_template=False,
                                item_ids=["x"])
    # a 1-pixel image, a 1×200 strip (an empty high-resolution tile: 4 newlines) and a large one that shrinks
    from PIL import Image

    ims = [Image.new("RGB", (1, 1), (200, 10, 10)), Image.new("RGB", (1, 200), (10, 200, 10)), rand_image(4, 90, 30)]
    got = llava_onevision.prepare(ims, ["what ?"] * 3)
    ref = hf_pipeline_inputs(llava_onevision_dir, llava_onevision, ims, ["what ?"] * 3)
    assert torch.equal(got.input_ids, ref["input_ids"]) and torch.equal(got.pixel_values, ref["pixel_values"])
    assert got.roles.tile_grids[1] == [[(4, 4), (4, 0)]] and got.roles.tile_grids[2] == [[(4, 4), (9, 3)]]
    assert llava_onevision.forward(got)[got.attention_mask.bool()].isfinite().all()


def test_make_tiny_cli(tmp_path):
    from lvlm_probe.cli import main
    from lvlm_probe.models.tiny import TINY_BUILDERS, build_tiny_llava_onevision

    assert TINY_BUILDERS["llava_onevision"] is build_tiny_llava_onevision
    assert main(["make-tiny", str(tmp_path / "n"), "--family", "llava_onevision"]) in (0, None)
    model = lp.load(tmp_path / "n", device="cpu")
    assert model.family == "llava_onevision" and model.adapter.anyres_max == 2
    from conftest import hf_processor

    proc = hf_processor(tmp_path / "n", model)
    assert type(proc).__name__ == "LlavaOnevisionProcessor" and proc.vision_aspect_ratio == "anyres_max_2"
    assert proc.num_image_tokens == 16 and len(proc.image_processor.image_grid_pinpoints) == 5
    cfg = model.hf_model.config
    assert cfg.text_config.num_key_value_heads < cfg.text_config.num_attention_heads
    assert cfg.vision_config.model_type == "siglip_vision_model" and cfg.text_config.model_type == "qwen2"


def test_default_strategy_is_refused(llava_onevision):
    ad = llava_onevision.adapter
    ad.hf_config.vision_feature_select_strategy = "default"
    try:
        with pytest.raises(lp.UnsupportedModelError, match="supports 'full'"):
            ad.process_images([rand_image(0)])
        with pytest.raises(lp.InputError, match="supports 'full'"):  # prepare names the item
            llava_onevision.prepare([rand_image(0)], ["what ?"])
    finally:
        ad.hf_config.vision_feature_select_strategy = "full"
