"""Qwen2-VL (``Qwen2VLForConditionalGeneration``) on the forward-hook fallback (TransformerLens 4.3 has no bridge
adapter for it) against HF's own pipeline on a tiny random-init checkpoint. The parity tests shared with Qwen3-VL
live in ``_qwen_family.py``; here: the backend choice, every canonical site of the fallback against HF's
``output_hidden_states`` / attentions and, on Qwen2.5-VL, against the TransformerBridge itself; the sites that the
fallback reads but refuses to edit; ``make-tiny``.
"""

from __future__ import annotations

import logging

import pytest
import torch

import lvlm_probe as lp
from _qwen_family import *  # noqa: F401,F403 - the shared parity tests run against this module's `fam`
from conftest import MIXED_QUESTIONS, mixed_batch


@pytest.fixture(scope="module")
def fam(qwen2vl, qwen2vl_dir):
    return qwen2vl, qwen2vl_dir


def test_backend_is_the_hook_fallback(qwen2vl_dir, caplog):
    from lvlm_probe.models.hook_backend import HookBackend

    with caplog.at_level(logging.INFO, logger="lvlm_probe"):
        model = lp.load(qwen2vl_dir, device="cpu")
    assert isinstance(model.bridge, HookBackend) and model.backend == "hooks" and model.info()["backend"] == "hooks"
    assert any("runs on forward hooks" in r.getMessage() and "no bridge adapter" in r.getMessage()
               for r in caplog.records)
    assert set(model.sites()) == {model.bridge.points[h].site for h in model.bridge.hook_dict}  # every site offered
    with pytest.raises(lp.InputError, match="backend='tl'"):
        lp.load(qwen2vl_dir, device="cpu", backend="tl")


def test_every_site_equals_hf(setup):
    """resid_pre.l = hidden_states[l]; resid_mid.l = resid_pre.l + attn_out.l; resid_post.l = resid_mid.l +
    mlp_out.l = hidden_states[l + 1] (below the last layer); attn_pattern.l = HF's eager attentions[l]."""
    model, batch, ref, hf, _ = setup
    L = model.adapter.n_llm_layers
    logits, c = model.run_with_cache(batch, [f"{s}.*" for s in ("llm.resid_pre", "llm.resid_mid", "llm.resid_post",
                                                                "llm.attn_out", "llm.mlp_out", "llm.attn_pattern")]
                                     + ["llm.final_norm"])
    with torch.no_grad():
        out = hf(**ref, output_hidden_states=True, output_attentions=True)
    keep = batch.attention_mask.bool()
    assert torch.allclose(logits[keep], out.logits[keep], atol=1e-4)
    for layer in range(L):
        pre, mid, post = (c[f"llm.{s}.{layer}"] for s in ("resid_pre", "resid_mid", "resid_post"))
        assert torch.allclose(pre[keep], out.hidden_states[layer][keep], atol=1e-4), layer
        assert torch.allclose(mid, pre + c[f"llm.attn_out.{layer}"], atol=1e-5)
        assert torch.allclose(post, mid + c[f"llm.mlp_out.{layer}"], atol=1e-5)
        if layer < L - 1:
            assert torch.allclose(post[keep], out.hidden_states[layer + 1][keep], atol=1e-4), layer
        att = c[f"llm.attn_pattern.{layer}"]
        assert att.shape == (2, model.hf_model.config.text_config.num_attention_heads, *batch.input_ids.shape[1:] * 2)
        assert torch.allclose(att, out.attentions[layer], atol=1e-5)
    assert torch.allclose(c["llm.final_norm"][keep], out.hidden_states[L][keep], atol=1e-4)


def test_edits_reach_the_output_and_read_only_sites_refuse(setup):
    model, batch, _, _, _ = setup
    base = model.forward(batch)

    def zero(t, hook=None):
        return torch.zeros_like(t)

    for site in ("llm.resid_post.0", "llm.attn_out.1", "llm.mlp_out.0", "llm.resid_pre.1", "projector.out"):
        with model.hooks([(model.hook_name(site), zero)]):
            assert (model.forward(batch) - base).abs().max() > 1e-3, site
    for site, why in (("llm.resid_mid.0", "own copy of the residual"), ("llm.attn_pattern.0", "already applied")):
        with pytest.raises(lp.SiteError, match=why), model.hooks([(model.hook_name(site), zero)]):
            model.forward(batch)
    assert torch.equal(model.forward(batch), base)  # every hook removed, also after the errors


def test_fallback_equals_the_bridge_on_qwen2_5_vl(qwen, qwen_dir, one_torch_thread):
    """The same checkpoint through both backends: every canonical site equal (Qwen2.5-VL has a bridge adapter)."""
    hooked = lp.load(qwen_dir, device="cpu", backend="hooks")
    assert hooked.backend == "hooks" and qwen.backend == "bridge"
    batch = mixed_batch(qwen, n_images_second=2)
    sites = qwen.sites()
    la, a = qwen.run_with_cache(batch, sites)
    lb, b = hooked.run_with_cache(batch, sites)
    assert torch.allclose(la, lb, atol=1e-5)
    assert set(a) == set(b) == set(sites)
    for s in sites:
        assert torch.allclose(a[s], b[s], atol=1e-5), s
    g1, g2 = qwen.generate(batch, max_new_tokens=6), hooked.generate(batch, max_new_tokens=6)
    assert g1.tokens == g2.tokens


def test_a_site_the_fallback_cannot_cover_is_a_site_error(qwen2vl_dir, monkeypatch):
    from lvlm_probe.models.qwen2_vl import Qwen2VLAdapter

    def no_projector(self):
        raise lp.UnsupportedModelError("no projector named")

    monkeypatch.setattr(Qwen2VLAdapter, "projector_module", no_projector)
    model = lp.load(qwen2vl_dir, device="cpu")
    assert "projector.out" in model.bridge.unavailable
    batch = model.prepare([None], [MIXED_QUESTIONS[0]])
    with pytest.raises(lp.SiteError, match=r"forward-hook backend of qwen2_vl does not offer projector.out .*: no projector named"):
        model.run_with_cache(batch, ["projector.out"])


def test_make_tiny_cli(tmp_path):
    from lvlm_probe.cli import main
    from lvlm_probe.models.tiny import TINY_BUILDERS, build_tiny_qwen2_vl

    assert TINY_BUILDERS["qwen2_vl"] is build_tiny_qwen2_vl
    assert main(["make-tiny", str(tmp_path / "q"), "--family", "qwen2_vl"]) in (0, None)
    m = lp.load(tmp_path / "q", device="cpu")
    assert m.family == "qwen2_vl" and m.backend == "hooks"
