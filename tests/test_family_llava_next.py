"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``) against HF's own pipeline on a tiny random-init checkpoint.

The reference inputs come from ``AutoProcessor.from_pretrained(dir)(images=..., text=...)`` and the reference
outputs from a fresh HF model with eager attention, never from inputs lvlm_probe built. The tiny model has the
choices that matter: grouped-query attention, any-resolution tiles from scaled pinpoints, and images whose sizes
and aspect ratios give 4, 3 and 2 crops (so the batch's ``pixel_values`` carry zero crops that pad the smaller
images), unpadded high-resolution grids of three shapes, and an item with two images.
"""

from __future__ import annotations

import pytest
import torch

import lvlm_probe as lp
from conftest import MIXED_QUESTIONS, rand_image
from _hf_parity import assert_greedy_matches_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images():
    """Item a: one wide image (4 crops); item b: a tall image (3 crops) and a small square one (2 crops)."""
    return [rand_image(0, 40, 60), [rand_image(1, 90, 30), rand_image(2, 20, 20)]]


def hf_llava_next_inputs(model_dir, images, questions):
    """HF's pipeline: the processor's chat template renders the text, ``processor(images, text)`` expands each
    ``<image>`` into base + unpadded tiles + newlines and returns ``pixel_values`` and ``image_sizes``."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    nested = [im if isinstance(im, list) else [im] for im in images]
    texts = [proc.apply_chat_template([{"role": "user", "content": [*({"type": "image"} for _ in ims),
                                                                    {"type": "text", "text": q}]}],
                                      add_generation_prompt=True, tokenize=False)
             for ims, q in zip(nested, questions)]
    return proc(images=nested, text=texts, return_tensors="pt", padding=True)


@pytest.fixture(scope="module")
def setup(llava_next, llava_next_dir):
    """(model, batch from prepare, HF processor output, fresh HF eager model)."""
    imgs = _images()
    batch = llava_next.prepare(imgs, MIXED_QUESTIONS, item_ids=["a", "b"])
    ref = hf_llava_next_inputs(llava_next_dir, imgs, MIXED_QUESTIONS)
    hf = type(llava_next.hf_model).from_pretrained(llava_next_dir, attn_implementation="eager").eval()
    return llava_next, batch, ref, hf


def test_prepare_equals_hf_processor_and_roles(setup):
    model, batch, ref, _ = setup
    assert set(ref) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])
    assert torch.equal(batch.pixel_values, ref["pixel_values"])
    assert torch.equal(batch.model_inputs()["image_sizes"], ref["image_sizes"])
    # roles.image is exactly where the processor put <image> ids: base grid, high-resolution grid and newlines
    r = batch.roles
    assert torch.equal(r.image, ref["input_ids"] == model.image_token_id)
    lays = [model.adapter.layout(s) for s in ref["image_sizes"].tolist()]
    assert [lay.n_crops for lay in lays] == [4, 3, 2]  # different tile counts in one batch
    assert ref["pixel_values"].shape[1] == 5 and (ref["pixel_values"][2, 3:] == 0).all()  # zero crops pad image 2
    assert r.tile_grids == [[[(4, 4), (6, 8)]], [[(4, 4), (12, 4)], [(4, 4), (4, 4)]]]
    assert r.grids == [[(4, 4)], [(4, 4), (4, 4)]]  # the attribution grid: tile 0 (base view)
    assert batch.n_image_tokens == [16 + 6 * 9, 16 + 12 * 5 + 16 + 4 * 5]
    stack = torch.stack([r.mask(n) for n in lp.ROLE_NAMES]).long().sum(0)
    assert torch.equal(stack, batch.attention_mask)  # one role per real token, none on padding
    assert not r.separator.any()  # the newlines are image-token ids: role image, on no grid cell
    for b in range(2):
        coords, tiles = r.patch_coords[b][r.image[b]], r.patch_tiles[b][r.image[b]]
        for i in range(batch.n_images[b]):
            (h, w), (rows, cols) = r.tile_grids[b][i]
            mine, mt = coords[coords[:, 0] == i], tiles[coords[:, 0] == i]
            # base grid once in raster order, then each high-res row in raster order followed by its newline
            assert mt.tolist() == [0] * (h * w) + [1] * (rows * (cols + 1))
            assert mine[mt == 0][:, 1:].tolist() == [[y, x] for y in range(h) for x in range(w)]
            want = [p for y in range(rows) for p in [[y, x] for x in range(cols)] + [[-1, -1]]]
            assert mine[mt == 1][:, 1:].tolist() == want
        newline = r.off_grid[b]
        assert int(newline.sum()) == sum(rows for _, (rows, _) in r.tile_grids[b])
        assert (r.patch_coords[b][~r.image[b]] == -1).all() and (r.patch_tiles[b][~r.image[b]] == -1).all()
    tok = model.tokenizer
    assert tok.convert_ids_to_tokens(batch.input_ids[1][r.template[1]].tolist()) == ["<s>", "[INST]", "[/INST]"]
    assert tok.decode(batch.input_ids[1][r.question[1]].tolist()) == MIXED_QUESTIONS[1]
    df = r.table(0)
    assert list(df.columns) == ["position", "role", "image", "tile", "row", "col"]
    assert df.groupby("tile").size().to_dict() == {-1: int((~r.image[0]).sum()), 0: 16, 1: 6 * 9}
    # slicing keeps tiles with their items; a generation extends them with -1
    sub = r.select([1])
    assert sub.tile_grids == r.tile_grids[1:] and torch.equal(sub.patch_tiles, r.patch_tiles[1:])
    assert r.truncate(5).patch_tiles.shape == (2, 5)
    ext = r.extend(3, torch.ones(2, 3, dtype=torch.bool))
    assert (ext.patch_tiles[:, -3:] == -1).all() and ext.tile_grids == r.tile_grids


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
    # each item alone (its pixel rows keep the batch's zero crops): the same logits
    for rows in ([0], [1], [1, 0]):
        torch.testing.assert_close(model.forward(batch.select(rows)), got[rows], atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_hf(setup):
    model, batch, ref, hf = setup
    assert_greedy_matches_hf(model, batch, ref, hf, n_items=2)


def test_capture_equals_hf_hidden_states(setup, tmp_path):
    """``llm.resid_post.l`` = ``hidden_states[l + 1]`` below the last layer; HF reports the last one after the
    final norm (``llm.final_norm``). ``projector.out`` of each image (its base view) equals the LLM's input at its
    tile-0 tokens, and the vision layers come out on the base view's 4×4 patch grid (CLS dropped)."""
    model, batch, ref, hf = setup
    imgs = _images()
    items = [lp.Item(id=i, image=im, prompt=q) for i, im, q in zip("ab", imgs, MIXED_QUESTIONS)]
    L = model.adapter.n_llm_layers
    Lv = model.adapter.n_vision_layers - 1
    store = lp.capture(model, items, sites=["llm.resid_post.*", "llm.final_norm", f"vision.resid_post.{Lv}"],
                       select=["last_prompt", "image_mean", "image_patches"], out=tmp_path / "s", batch_size=2,
                       progress=False)
    with torch.no_grad():
        hs = hf(**ref, output_hidden_states=True).hidden_states
    image = ref["input_ids"] == model.image_token_id
    for site, h in zip([f"llm.resid_post.{layer}" for layer in range(L - 1)] + ["llm.final_norm"], hs[1:]):
        assert torch.allclose(store.get(site, "last_prompt"), h[:, -1], atol=1e-4), site
        means = torch.stack([h[b][image[b]].mean(0) for b in range(2)])
        assert torch.allclose(store.get(site, "image_mean"), means, atol=1e-4), site
    _, v_idx = store.get_rows(f"vision.resid_post.{Lv}", "image_patches")
    assert v_idx.groupby(["item_id", "image"]).size().to_dict() == {("a", 0): 16, ("b", 0): 16, ("b", 1): 16}
    one = v_idx[(v_idx["item_id"] == "b") & (v_idx["image"] == 1)]
    assert one[["row", "col"]].to_numpy().tolist() == [[r, c] for r in range(4) for c in range(4)]
    _, cache = model.run_with_cache(batch, ["projector.out", "llm.resid_pre.0", f"vision.resid_post.{Lv}"])
    parts = model.adapter.vision_patches(model.adapter.parse_site("projector.out"), cache["projector.out"],
                                         batch.image_inputs)
    r, k = batch.roles, 0
    for b in range(2):
        for i in range(batch.n_images[b]):
            base = r.image[b] & (r.patch_coords[b, :, 0] == i) & (r.patch_tiles[b] == 0)
            rc = r.patch_coords[b][base][:, 1:]
            rows, (h, w) = parts[k]
            assert torch.allclose(rows[rc[:, 0] * w + rc[:, 1]], cache["llm.resid_pre.0"][b][base], atol=1e-5)
            k += 1
    raw = cache[f"vision.resid_post.{Lv}"]  # [Σ crops + 1, 1 + 16, d]: image 2's base view is row 5 + 4 = 9
    vis = model.adapter.vision_patches(model.adapter.parse_site(f"vision.resid_post.{Lv}"), raw, batch.image_inputs)
    assert raw.shape[0] == 5 + 4 + 3 and torch.equal(vis[2][0], raw[9, 1:])


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
    assert len(ko) == 2 and (ko["delta_p"].abs() > 0).all()
    maps = image_attention_maps(model, batch, layers=[0, 1])
    heads = model.hf_model.config.text_config.num_attention_heads
    for (b, i, tile), grp in maps.groupby(["b", "image", "tile"]):
        rows, cols = batch.roles.tile_grids[b][i][tile]
        on = grp[grp["row"] >= 0]
        assert len(on) == 2 * heads * rows * cols  # every cell of the tile once per layer and head
        assert set(on["row"]) == set(range(rows)) and set(on["col"]) == set(range(cols))
        assert len(grp) - len(on) == (2 * heads * rows if tile == 1 else 0)  # the newline tokens
    occ = patch_attribution(model, batch, method="occlusion", progress=False)
    assert [tuple(m.shape) for m in occ.maps] == [(1, 4, 4), (2, 4, 4)]  # the base grid of each image
    assert all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in occ.maps)


def test_pixel_cells_follow_the_image_in_both_views(llava_next):
    """A bright square on one base cell lands on that cell in the base view and in every crop that shows it."""
    import numpy as np
    from PIL import Image

    from lvlm_probe.attribution._pixels import split_items

    arr = np.zeros((64, 64, 3), dtype=np.uint8)  # canvas 64×64: four 32-px crops, no canvas padding
    arr[16:32, 32:48] = 255  # base cell (1, 2) of the 4×4 grid
    batch = llava_next.prepare([Image.fromarray(arr)], ["what is in the image ?"])
    it = split_items(llava_next, batch)[0]
    pv, cells = batch.pixel_values[0], it.cells[0]
    assert it.grids == [(4, 4)] and pv.shape[0] == 5
    assert torch.equal(pv[1:] > 0, cells[1:] == 6)  # crops: exactly the square's pixels, on cell 6
    assert torch.equal(cells[0, 0], (torch.arange(32)[:, None] // 8) * 4 + torch.arange(32)[None, :] // 8)
    assert torch.bincount(cells.flatten(), minlength=16).min() > 0  # every cell has pixels


def test_placeholders_sizes_and_errors(llava_next, llava_next_dir):
    ph = llava_next.adapter.image_placeholder
    a = llava_next.prepare([rand_image(0)], [f"{ph}\nwhat is in the image ?"], chat_template=False)
    assert torch.equal(a.roles.image, a.input_ids == llava_next.image_token_id)
    assert llava_next.tokenizer.decode(a.input_ids[0][a.roles.question[0]].tolist()) == "what is in the image ?"
    with pytest.raises(lp.InputError, match=r"item 'two'.* 2 image placeholder\(s\) but 1 image\(s\)"):
        llava_next.prepare([rand_image(0)], [f"{ph} {ph} what ?"], chat_template=False, item_ids=["two"])
    # no minimum image size: a 1-pixel image and a 1×200 strip (an empty high-resolution tile of 4 newlines)
    # expand exactly as HF's processor expands them
    from PIL import Image

    ims = [Image.new("RGB", (1, 1), (200, 10, 10)), Image.new("RGB", (1, 200), (10, 200, 10))]
    got = llava_next.prepare([ims[0], ims[1]], ["what ?", "what ?"])
    ref = hf_llava_next_inputs(llava_next_dir, ims, ["what ?", "what ?"])
    assert torch.equal(got.input_ids, ref["input_ids"]) and got.roles.tile_grids[1] == [[(4, 4), (4, 0)]]
    torch.testing.assert_close(llava_next.forward(got)[got.attention_mask.bool()].shape[0],
                               int(got.attention_mask.sum()))


def test_make_tiny_cli(tmp_path):
    from transformers import AutoProcessor

    from lvlm_probe.cli import main
    from lvlm_probe.models.tiny import TINY_BUILDERS, build_tiny_llava_next

    assert TINY_BUILDERS["llava_next"] is build_tiny_llava_next
    assert main(["make-tiny", str(tmp_path / "n"), "--family", "llava_next"]) in (0, None)
    proc = AutoProcessor.from_pretrained(tmp_path / "n")
    assert type(proc).__name__ == "LlavaNextProcessor" and len(proc.image_processor.image_grid_pinpoints) == 5
    cfg = lp.load(tmp_path / "n", device="cpu").hf_model.config.text_config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
