"""Qwen3-VL (``Qwen3VLForConditionalGeneration``, TransformerBridge adapter ``qwen3_vl``) against HF's own pipeline
on a tiny random-init checkpoint: grouped-query attention with per-head q/k norms, interleaved mRoPE, a learned
vision position grid resampled per image, and DeepStack features added to the LLM residual after layers 0 and 1
(not after the last layer). The parity tests shared with Qwen2-VL live in ``_qwen_family.py``; here the
Qwen3-VL facts: the DeepStack relation between ``llm.resid_post.k`` and ``llm.resid_pre.k+1`` that
docs/families.md documents, the bridge backend, and ``make-tiny``.
"""

from __future__ import annotations

import pytest
import torch

import lvlm_probe as lp
from _qwen_family import *  # noqa: F401,F403 - the shared parity tests run against this module's `fam`


@pytest.fixture(scope="module")
def fam(qwen3vl, qwen3vl_dir):
    return qwen3vl, qwen3vl_dir


def test_deepstack_relation_between_resid_post_and_next_resid_pre(setup):
    """At image tokens ``resid_pre.{k+1} = resid_post.{k} + deepstack_k`` (HF's DeepStack merger k applied to
    vision block ``deepstack_visual_indexes[k]``) for each DeepStack layer k; equal everywhere else."""
    model, batch, ref, hf, _ = setup
    L = model.adapter.n_llm_layers
    deep = model.adapter.deepstack_layers
    assert deep == [0, 1] and L == 3  # the tiny model: two injections, and a layer without one
    _, cache = model.run_with_cache(batch, ["llm.resid_pre.*", "llm.resid_post.*"])
    with torch.no_grad():
        feats = hf.model.visual(ref["pixel_values"], grid_thw=ref["image_grid_thw"]).deepstack_features
    image = batch.roles.image
    for k in range(L - 1):
        diff = cache[f"llm.resid_pre.{k + 1}"] - cache[f"llm.resid_post.{k}"]
        assert diff[~image].abs().max() == 0, k
        if k in deep:
            assert diff[image].abs().max() > 1e-2
            torch.testing.assert_close(diff[image], feats[k], atol=1e-5, rtol=1e-4)
        else:
            assert diff[image].abs().max() == 0, k


def test_backend_is_the_bridge(qwen3vl):
    info = qwen3vl.info()
    assert info["family"] == "qwen3_vl" and info["backend"] == "bridge" and info["deepstack_layers"] == [0, 1]
    assert type(qwen3vl.bridge).__name__ == "TransformerBridge"
    assert qwen3vl.hook_name("vision.resid_post.0") in qwen3vl.bridge.hook_dict


def test_make_tiny_cli(tmp_path):
    from lvlm_probe.cli import main
    from lvlm_probe.models.tiny import TINY_BUILDERS, build_tiny_qwen3_vl

    assert TINY_BUILDERS["qwen3_vl"] is build_tiny_qwen3_vl
    assert main(["make-tiny", str(tmp_path / "q"), "--family", "qwen3_vl"]) in (0, None)
    m = lp.load(tmp_path / "q", device="cpu")
    assert m.family == "qwen3_vl" and m.chat_template == m.adapter.default_chat_template()
    assert type(m.image_processor).__name__ == "Qwen2VLImageProcessorPil"
