"""Mistral3 (``Mistral3ForConditionalGeneration``) against HF's own pipeline on a tiny random-init checkpoint.

The reference inputs come from HF's ``PixtralProcessor`` (``conftest.hf_processor``: ``AutoProcessor`` where
torchvision imports, else the same class with its one torchvision-only import replaced) and the reference outputs
from a fresh HF model with eager attention, never from inputs lvlm_probe built. The tiny model has the non-default
choices that matter: grouped-query attention, non-square images that keep their aspect ratio (40 × 60 → a 5 × 8
token grid), images of different sizes padded into one pixel tensor, an item with two images, and a 2 × 2 patch
merger. TransformerLens 4.3 wraps the Pixtral tower opaquely, so the family runs on the forward-hook fallback by
default; the TransformerBridge is checked against it at every site it offers.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import lvlm_probe as lp
from conftest import MIXED_QUESTIONS, hf_pipeline_inputs, rand_image
from _hf_parity import assert_greedy_matches_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images():
    """Item a: one 40 × 60 (h × w) image; item b: two images of other sizes."""
    return [rand_image(0, 40, 60), [rand_image(1, 50, 50), rand_image(2, 64, 50)]]


@pytest.fixture(scope="module")
def setup(mistral3, mistral3_dir):
    """(model, batch from prepare, HF processor output, fresh HF eager model)."""
    imgs = _images()
    batch = mistral3.prepare(imgs, MIXED_QUESTIONS, item_ids=["a", "b"])
    ref = hf_pipeline_inputs(mistral3_dir, mistral3, imgs, MIXED_QUESTIONS)
    hf = type(mistral3.hf_model).from_pretrained(mistral3_dir, attn_implementation="eager").eval()
    return mistral3, batch, ref, hf


@pytest.fixture(scope="module")
def bridged(mistral3_dir):
    return lp.load(mistral3_dir, device="cpu", backend="bridge")


def test_prepare_equals_hf_processor_and_roles(setup):
    model, batch, ref, _ = setup
    assert set(ref) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(getattr(batch, key), ref[key]), key
    assert torch.equal(batch.extras["image_sizes"], ref["image_sizes"])
    assert ref["image_sizes"].tolist() == [[40, 64], [56, 56], [64, 56]]  # aspect kept, sides rounded up to 8 px
    tok = model.tokenizer
    brk, end = tok.convert_tokens_to_ids(["[IMG_BREAK]", "[IMG_END]"])
    # roles.image is exactly the positions the processor filled with [IMG]; its row ends are separators
    assert torch.equal(batch.roles.image, ref["input_ids"] == model.image_token_id)
    assert torch.equal(batch.roles.separator, (ref["input_ids"] == brk) | (ref["input_ids"] == end))
    assert batch.roles.grids == [[(5, 8)], [(7, 7), (8, 7)]]
    assert batch.n_image_tokens == [40, 49 + 56]
    stack = torch.stack([batch.roles.mask(n) for n in lp.ROLE_NAMES]).long().sum(0)
    assert torch.equal(stack, batch.attention_mask)  # one role per real token, none on padding
    for b in range(2):
        coords = batch.roles.patch_coords[b][batch.roles.image[b]]
        for i, (h, w) in enumerate(batch.roles.grids[b]):  # each image's grid once, in raster order
            assert coords[coords[:, 0] == i][:, 1:].tolist() == [[r, c] for r in range(h) for c in range(w)]
        assert (batch.roles.patch_coords[b][~batch.roles.image[b]] == -1).all()
    seps = tok.convert_ids_to_tokens(batch.input_ids[1][batch.roles.separator[1]].tolist())
    assert seps == ["[IMG_BREAK]"] * 6 + ["[IMG_END]"] + ["[IMG_BREAK]"] * 7 + ["[IMG_END]"]
    toks = tok.convert_ids_to_tokens(batch.input_ids[1][batch.roles.template[1]].tolist())
    assert toks == ["<s>", "[INST]", "[/INST]"]
    assert tok.decode(batch.input_ids[1][batch.roles.question[1]].tolist()) == MIXED_QUESTIONS[1]


def test_backend_is_the_hook_fallback_and_the_bridge_agrees(setup, bridged, mistral3_dir, caplog):
    """Default: forward hooks (the bridge cannot hook Pixtral's layers), every site offered. The bridge gives the
    same logits and the same tensors at every other site, and names why it has no vision layers."""
    from lvlm_probe.models.hook_backend import HookBackend

    model, batch, _, _ = setup
    with caplog.at_level(logging.INFO, logger="lvlm_probe"):
        lp.load(mistral3_dir, device="cpu")
    assert isinstance(model.bridge, HookBackend) and model.info()["backend"] == "hooks"
    assert any("runs on forward hooks" in r.getMessage() and "vision.resid_post" in r.getMessage()
               for r in caplog.records)
    assert set(model.sites()) == {model.bridge.points[h].site for h in model.bridge.hook_dict}
    assert bridged.backend == "bridge"
    sites = [s for s in model.sites() if not s.startswith("vision.resid_post")]
    la, a = model.run_with_cache(batch, sites)
    lb, b = bridged.run_with_cache(batch, sites)
    assert torch.allclose(la, lb, atol=1e-5)
    for s in sites:
        assert torch.allclose(a[s], b[s], atol=1e-5), s
    with pytest.raises(lp.InputError, match=r"vision.resid_post.0 .*opaque component.*backend='hooks'"):
        bridged.run_with_cache(batch, ["vision.resid_post.0"])


def test_logits_match_hf_pipeline(setup, bridged):
    model, batch, ref, hf = setup
    with torch.no_grad():
        want = hf(**ref).logits
    keep = batch.attention_mask.bool()
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any()  # mixed lengths, left padded
    assert torch.allclose(model.forward(batch)[keep], want[keep], atol=1e-4)
    assert torch.allclose(bridged.forward(batch)[keep], want[keep], atol=1e-4)


def test_greedy_generation_matches_hf(setup):
    model, batch, ref, hf = setup
    assert_greedy_matches_hf(model, batch, ref, hf, n_items=2)


def test_capture_equals_hf_hidden_states(setup, tmp_path):
    """``llm.resid_post.l`` = ``hidden_states[l + 1]`` below the last layer, ``llm.final_norm`` the last one;
    ``projector.out`` rows at (image, row, col) are the LLM's input at those [IMG] tokens; the Pixtral layers
    come out per image on the ``(h/p) × (w/p)`` patch grid, equal to HF's vision hidden states."""
    model, batch, ref, hf = setup
    imgs = _images()
    items = [lp.Item(id=i, image=im, prompt=q) for i, im, q in zip("ab", imgs, MIXED_QUESTIONS)]
    L, Lv = model.adapter.n_llm_layers, model.adapter.n_vision_layers
    store = lp.capture(model, items, sites=["llm.resid_post.*", "llm.final_norm", "llm.resid_pre.0", "projector.out",
                                            "vision.resid_post.*"],
                       select=["last_prompt", "image_mean", "image_patches"], out=tmp_path / "s", batch_size=2,
                       progress=False)
    with torch.no_grad():
        hs = hf(**ref, output_hidden_states=True).hidden_states
        vhs = hf.model.vision_tower(ref["pixel_values"], image_sizes=ref["image_sizes"],
                                    output_hidden_states=True).hidden_states
    image = ref["input_ids"] == model.image_token_id
    for site, h in zip([f"llm.resid_post.{layer}" for layer in range(L - 1)] + ["llm.final_norm"], hs[1:]):
        assert torch.allclose(store.get(site, "last_prompt"), h[:, -1], atol=1e-4), site
        means = torch.stack([h[b][image[b]].mean(0) for b in range(2)])
        assert torch.allclose(store.get(site, "image_mean"), means, atol=1e-4), site
    key = ["item_id", "image", "row", "col"]
    p_rows, p_idx = store.get_rows("projector.out", "image_patches")
    l_rows, l_idx = store.get_rows("llm.resid_pre.0", "image_patches")
    pos = {tuple(r): k for k, r in enumerate(p_idx[key].itertuples(index=False, name=None))}
    order = torch.tensor([pos[tuple(r)] for r in l_idx[key].itertuples(index=False, name=None)])
    assert len(p_idx) == len(l_idx) == 40 + 49 + 56 and torch.allclose(p_rows[order], l_rows, atol=1e-5)
    assert len(vhs) == Lv + 1  # the patch embeddings, then each layer's output
    grids = [(10, 16), (14, 14), (16, 14)]
    for layer in range(Lv):
        rows, idx = store.get_rows(f"vision.resid_post.{layer}", "image_patches")
        assert torch.allclose(rows, vhs[layer + 1][0], atol=1e-5), layer  # images in order, each in raster order
        for (iid, i), (h, w) in zip([("a", 0), ("b", 0), ("b", 1)], grids):
            one = idx[(idx["item_id"] == iid) & (idx["image"] == i)]
            assert one[["row", "col"]].to_numpy().tolist() == [[r, c] for r in range(h) for c in range(w)]


def test_logit_lens_at_last_layer_equals_logits(setup):
    from lvlm_probe.probing import lens_logits

    model, batch, _, _ = setup
    L = model.adapter.n_llm_layers - 1
    logits, cache = model.run_with_cache(batch, [f"llm.resid_post.{L}"])
    keep = batch.attention_mask.bool()
    torch.testing.assert_close(lens_logits(model, cache[f"llm.resid_post.{L}"])[keep], logits[keep].float(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:integrated gradients did not converge")  # 8 steps: the maps' shape only
def test_knockout_attention_ig_and_occlusion_maps(setup):
    from lvlm_probe.attribution import image_attention_maps, knockout, patch_attribution

    model, batch, _, _ = setup
    ko = knockout(model, batch, from_roles="image", to_roles=["question", "last"])
    assert len(ko) == 2 and (ko["delta_p"].abs() > 0).all()
    maps = image_attention_maps(model, batch, layers=[0, 1])
    heads = model.hf_model.config.text_config.num_attention_heads
    assert maps.groupby(["b", "image"]).size().to_dict() == {(0, 0): 2 * heads * 40, (1, 0): 2 * heads * 49,
                                                               (1, 1): 2 * heads * 56}
    one = maps[(maps["b"] == 0)]
    assert set(one["row"]) == set(range(5)) and set(one["col"]) == set(range(8))
    ig = patch_attribution(model, batch, method="integrated_gradients", n_steps=8, progress=False)
    assert [tuple(m.shape) for m in ig.maps] == [(1, 5, 8), (2, 8, 7)]
    assert not torch.isnan(ig.maps[0]).any() and torch.isnan(ig.maps[1][0, 7]).all()  # a 7x7 grid in an 8x7 map
    assert all(torch.nan_to_num(m).abs().sum() > 0 for m in ig.maps)
    occ = patch_attribution(model, batch.select([0]), method="occlusion", progress=False)  # one forward per cell
    assert [tuple(m.shape) for m in occ.maps] == [(1, 5, 8)] and occ.maps[0].abs().sum() > 0


def test_pixel_cells_follow_the_token_grid_and_padding(mistral3):
    """A bright square on one token cell lands on that cell; in a batch, a smaller image's zero padding (which the
    model never reads) takes the nearest cell."""
    from lvlm_probe.attribution._pixels import split_items

    t = mistral3.adapter.token_pixels
    arr = np.zeros((3 * t, 4 * t, 3), dtype=np.uint8)
    arr[1 * t:2 * t, 2 * t:3 * t] = 255
    batch = mistral3.prepare([Image.fromarray(arr), rand_image(5, 6 * t, 6 * t)], ["what ?", "what ?"])
    it = split_items(mistral3, batch)[0]
    assert it.grids == [(3, 4)] and tuple(batch.pixel_values.shape[-2:]) == (6 * t, 6 * t)
    pv, cells = batch.pixel_values[:1], it.cells
    assert torch.equal((pv > 0)[..., :3 * t, :4 * t], cells[..., :3 * t, :4 * t] == 1 * 4 + 2)
    assert (pv[..., 3 * t:, :] == 0).all() and (cells[..., 3 * t:, :4 * t] == cells[..., 3 * t - 1:3 * t, :4 * t]).all()
    assert cells[0, 0, -1, -1] == 3 * 4 - 1


def test_placeholders_sizes_and_errors(mistral3):
    ph = mistral3.adapter.image_placeholder
    a = mistral3.prepare([rand_image(0)], [f"{ph}what is in the image ?"], chat_template=False)
    b = mistral3.prepare([rand_image(0)], ["<image>what is in the image ?"], chat_template=False)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.roles.image, a.input_ids == mistral3.image_token_id)
    assert mistral3.tokenizer.decode(a.input_ids[0][a.roles.question[0]].tolist()) == "what is in the image ?"
    with pytest.raises(lp.InputError, match=r"item 'two'.* 2 image placeholder\(s\) but 1 image\(s\)"):
        mistral3.prepare([rand_image(0)], [f"{ph} {ph} what ?"], chat_template=False, item_ids=["two"])
    with pytest.raises(lp.InputError, match=r"item 'none'.* 0 image placeholder\(s\) but 2 image\(s\)"):
        mistral3.prepare([[rand_image(0), rand_image(1)]], ["what ?"], chat_template=False, item_ids=["none"])
    # no minimum for a small image (a 1-pixel image is one token, as in HF); a strip whose short side vanishes when
    # the long side is scaled to the longest edge is refused with the minimum (HF fails inside its resize)
    one = mistral3.prepare([Image.new("RGB", (1, 1))], ["what ?"])
    assert one.roles.grids == [[(1, 1)]] and one.n_image_tokens == [1]
    with pytest.raises(lp.InputError, match=r"item 'thin'.*image 0 \(200x3 pixels\).*at least 4 px"):
        mistral3.prepare([Image.new("RGB", (200, 3))], ["what ?"], item_ids=["thin"])


def test_hooks_never_leak(setup):
    """Every forward hook the fallback adds is removed, also when a hook function raises."""
    model, batch, _, _ = setup

    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules())

    before = count()
    model.run_with_cache(batch, model.sites())

    def boom(t, hook=None):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), model.hooks([(model.hook_name("vision.resid_post.0"), boom)]):
        model.forward(batch)
    assert count() == before


def test_make_tiny_cli(tmp_path):
    from lvlm_probe.cli import main
    from lvlm_probe.models.tiny import TINY_BUILDERS, build_tiny_mistral3

    assert TINY_BUILDERS["mistral3"] is build_tiny_mistral3
    assert main(["make-tiny", str(tmp_path / "m"), "--family", "mistral3"]) in (0, None)
    m = lp.load(tmp_path / "m", device="cpu")
    cfg = m.hf_model.config
    assert m.family == "mistral3" and m.backend == "hooks"
    assert cfg.text_config.num_key_value_heads < cfg.text_config.num_attention_heads and cfg.spatial_merge_size == 2
