"""Checks every family's tests share: lvlm_probe against HF's own pipeline."""

from __future__ import annotations

import torch


def assert_greedy_matches_hf(model, batch, ref: dict, hf, n_items: int, max_new_tokens: int = 10) -> None:
    """Greedy generation through lvlm_probe equals ``hf.generate`` on HF's processor output ``ref``, token for
    token, for the first ``n_items`` items; item 1 must not be degenerate (a weak parity test otherwise)."""
    gen = model.generate(batch, max_new_tokens=max_new_tokens)
    with torch.no_grad():
        want = hf.generate(**ref, max_new_tokens=max_new_tokens, do_sample=False,
                           pad_token_id=model.tokenizer.pad_token_id)
    T = ref["input_ids"].shape[1]
    for b in range(n_items):
        assert gen.tokens[b] == want[b, T:T + len(gen.tokens[b])].tolist()
    assert len(set(gen.tokens[1])) > 2, "degenerate output makes a weak parity test"
