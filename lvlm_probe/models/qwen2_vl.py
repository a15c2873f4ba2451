"""Qwen2-VL family (``Qwen2VLForConditionalGeneration``): full-attention ViT, 2×2 patch merger, mRoPE Qwen2 LM.

Owns every Qwen2-VL fact that differs from Qwen2.5-VL (whose adapter it extends): the vision blocks run every
image in full attention in the processor's patch order (merge units of ``merge × merge`` patches contiguous,
units in raster order), so there is no window permutation to undo; the merger is ``ln_q`` + a 2-layer MLP. The
chat template is Qwen2.5-VL's (a default system turn "You are a helpful assistant."). The model raises when
``mm_token_type_ids`` is missing with images (``Batch.model_inputs`` always passes it).

TransformerLens 4.3 has no bridge adapter for ``Qwen2VLForConditionalGeneration``: ``lp.load`` runs this family
on the forward-hook fallback (:mod:`lvlm_probe.models.hook_backend`); where a later TransformerLens has one, the
bridge is used and the hook names below are the ones its Qwen2.5-VL adapter uses.
"""

from __future__ import annotations

import torch

from lvlm_probe.models.qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    """Adapter for Qwen2-VL checkpoints (``model_type == "qwen2_vl"``)."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    hf_class_name = "Qwen2VLForConditionalGeneration"

    def window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """No windows: the blocks and the merger keep the processor's merge-unit order."""
        m = self.merge
        return torch.arange(int(sum(t * h * w for t, h, w in grid_thw.tolist())) // (m * m))
