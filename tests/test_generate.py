import torch

from conftest import mixed_batch


def test_generation_record(family):
    model, _ = family
    batch = mixed_batch(model)
    gen = model.generate(batch, max_new_tokens=6, output_scores=True)
    T = batch.input_ids.shape[1]
    assert gen.prompt_length == T
    assert gen.sequences.shape == (2, T + gen.scores.shape[1])
    assert gen.scores.shape[:2] == (2, gen.sequences.shape[1] - T)
    for b in range(2):
        n = len(gen.tokens[b])
        # greedy: each token is the argmax of its step's logits
        assert gen.scores[b, :n].argmax(-1).tolist() == gen.tokens[b]
        assert gen.roles.generated[b, T:T + n].all() and not gen.roles.generated[b, :T].any()
        assert gen.text[b] == model.tokenizer.decode(gen.tokens[b], skip_special_tokens=True).strip()
        # token_spans: each non-special token covers exactly its own decoded text
        assert len(gen.token_spans[b]) == n
        special = set(model.tokenizer.all_special_ids)
        for t, (s0, s1) in zip(gen.tokens[b], gen.token_spans[b]):
            piece = model.tokenizer.decode([t], skip_special_tokens=True).strip()
            assert gen.text[b][s0:s1] == ("" if t in special else piece)
    full = gen.as_batch()
    assert full.input_ids.shape == gen.sequences.shape


def test_sampling_is_seeded(llava):
    batch = mixed_batch(llava)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.95, top_k=20)
    a = llava.generate(batch, seed=3, **kw).tokens
    b = llava.generate(batch, seed=3, **kw).tokens
    c = llava.generate(batch, seed=4, **kw).tokens
    assert a == b
    assert a != c
    rng_before = torch.random.get_rng_state()
    llava.generate(batch, seed=5, **kw)
    assert torch.equal(rng_before, torch.random.get_rng_state()), "seeded sampling must not disturb global RNG"


def test_generate_stops_at_eos(llava):
    batch = mixed_batch(llava)
    eos = llava.tokenizer.eos_token_id
    gen = llava.generate(batch, max_new_tokens=30)
    for toks in gen.tokens:
        assert eos not in toks[:-1]


def test_cached_generation_matches_full_forward(family):
    """KV-cached greedy decoding through the bridge equals argmax of a cache-free forward over the whole sequence.

    Catches a bridge/transformers mismatch in how the cache is handed to attention (transformers 5.24 renamed
    ``past_key_values`` to ``cache``; TransformerLens 4.3's attention bridge then silently ran without a cache).
    """
    model, _ = family
    batch = mixed_batch(model)
    gen = model.generate(batch, max_new_tokens=8)
    logits = model.forward(gen.as_batch())
    T = gen.prompt_length
    for b in range(2):
        n = len(gen.tokens[b])
        assert n >= 3, "the test needs a few generated tokens"
        assert logits[b, T - 1:T - 1 + n].argmax(-1).tolist() == gen.tokens[b]
