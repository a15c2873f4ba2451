"""Qwen3-VL family (``Qwen3VLForConditionalGeneration``): full-attention ViT, 2×2 patch merger plus DeepStack
mergers, interleaved-mRoPE Qwen3 LM.

Owns every Qwen3-VL fact that differs from Qwen2.5-VL (whose adapter it extends):

- the vision blocks run every image in full attention, in the processor's patch order (merge units of
  ``merge × merge`` patches contiguous, units in raster order), so there is no window permutation to undo;
- **DeepStack**: the vision tower also merges the hidden states of ``vision_config.deepstack_visual_indexes``
  blocks (``model.visual.deepstack_merger_list``) and the text model *adds* the ``k``-th of them to the residual
  stream at image tokens right after decoder layer ``k`` returns (a tensor add between layer calls, not a
  module). Hence at image tokens ``llm.resid_pre.{k+1} = llm.resid_post.{k} + deepstack_k`` for
  ``k < len(deepstack_visual_indexes)``; elsewhere, and at text tokens, ``resid_pre.{k+1} = resid_post.{k}``.
  ``llm.resid_post.{k}`` is the decoder layer's output before the injection (what HF's ``hidden_states[k+1]``
  holds); editing it does not touch the injection added after it;
- the chat template has no default system turn (Qwen2.5-VL's adds "You are a helpful assistant.");
- the model raises when ``mm_token_type_ids`` is missing with images (``Batch.model_inputs`` always passes it).
"""

from __future__ import annotations

import torch

from lvlm_probe.models.qwen2_5_vl import Qwen2_5_VLAdapter

#: Qwen3-VL's prompt format (the checkpoints' template, without tools and video): one
#: ``<|im_start|>ROLE\n … <|im_end|>\n`` block per turn, images as ``<|vision_start|><|image_pad|><|vision_end|>``,
#: no default system turn.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    """Adapter for Qwen3-VL checkpoints (``model_type == "qwen3_vl"``); the TransformerBridge adapter ``qwen3_vl``
    runs it."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    hf_class_name = "Qwen3VLForConditionalGeneration"

    def default_chat_template(self) -> str:
        return QWEN3_VL_CHAT_TEMPLATE

    @property
    def deepstack_layers(self) -> list[int]:
        """The LLM layers after which DeepStack adds vision features at image tokens (``0 .. n - 1``)."""
        return list(range(len(self.hf_config.vision_config.deepstack_visual_indexes)))

    def window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """No windows: the blocks and the merger keep the processor's merge-unit order."""
        m = self.merge
        return torch.arange(int(sum(t * h * w for t, h, w in grid_thw.tolist())) // (m * m))

    def describe(self) -> dict:
        return {**super().describe(), "deepstack_layers": self.deepstack_layers}
