"""Parity with HF's own pipeline: ``hf_model(**AutoProcessor(...)(images, text))`` with eager attention.

The reference inputs come from HF's processor, never from ``LVLM.prepare``: a family input that prepare forgets
(Qwen2.5-VL's ``mm_token_type_ids``, without which HF falls back to 1-D positions) must show up here.
"""

import pytest
import torch

from conftest import MIXED_QUESTIONS, hf_eager, hf_pipeline_inputs, mixed_images


@pytest.fixture(scope="module", params=[1, 2], ids=["one_image", "two_images"])
def pipeline(family, request):
    """(model, batch from prepare, HF processor output, fresh HF eager model) on a mixed-length batch."""
    model, d = family
    imgs = mixed_images(n_images_second=request.param)
    batch = model.prepare(imgs, MIXED_QUESTIONS, item_ids=["a", "b"])
    ref_inputs = hf_pipeline_inputs(d, model, imgs, MIXED_QUESTIONS)
    return model, batch, ref_inputs, hf_eager(d, model)


def test_prepare_equals_hf_processor(pipeline):
    model, batch, ref, _ = pipeline
    assert torch.equal(batch.input_ids.cpu(), ref["input_ids"])
    assert torch.equal(batch.attention_mask.cpu(), ref["attention_mask"])
    assert torch.equal(batch.pixel_values.cpu(), ref["pixel_values"])
    ours = batch.model_inputs()
    for key in ref:  # every input HF's processor gives the model, we give it too, with the same values
        assert key in ours or key == "input_ids", f"prepare() does not pass {key!r} to the model"
        if key != "input_ids":
            assert torch.equal(ours[key].cpu(), ref[key].to(ours[key].dtype)), key
    # the image positions the processor marks are exactly roles.image
    assert torch.equal(batch.roles.image.cpu(), ref["input_ids"] == model.image_token_id)


def test_bridge_logits_match_hf_pipeline(pipeline):
    model, batch, ref_inputs, hf = pipeline
    with torch.no_grad():
        ref = hf(**ref_inputs).logits
        via_bridge = model.bridge(batch.input_ids, **batch.model_inputs())
    got = model.forward(batch)
    keep = batch.attention_mask.bool()
    assert torch.allclose(via_bridge[keep], ref[keep], atol=1e-4)
    assert torch.allclose(got[keep], ref[keep], atol=1e-4)
    # padding really is on the left and the shorter prompt is padded
    assert batch.attention_mask[:, -1].all()
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any()


def test_greedy_generation_matches_hf_pipeline(pipeline):
    model, batch, ref_inputs, hf = pipeline
    gen = model.generate(batch, max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        ref = hf.generate(**ref_inputs, max_new_tokens=12, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    T = ref_inputs["input_ids"].shape[1]
    for b in range(len(batch)):
        n = len(gen.tokens[b])
        assert gen.tokens[b] == ref[b, T:T + n].tolist()
    assert len(set(gen.tokens[0])) > 2, "degenerate output makes a weak parity test"


def test_qwen_positions_are_image_aware(qwen, qwen_dir):
    """Without ``mm_token_type_ids`` Qwen2.5-VL silently uses 1-D positions: the logits must differ from those."""
    imgs = mixed_images()
    batch = qwen.prepare(imgs, MIXED_QUESTIONS)
    kw = batch.model_inputs()
    assert torch.equal(kw["mm_token_type_ids"], batch.roles.image.long())
    with torch.no_grad():
        full = qwen.forward(batch)
        kw.pop("mm_token_type_ids")
        flat = qwen.hf_model(input_ids=batch.input_ids, **kw, use_cache=False).logits
    keep = batch.attention_mask.bool()
    assert (full[keep] - flat[keep]).abs().max() > 1e-2


def test_capture_equals_hf_pipeline_hidden_states(family, tmp_path):
    """Stored residuals equal HF's ``output_hidden_states`` on the processor's inputs: ``llm.resid_post.l`` is
    ``hidden_states[l + 1]`` below the last layer, whose entry HF reports after the final norm (``llm.final_norm``)."""
    import lvlm_probe as lp

    model, d = family
    imgs = mixed_images()
    items = [lp.Item(id=f"i{k}", image=im, prompt=q) for k, (im, q) in enumerate(zip(imgs, MIXED_QUESTIONS))]
    store = lp.capture(model, items, sites=["llm.resid_post.*", "llm.final_norm"], select=["last_prompt", "image_mean"],
                       out=tmp_path / "s", batch_size=2, progress=False)
    ref_inputs = hf_pipeline_inputs(d, model, imgs, MIXED_QUESTIONS)
    with torch.no_grad():
        hs = hf_eager(d, model)(**ref_inputs, output_hidden_states=True).hidden_states
    image = ref_inputs["input_ids"] == model.image_token_id
    L = model.adapter.n_llm_layers
    sites = [f"llm.resid_post.{layer}" for layer in range(L - 1)] + ["llm.final_norm"]
    for site, h in zip(sites, hs[1:]):
        assert torch.allclose(store.get(site, "last_prompt"), h[:, -1], atol=1e-4), site
        means = torch.stack([h[b][image[b]].mean(0) for b in range(2)])
        assert torch.allclose(store.get(site, "image_mean"), means, atol=1e-4), site
