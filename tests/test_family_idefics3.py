"""Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``) against HF's own pipeline on a tiny random-init checkpoint.

The reference inputs come from ``AutoProcessor.from_pretrained(dir)(images=..., text=...)`` and the reference
outputs from a fresh HF model with eager attention, never from inputs lvlm_probe built. The tiny model has the
choices that matter: grouped-query attention, a pixel-shuffle connector (8×8 patches → 4×4 tokens per view),
images upsampled to a 96-px longest edge and cut into 32-px crops plus a global view, with sizes and aspect
ratios that give 2×3, 3×1 and 3×3 crops in one batch (so HF pads the items with all-zero views), and an item
with two images.
"""

from __future__ import annotations

import pytest
import torch

import lvlm_probe as lp
from conftest import MIXED_QUESTIONS, rand_image
from _hf_parity import assert_greedy_matches_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

G = 4  # tokens per side of every view: 32 px / 4 px patches / scale factor 2


def _images():
    """Item a: one wide image (2×3 crops); item b: a tall image (3×1 crops) and a small square one (3×3 crops)."""
    return [rand_image(0, 40, 60), [rand_image(1, 90, 30), rand_image(2, 20, 20)]]


def hf_idefics3_inputs(model_dir, images, questions, **kw):
    """HF's pipeline: the processor's chat template renders the text (it writes BOS itself, so the text is tokenised
    without adding another, as ``processor.apply_chat_template(..., tokenize=True)`` does) and
    ``processor(images, text)`` expands each ``<image>`` into crops + global view with their markers."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    nested = [im if isinstance(im, list) else [im] for im in images]
    texts = [proc.apply_chat_template([{"role": "user", "content": [*({"type": "image"} for _ in ims),
                                                                    {"type": "text", "text": q}]}],
                                      add_generation_prompt=True, tokenize=False)
             for ims, q in zip(nested, questions)]
    assert all(t.startswith(proc.tokenizer.bos_token) for t in texts)
    return proc(images=nested, text=texts, return_tensors="pt", padding=True, add_special_tokens=False, **kw)


@pytest.fixture(scope="module")
def setup(idefics3, idefics3_dir):
    """(model, batch from prepare, HF processor output, fresh HF eager model)."""
    imgs = _images()
    batch = idefics3.prepare(imgs, MIXED_QUESTIONS, item_ids=["a", "b"])
    ref = hf_idefics3_inputs(idefics3_dir, imgs, MIXED_QUESTIONS)
    hf = type(idefics3.hf_model).from_pretrained(idefics3_dir, attn_implementation="eager").eval()
    return idefics3, batch, ref, hf


def test_prepare_equals_hf_processor(setup, idefics3_dir):
    model, batch, ref, _ = setup
    assert set(ref) == {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"}
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])
    # one view per row, each image's crops then its global view: 7 + 4 + 10 views
    assert tuple(batch.pixel_values.shape) == (21, 1, 3, 32, 32)
    assert batch.image_inputs.pixel_rows == [(0, 7), (7, 11), (11, 21)]
    # HF's [items, max views, ...] layout with zero views padding item a, and its all-ones mask on every real view
    hf_layout = model.adapter.processor_layout(batch.pixel_values, batch.n_images, batch.image_inputs)
    assert tuple(ref["pixel_values"].shape) == (2, 14, 3, 32, 32)
    assert torch.equal(hf_layout["pixel_values"], ref["pixel_values"])
    assert torch.equal(hf_layout["pixel_attention_mask"], ref["pixel_attention_mask"])
    assert (ref["pixel_values"][0, 7:] == 0).all() and not ref["pixel_attention_mask"][0, 7:].any()
    assert "pixel_attention_mask" not in batch.model_inputs()  # the model's default mask is the same all-ones mask


def test_roles_tiles_and_separators(setup, idefics3_dir):
    model, batch, ref, _ = setup
    r, tok = batch.roles, model.tokenizer
    assert torch.equal(r.image, ref["input_ids"] == model.image_token_id)
    # separator = exactly what HF's processor inserted for the images (its own mm_token_type_ids mark each image's
    # whole replacement text) that is not an <image> token
    mm = hf_idefics3_inputs(idefics3_dir, _images(), MIXED_QUESTIONS, return_mm_token_type_ids=True)
    inserted = mm["mm_token_type_ids"].bool() & ~r.image
    assert torch.equal(r.separator, inserted)
    stack = torch.stack([r.mask(n) for n in lp.ROLE_NAMES]).long().sum(0)
    assert torch.equal(stack, batch.attention_mask)  # one role per real token, none on padding
    sep_a = tok.convert_ids_to_tokens(batch.input_ids[0][r.separator[0]].tolist())
    crops = [t for q in range(6) for t in ("<fake_token_around_image>", f"<row_{q // 3 + 1}_col_{q % 3 + 1}>")]
    assert sep_a == crops[:6] + ["\n"] + crops[6:] + ["\n", "\n", "<fake_token_around_image>", "<global-img>",
                                                      "<fake_token_around_image>"]
    assert tok.convert_ids_to_tokens(batch.input_ids[1][r.template[1]].tolist()) == [
        "<|im_start|>", "User:", "<end_of_utterance>", "\n", "Assistant:"]  # the template's newline is template
    assert tok.decode(batch.input_ids[1][r.question[1]].tolist()) == MIXED_QUESTIONS[1]
    # tiles: tile 0 = global view (last in the sequence), tiles 1..n = crops in raster order, each a 4×4 grid
    n_views = [[7], [4, 10]]
    assert r.tile_grids == [[[(G, G)] * n for n in item] for item in n_views]
    assert r.grids == [[(G, G)], [(G, G), (G, G)]]  # the attribution grid: tile 0's
    assert batch.n_image_tokens == [7 * G * G, 14 * G * G]
    assert not r.off_grid.any()
    cells = [[y, x] for y in range(G) for x in range(G)]
    for b in range(2):
        coords, tiles = r.patch_coords[b][r.image[b]], r.patch_tiles[b][r.image[b]]
        for i, n in enumerate(n_views[b]):
            mine, mt = coords[coords[:, 0] == i], tiles[coords[:, 0] == i]
            assert mt.tolist() == [t for t in [*range(1, n), 0] for _ in range(G * G)]  # sequence order
            for t in range(n):  # each tile's grid covered once, in raster order
                assert mine[mt == t][:, 1:].tolist() == cells
        assert (r.patch_coords[b][~r.image[b]] == -1).all() and (r.patch_tiles[b][~r.image[b]] == -1).all()
    df = r.table(0)
    assert df.groupby("tile").size().to_dict() == {-1: int((~r.image[0]).sum()), **{t: G * G for t in range(7)}}
    assert df[df.role == "separator"].shape[0] == 18
    # slicing keeps views, tiles and crops with their items
    sub = batch.select([1])
    assert sub.image_inputs.pixel_rows == [(0, 4), (4, 14)] and sub.image_inputs.image_info == [
        {"crops": (3, 1)}, {"crops": (3, 3)}]
    assert torch.equal(sub.pixel_values, batch.pixel_values[7:])
    assert sub.roles.tile_grids == r.tile_grids[1:] and torch.equal(sub.roles.separator, r.separator[1:])


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
    for rows in ([0], [1], [1, 0]):  # each item alone, and reordered: the same logits
        torch.testing.assert_close(model.forward(batch.select(rows)), got[rows], atol=1e-5, rtol=1e-5)


def test_greedy_generation_matches_hf(setup):
    model, batch, ref, hf = setup
    assert_greedy_matches_hf(model, batch, ref, hf, n_items=2)


def test_capture_equals_hf_hidden_states(setup, tmp_path):
    """``llm.resid_post.l`` = ``hidden_states[l + 1]`` below the last layer; HF reports the last one after the
    final norm (``llm.final_norm``). ``projector.out`` of every view equals the LLM's input at that view's tokens
    (crops in tiles 1..n, the global view in tile 0), and the vision layers come out on the global view's 8×8
    patch grid."""
    model, batch, ref, hf = setup
    items = [lp.Item(id=i, image=im, prompt=q) for i, im, q in zip("ab", _images(), MIXED_QUESTIONS)]
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
    assert v_idx.groupby(["item_id", "image"]).size().to_dict() == {("a", 0): 64, ("b", 0): 64, ("b", 1): 64}
    one = v_idx[(v_idx["item_id"] == "b") & (v_idx["image"] == 1)]
    assert one[["row", "col"]].to_numpy().tolist() == [[y, x] for y in range(8) for x in range(8)]
    _, cache = model.run_with_cache(batch, ["projector.out", "llm.resid_pre.0", f"vision.resid_post.{Lv}"])
    proj, r = cache["projector.out"], batch.roles
    assert tuple(proj.shape[:2]) == (21, G * G)
    parts = model.adapter.vision_patches(model.adapter.parse_site("projector.out"), proj, batch.image_inputs)
    k = 0
    for b in range(2):
        for i in range(batch.n_images[b]):
            a, z = batch.image_inputs.pixel_rows[k]
            for t in range(z - a):
                m = r.image[b] & (r.patch_coords[b, :, 0] == i) & (r.patch_tiles[b] == t)
                rc = r.patch_coords[b][m][:, 1:]
                view = proj[z - 1] if t == 0 else proj[a + t - 1]  # tile 0: the last view; tile t: view t - 1
                assert torch.allclose(view[rc[:, 0] * G + rc[:, 1]], cache["llm.resid_pre.0"][b][m], atol=1e-5)
            assert torch.equal(parts[k][0], proj[z - 1]) and parts[k][1] == (G, G)
            k += 1
    vis = model.adapter.vision_patches(model.adapter.parse_site(f"vision.resid_post.{Lv}"),
                                       cache[f"vision.resid_post.{Lv}"], batch.image_inputs)
    assert torch.equal(vis[2][0], cache[f"vision.resid_post.{Lv}"][20]) and vis[2][1] == (8, 8)


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
    assert maps.groupby(["b", "image"])["tile"].nunique().to_dict() == {(0, 0): 7, (1, 0): 4, (1, 1): 10}
    for (b, i, tile), grp in maps.groupby(["b", "image", "tile"]):
        rows, cols = batch.roles.tile_grids[b][i][tile]
        assert len(grp) == 2 * heads * rows * cols  # every cell of the tile once per layer and head
        assert set(grp["row"]) == set(range(rows)) and set(grp["col"]) == set(range(cols))
    occ = patch_attribution(model, batch, method="occlusion", progress=False)
    assert [tuple(m.shape) for m in occ.maps] == [(1, G, G), (2, G, G)]  # the global grid of each image
    assert all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in occ.maps)


def test_layer_ig_complete_over_every_view(setup):
    """``grid_sums`` folds every view's projector rows onto the global grid: the maps add up to the output change."""
    from lvlm_probe.attribution import patch_attribution

    model, batch, _, _ = setup
    res = patch_attribution(model, batch, method="layer_ig", n_steps=32, internal_batch_size=8, progress=False)
    for b, m in enumerate(res.maps):
        diff = float(res.f_input[b] - res.f_baseline[b])
        assert abs(float(m.nansum()) - diff) <= 5e-3 * max(1.0, abs(diff))


def test_pixel_cells_follow_the_image_in_every_view(idefics3):
    """A bright square on one global cell lands on that cell in every crop that shows it."""
    import numpy as np
    from PIL import Image

    from lvlm_probe.attribution._pixels import split_items

    arr = np.zeros((96, 96, 3), dtype=np.uint8)  # 96 px: no resize, 3×3 crops of 32 px; a global cell is 24 px
    arr[24:48, 48:72] = 255  # global cell (1, 2)
    batch = idefics3.prepare([Image.fromarray(arr)], ["what is in the image ?"])
    it = split_items(idefics3, batch)[0]
    pv, cells = batch.pixel_values, it.cells
    assert it.grids == [(G, G)] and pv.shape[0] == 10
    assert torch.equal(pv[:9] > 0, cells[:9] == 1 * G + 2)  # crops: exactly the square's pixels, on cell 6
    ys = torch.arange(32) // 8
    assert torch.equal(cells[9, 0], (ys[:, None] * G + ys[None, :]).expand(3, 32, 32))  # global view
    assert torch.bincount(cells.flatten(), minlength=G * G).min() > 0  # every cell has pixels


def test_placeholders_sizes_and_errors(idefics3, idefics3_dir):
    ph = idefics3.adapter.image_placeholder
    a = idefics3.prepare([rand_image(0)], [f"{ph}what is in the image ?"], chat_template=False)
    assert torch.equal(a.roles.image, a.input_ids == idefics3.image_token_id)
    assert idefics3.tokenizer.decode(a.input_ids[0][a.roles.question[0]].tolist()) == "what is in the image ?"
    # 40×48 px is upsampled to 80×96 and stretched to 96×96: 3×3 crops (marker pairs), a newline after each crop
    # row and one before the global view, <fake_token_around_image><global-img> … <fake_token_around_image>
    assert int(a.roles.separator.sum()) == 2 * 9 + 4 + 3
    with pytest.raises(lp.InputError, match=r"item 'two'.* 2 image placeholder\(s\) but 1 image\(s\)"):
        idefics3.prepare([rand_image(0)], [f"{ph} {ph} what ?"], chat_template=False, item_ids=["two"])
    # no minimum image size: HF upsamples every image to the longest edge; a 1-pixel image (3×3 crops) and a
    # 1×200 strip (1×3 crops) expand exactly as HF's processor expands them, and run
    from PIL import Image

    ims = [Image.new("RGB", (1, 1), (200, 10, 10)), Image.new("RGB", (200, 1), (10, 200, 10))]
    got = idefics3.prepare(ims, ["what ?", "what ?"])
    ref = hf_idefics3_inputs(idefics3_dir, ims, ["what ?", "what ?"])
    assert torch.equal(got.input_ids, ref["input_ids"])
    assert got.image_inputs.image_info == [{"crops": (3, 3)}, {"crops": (1, 3)}]
    assert torch.isfinite(idefics3.forward(got)[got.attention_mask.bool()]).all()


def test_make_tiny_cli(tmp_path):
    from transformers import AutoProcessor

    from lvlm_probe.cli import main
    from lvlm_probe.models.tiny import TINY_BUILDERS, build_tiny_idefics3

    assert TINY_BUILDERS["idefics3"] is build_tiny_idefics3
    assert main(["make-tiny", str(tmp_path / "i"), "--family", "idefics3"]) in (0, None)
    proc = AutoProcessor.from_pretrained(tmp_path / "i")
    assert type(proc).__name__ == "Idefics3Processor" and type(proc.image_processor).__name__ == "Idefics3ImageProcessorPil"
    assert proc.image_seq_len == G * G and proc.image_processor.size["longest_edge"] == 3 * 32
    cfg = lp.load(tmp_path / "i", device="cpu").hf_model.config.text_config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
