"""Parity tests shared by the Qwen2-VL and Qwen3-VL family tests (``from _qwen_family import *``).

The importing module defines the fixture ``fam`` = (model, model_dir). Every reference comes from HF's own
pipeline: the family's processor class (``AutoProcessor.from_pretrained(dir)``, or the same class built from the
directory's tokenizer and image processor when torchvision is missing, see ``conftest.hf_processor``) called as
``processor(images=..., text=...)``, run through a fresh HF model with eager attention; never from inputs
lvlm_probe built. Items: a non-square image; two images of other shapes in the second item (mixed lengths).
"""

from __future__ import annotations

import pytest
import torch

import lvlm_probe as lp
from conftest import MIXED_QUESTIONS, hf_pipeline_inputs, rand_image
from _hf_parity import assert_greedy_matches_hf

__all__ = ["IMAGES", "setup", "test_prepare_equals_hf_processor_and_roles", "test_logits_match_hf_pipeline",
           "test_greedy_generation_matches_hf", "test_capture_equals_hf_hidden_states",
           "test_logit_lens_at_last_layer_equals_logits", "test_knockout_attention_and_occlusion_maps",
           "test_placeholder_count_errors_name_item_and_counts"]


def IMAGES():
    """Item a: one wide image; item b: a square one and a tall one (three different merged grids)."""
    return [rand_image(0, 40, 60), [rand_image(1, 50, 50), rand_image(2, 90, 50)]]


@pytest.fixture(scope="module")
def setup(fam, one_torch_thread):
    """(model, batch from prepare, HF processor output, fresh HF eager model, model dir)."""
    model, model_dir = fam
    imgs = IMAGES()
    batch = model.prepare(imgs, MIXED_QUESTIONS, item_ids=["a", "b"])
    ref = hf_pipeline_inputs(model_dir, model, imgs, MIXED_QUESTIONS)
    hf = type(model.hf_model).from_pretrained(model_dir, attn_implementation="eager").eval()
    return model, batch, ref, hf, model_dir


def test_prepare_equals_hf_processor_and_roles(setup):
    model, batch, ref, _, _ = setup
    assert set(ref) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])
    assert torch.equal(batch.pixel_values, ref["pixel_values"])
    kw = batch.model_inputs()
    assert torch.equal(kw["image_grid_thw"], ref["image_grid_thw"])
    assert torch.equal(kw["mm_token_type_ids"], ref["mm_token_type_ids"])  # every input the processor returns
    assert torch.equal(batch.roles.image, ref["input_ids"] == model.image_token_id)
    m = model.adapter.merge
    grids = [(h // m, w // m) for _, h, w in ref["image_grid_thw"].tolist()]
    assert len(set(grids)) == 3 and any(h != w for h, w in grids)  # non-square, all different
    assert batch.roles.grids == [grids[:1], grids[1:]]
    assert batch.n_image_tokens == [h * w for h, w in grids[:1]] + [sum(h * w for h, w in grids[1:])]
    stack = torch.stack([batch.roles.mask(n) for n in lp.ROLE_NAMES]).long().sum(0)
    assert torch.equal(stack, batch.attention_mask)  # one role per real token, none on padding
    k = 0
    for b in range(2):  # each image's merged grid once, in raster order
        coords = batch.roles.patch_coords[b][batch.roles.image[b]]
        for i in range(batch.n_images[b]):
            h, w = grids[k]
            assert coords[coords[:, 0] == i][:, 1:].tolist() == [[r, c] for r in range(h) for c in range(w)]
            k += 1
        assert (batch.roles.patch_coords[b][~batch.roles.image[b]] == -1).all()
    toks = model.tokenizer.convert_ids_to_tokens(batch.input_ids[1][batch.roles.template[1]].tolist())
    assert toks.count("<|vision_start|>") == toks.count("<|vision_end|>") == 2 and "<|image_pad|>" not in toks
    assert model.tokenizer.decode(batch.input_ids[1][batch.roles.question[1]].tolist()) == MIXED_QUESTIONS[1]


def test_logits_match_hf_pipeline(setup):
    model, batch, ref, hf, _ = setup
    with torch.no_grad():
        want = hf(**ref).logits
    got = model.forward(batch)
    keep = batch.attention_mask.bool()
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any()  # mixed lengths, left padded
    assert torch.allclose(got[keep], want[keep], atol=1e-4)
    # HF raises (never degrades) when an input the processor returns is left out
    with pytest.raises(ValueError, match="mm_token_type_ids"), torch.no_grad():
        hf(**{k: v for k, v in ref.items() if k != "mm_token_type_ids"})


def test_greedy_generation_matches_hf(setup):
    model, batch, ref, hf, _ = setup
    assert_greedy_matches_hf(model, batch, ref, hf, n_items=2)


def test_capture_equals_hf_hidden_states(setup, tmp_path):
    """``llm.resid_post.l`` = ``hidden_states[l + 1]`` below the last layer, ``llm.final_norm`` = the last one
    (HF reports it after the final norm); ``projector.out`` at (image, row, col) is the LLM's input there;
    every vision layer equals HF's vision hidden states and comes out on the patch grid."""
    model, batch, ref, hf, _ = setup
    items = [lp.Item(id=i, image=im, prompt=q) for i, im, q in zip("ab", IMAGES(), MIXED_QUESTIONS)]
    L, Lv = model.adapter.n_llm_layers, model.adapter.n_vision_layers
    store = lp.capture(model, items, sites=["llm.resid_post.*", "llm.final_norm", "llm.resid_pre.0", "projector.out",
                                            f"vision.resid_post.{Lv - 1}"],
                       select=["last_prompt", "image_mean", "image_patches"], out=tmp_path / "s", batch_size=2,
                       progress=False)
    with torch.no_grad():
        hs = hf(**ref, output_hidden_states=True).hidden_states
        vis = hf.model.visual(ref["pixel_values"], grid_thw=ref["image_grid_thw"], output_hidden_states=True)
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
    assert len(p_idx) == len(l_idx) == int(image.sum()) and torch.allclose(p_rows[order], l_rows, atol=1e-5)
    _, v_idx = store.get_rows(f"vision.resid_post.{Lv - 1}", "image_patches")
    one = v_idx[(v_idx["item_id"] == "b") & (v_idx["image"] == 1)]
    _, h, w = ref["image_grid_thw"][2].tolist()
    assert one[["row", "col"]].to_numpy().tolist() == [[r, c] for r in range(h) for c in range(w)]
    _, cache = model.run_with_cache(batch, ["vision.resid_post.*", "projector.out"])
    for layer in range(Lv):
        assert torch.allclose(cache[f"vision.resid_post.{layer}"], vis.hidden_states[layer + 1], atol=1e-5), layer
    assert torch.allclose(cache["projector.out"], vis.pooler_output, atol=1e-5)


def test_logit_lens_at_last_layer_equals_logits(setup):
    from lvlm_probe.probing import lens_logits

    model, batch, _, _, _ = setup
    L = model.adapter.n_llm_layers - 1
    logits, cache = model.run_with_cache(batch, [f"llm.resid_post.{L}"])
    keep = batch.attention_mask.bool()
    torch.testing.assert_close(lens_logits(model, cache[f"llm.resid_post.{L}"])[keep], logits[keep].float(),
                               atol=1e-5, rtol=1e-5)


def test_knockout_attention_and_occlusion_maps(setup):
    from lvlm_probe.attribution import image_attention_maps, knockout, patch_attribution

    model, batch, _, _, _ = setup
    grids = [g for per_item in batch.roles.grids for g in per_item]
    ko = knockout(model, batch, from_roles="image", to_roles=["question", "last"])
    assert len(ko) == 2 and (ko["delta_p"].abs() > 0).all()
    maps = image_attention_maps(model, batch, layers=[0, 1])
    H = model.hf_model.config.text_config.num_attention_heads
    sizes = maps.groupby(["b", "image"]).size().to_dict()
    assert sizes == {(0, 0): 2 * H * grids[0][0] * grids[0][1], (1, 0): 2 * H * grids[1][0] * grids[1][1],
                     (1, 1): 2 * H * grids[2][0] * grids[2][1]}
    one = maps[(maps["b"] == 1) & (maps["image"] == 1)]
    assert set(one["row"]) == set(range(grids[2][0])) and set(one["col"]) == set(range(grids[2][1]))
    occ = patch_attribution(model, batch, method="occlusion", progress=False)
    (h0, w0), (h1, w1), (h2, w2) = grids
    assert [tuple(m.shape) for m in occ.maps] == [(1, h0, w0), (2, max(h1, h2), max(w1, w2))]
    assert torch.isfinite(occ.maps[1][1, :h2, :w2]).all() and occ.maps[1][1, :h2, :w2].abs().sum() > 0
    assert torch.isfinite(occ.maps[0]).all() and occ.maps[0].abs().sum() > 0


def test_placeholder_count_errors_name_item_and_counts(setup):
    model = setup[0]
    with pytest.raises(lp.InputError, match=r"item 'two'.* 2 image placeholder\(s\) but 1 image\(s\)"):
        model.prepare([rand_image(0)], ["<image> <image> what ?"], chat_template=False, item_ids=["two"])
    with pytest.raises(lp.InputError, match=r"item 'pad'.* 2 image placeholder\(s\) but 1 image\(s\)"):
        model.prepare([rand_image(0)], ["what <|image_pad|> ?"], item_ids=["pad"])
    ok = model.prepare([rand_image(0)], ["<image> what is in the image ?"], chat_template=False)
    assert torch.equal(ok.roles.image, ok.input_ids == model.image_token_id)
    with pytest.raises(lp.InputError, match=r"item '0': input_ids hold \d+ image tokens but its image\(s\) give"):
        bad = ok.select([0])
        bad.input_ids[0, -1] = model.image_token_id
        model.forward(bad)
