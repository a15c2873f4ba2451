"""Bridge numerics equal HF eager numerics, and greedy generation equals HF generate."""

import torch

from conftest import hf_eager, mixed_batch


def test_bridge_logits_match_hf_eager(family):
    model, d = family
    hf = hf_eager(d, model)
    batch = mixed_batch(model, n_images_second=2)
    with torch.no_grad():
        ref = hf(input_ids=batch.input_ids, **batch.model_inputs()).logits
        via_bridge = model.bridge(batch.input_ids, **batch.model_inputs())
    got = model.forward(batch)
    keep = batch.attention_mask.bool()
    assert torch.allclose(via_bridge[keep], ref[keep], atol=1e-4)
    assert torch.allclose(got[keep], ref[keep], atol=1e-4)
    # padding really is on the left and the shorter prompt is padded
    assert batch.attention_mask[:, -1].all()
    assert (batch.attention_mask.sum(1) < batch.input_ids.shape[1]).any()


def test_greedy_generation_matches_hf(family):
    model, d = family
    hf = hf_eager(d, model)
    batch = mixed_batch(model)
    gen = model.generate(batch, max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        ref = hf.generate(input_ids=batch.input_ids, **batch.model_inputs(), max_new_tokens=12, do_sample=False,
                          pad_token_id=model.tokenizer.pad_token_id)
    T = batch.input_ids.shape[1]
    for b in range(len(batch)):
        n = len(gen.tokens[b])
        assert gen.tokens[b] == ref[b, T:T + n].tolist()
    assert len(set(gen.tokens[0])) > 2, "degenerate output makes a weak parity test"
