"""The one-command GPU check (benchmarks/gpu_check.py): its CPU smoke run, and the 7B shape it builds."""

from __future__ import annotations

import torch

from lvlm_probe.models.tiny import DEFAULT_WORDS, LLAVA_1_5_7B_SHAPE, llava_config, word_tokenizer


def test_llava_7b_shape_has_llava_1_5_7b_size():
    """The shape gpu_check.py measures: LLaVA-1.5-7B's parameter count and 576 image tokens (built on meta)."""
    from transformers import LlavaForConditionalGeneration

    tok = word_tokenizer(DEFAULT_WORDS, specials=["<image>"], bos="<s>", eos="</s>", pad="<pad>")
    cfg = llava_config(tok, **LLAVA_1_5_7B_SHAPE, init_std=0.02)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    assert 7.0e9 < n < 7.1e9  # llava-hf/llava-1.5-7b-hf: 7.06e9 (its vocabulary has 64 more rows)
    assert cfg.image_seq_length == 576 and cfg.text_config.intermediate_size == 11008
    assert cfg.vision_config.intermediate_size == 4096 and cfg.vision_feature_layer == -2
