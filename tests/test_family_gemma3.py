"""Gemma3 (``Gemma3ForConditionalGeneration``) against HF's own pipeline on a tiny random-init checkpoint.

The reference inputs come from ``AutoProcessor.from_pretrained(dir)(images=..., text=...)`` and the reference
outputs from a fresh HF model with eager attention, never from inputs lvlm_probe built. The tiny model has the
non-default choices that matter: grouped-query attention, a sliding-window layer beside a full-attention one,
non-square input images (the processor squashes them), a 6×6 SigLIP patch grid pooled to 3×3 soft tokens, and
an item with two images.
"""

from __future__ import annotations

import pytest
import torch

import lvlm_probe as lp
from conftest import MIXED_QUESTIONS, rand_image
from _hf_parity import assert_greedy_matches_hf

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images():
    """Item a: one non-square image; item b: two images of other sizes."""
    return [rand_image(0, 40, 60), [rand_image(1, 50, 50), rand_image(2, 64, 50)]]


def hf_gemma3_inputs(model_dir, images, questions):
    """HF's pipeline: the processor's chat template renders the text, ``processor(images, text)`` expands
    ``<start_of_image>`` and builds ``token_type_ids``. The rendered text starts with BOS, so it is tokenised
    without adding another (what ``processor.apply_chat_template(..., tokenize=True)`` does; a plain call
    would put a second BOS in front)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    nested = [im if isinstance(im, list) else [im] for im in images]
    texts = [proc.apply_chat_template([{"role": "user", "content": [*({"type": "image"} for _ in ims),
                                                                    {"type": "text", "text": q}]}],
                                      add_generation_prompt=True, tokenize=False)
             for ims, q in zip(nested, questions)]
    assert all(t.startswith(proc.tokenizer.bos_token) for t in texts)
    return proc(images=nested, text=texts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.fixture(scope="module")
def setup(gemma3, gemma3_dir):
    """(model, batch from prepare, HF processor output, fresh HF eager model)."""
    imgs = _images()
    batch = gemma3.prepare(imgs, MIXED_QUESTIONS, item_ids=["a", "b"])
    ref = hf_gemma3_inputs(gemma3_dir, imgs, MIXED_QUESTIONS)
    hf = type(gemma3.hf_model).from_pretrained(gemma3_dir, attn_implementation="eager").eval()
    return gemma3, batch, ref, hf


def test_prepare_equals_hf_processor_and_roles(setup):
    model, batch, ref, _ = setup
    assert set(ref) == {"input_ids", "attention_mask", "pixel_values", "token_type_ids"}
    assert torch.equal(batch.input_ids, ref["input_ids"])
    assert torch.equal(batch.attention_mask, ref["attention_mask"])
    assert torch.equal(batch.pixel_values, ref["pixel_values"])
    assert torch.equal(batch.model_inputs()["token_type_ids"], ref["token_type_ids"])
    # roles.image is exactly where the processor put <image_soft_token>; <start_of_image> is not the image token
    assert torch.equal(batch.roles.image, ref["input_ids"] == model.image_token_id)
    tok = model.tokenizer
    assert tok.convert_ids_to_tokens(model.image_token_id) == "<image_soft_token>"
    assert model.adapter.image_placeholder == "<start_of_image>" != tok.convert_ids_to_tokens(model.image_token_id)
    side = int(model.hf_model.config.mm_tokens_per_image ** 0.5)
    assert batch.roles.grids == [[(side, side)], [(side, side), (side, side)]]
    assert batch.n_image_tokens == [side * side, 2 * side * side]
    stack = torch.stack([batch.roles.mask(n) for n in lp.ROLE_NAMES]).long().sum(0)
    assert torch.equal(stack, batch.attention_mask)  # one role per real token, none on padding
    for b in range(2):
        coords = batch.roles.patch_coords[b][batch.roles.image[b]]
        for i in range(batch.n_images[b]):  # each image's grid once, in raster order
            assert coords[coords[:, 0] == i][:, 1:].tolist() == [[r, c] for r in range(side) for c in range(side)]
        assert (batch.roles.patch_coords[b][~batch.roles.image[b]] == -1).all()
    # begin/end of image and the blank lines around them are scaffolding; the question is the question
    toks = tok.convert_ids_to_tokens(batch.input_ids[1][batch.roles.template[1]].tolist())
    assert toks == ["<bos>", "<start_of_turn>", "user", "\n\n", "<start_of_image>", "<end_of_image>", "\n\n", "\n\n",
                    "<start_of_image>", "<end_of_image>", "\n\n", "<end_of_turn>", "<start_of_turn>", "model"]
    assert tok.decode(batch.input_ids[1][batch.roles.question[1]].tolist()) == MIXED_QUESTIONS[1]


def test_logits_match_hf_pipeline(setup):
    model, batch, ref, hf = setup
    with torch.no_grad():
        want = hf(**ref).logits
        via_bridge = model.bridge(batch.input_ids, **batch.model_inputs())
        without_types = hf(**{k: v for k, v in ref.items() if k != "token_type_ids"}).logits
    got = model.forward(batch)
    keep = batch.attention_mask.bool()
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any()  # mixed lengths, left padded
    assert torch.allclose(got[keep], want[keep], atol=1e-4)
    assert torch.allclose(via_bridge[keep], want[keep], atol=1e-4)
    # token_type_ids matter (bidirectional attention inside an image): dropping them changes the logits
    assert (without_types[keep] - want[keep]).abs().max() > 1e-2


def test_greedy_generation_matches_hf(setup):
    model, batch, ref, hf = setup
    assert_greedy_matches_hf(model, batch, ref, hf, n_items=2)


def test_capture_equals_hf_hidden_states(setup, gemma3_dir, tmp_path):
    """``llm.resid_post.l`` = ``hidden_states[l + 1]`` below the last layer; HF reports the last one after the
    final norm (``llm.final_norm``). Also: ``projector.out`` rows at (image, row, col) are the LLM's input at those
    soft tokens, and the SigLIP layers come out on the 6×6 patch grid."""
    model, batch, ref, hf = setup
    imgs = _images()
    items = [lp.Item(id=i, image=im, prompt=q) for i, im, q in zip("ab", imgs, MIXED_QUESTIONS)]
    L = model.adapter.n_llm_layers
    Lv = model.adapter.n_vision_layers - 1
    store = lp.capture(model, items, sites=["llm.resid_post.*", "llm.final_norm", "llm.resid_pre.0", "projector.out",
                                            f"vision.resid_post.{Lv}"],
                       select=["last_prompt", "image_mean", "image_patches"], out=tmp_path / "s", batch_size=2,
                       progress=False)
    with torch.no_grad():
        hs = hf(**ref, output_hidden_states=True).hidden_states
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
    assert len(p_idx) == len(l_idx) == 27 and torch.allclose(p_rows[order], l_rows, atol=1e-5)
    _, v_idx = store.get_rows(f"vision.resid_post.{Lv}", "image_patches")
    one = v_idx[(v_idx["item_id"] == "a") & (v_idx["image"] == 0)]
    n = model.adapter.patches_per_side
    assert one[["row", "col"]].to_numpy().tolist() == [[r, c] for r in range(n) for c in range(n)]


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
    side = model.adapter.tokens_per_side
    ko = knockout(model, batch, from_roles="image", to_roles=["question", "last"])
    assert len(ko) == 2 and (ko["delta_p"].abs() > 0).all()
    maps = image_attention_maps(model, batch, layers=[0, 1])
    assert set(maps["row"]) == set(range(side)) and set(maps["col"]) == set(range(side))
    assert maps.groupby(["b", "image"]).size().to_dict() == {(0, 0): 2 * 4 * side * side,
                                                               (1, 0): 2 * 4 * side * side,
                                                               (1, 1): 2 * 4 * side * side}
    occ = patch_attribution(model, batch, method="occlusion", progress=False)
    assert [tuple(m.shape) for m in occ.maps] == [(1, side, side), (2, side, side)]
    assert all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in occ.maps)


def test_pixel_cells_follow_the_pooled_grid(gemma3):
    """A bright square on one pooled cell lands on that cell of the pixel → cell mask."""
    import numpy as np
    from PIL import Image

    from lvlm_probe.attribution._pixels import split_items

    size = gemma3.image_processor.size["height"]
    side = gemma3.adapter.tokens_per_side
    cell = size // side
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[1 * cell:2 * cell, 2 * cell:3 * cell] = 255
    batch = gemma3.prepare([Image.fromarray(arr)], ["what is in the image ?"])
    it = split_items(gemma3, batch)[0]
    assert it.grids[0] == (side, side)
    assert torch.equal(batch.pixel_values > 0, it.cells == 1 * side + 2)


def test_raw_prompts_and_placeholder_count(gemma3):
    ph = gemma3.adapter.image_placeholder
    a = gemma3.prepare([rand_image(0)], [f"{ph} what is in the image ?"], chat_template=False)
    b = gemma3.prepare([rand_image(0)], ["<image> what is in the image ?"], chat_template=False)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.roles.image, a.input_ids == gemma3.image_token_id)
    assert gemma3.tokenizer.decode(a.input_ids[0][a.roles.question[0]].tolist()) == "what is in the image ?"
    with pytest.raises(lp.InputError, match=r"item 'two'.* 2 image placeholder\(s\) but 1 image\(s\)"):
        gemma3.prepare([rand_image(0)], [f"{ph} {ph} what ?"], chat_template=False, item_ids=["two"])
    with pytest.raises(lp.InputError, match=r"item 'soft'.* 18 image tokens but its images give 9"):
        gemma3.prepare([rand_image(0)], ["what <image_soft_token> " * 9 + "?"], item_ids=["soft"])


def test_make_tiny_cli(tmp_path):
    from transformers import AutoProcessor

    from lvlm_probe.cli import main
    from lvlm_probe.models.tiny import TINY_BUILDERS, build_tiny_gemma3

    assert TINY_BUILDERS["gemma3"] is build_tiny_gemma3
    assert main(["make-tiny", str(tmp_path / "g"), "--family", "gemma3"]) in (0, None)
    proc = AutoProcessor.from_pretrained(tmp_path / "g")
    assert type(proc).__name__ == "Gemma3Processor" and proc.image_seq_length == 9
    cfg = lp.load(tmp_path / "g", device="cpu").hf_model.config.text_config
    assert cfg.num_key_value_heads < cfg.num_attention_heads
