"""LLaVA-1.5 family (``LlavaForConditionalGeneration``: CLIP/SigLIP vision tower + Llama-style LM).

Owns every LLaVA fact: the ``<image>`` token, one LLM token per vision patch (the grid is
``image_size / patch_size`` per side, e.g. 24×24 for llava-1.5 at 336 px with 14 px patches),
the CLS token the "default" feature strategy drops, and the ``USER: <image>\\n… ASSISTANT:`` template.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from lvlm_probe.models.base import FamilyAdapter, ImageInputs, Site, _unwrap

#: llava-1.5 prompt format (as the llava-hf checkpoints' chat template renders it).
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %} "
    "{% elif m['role'] == 'user' %}USER: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


class LlavaConfigFacts:
    """Facts every LLaVA-lineage config states the same way (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision)."""

    hf_config: Any

    @property
    def image_token_id(self) -> int:
        cfg = self.hf_config
        tid = getattr(cfg, "image_token_id", None)
        if tid is None:
            tid = cfg.image_token_index
        return int(tid)

    @property
    def n_vision_layers(self) -> int:
        return int(self.hf_config.vision_config.num_hidden_layers)

    @property
    def patch_size(self) -> int:
        return int(self.hf_config.vision_config.patch_size)


class LlavaAdapter(LlavaConfigFacts, FamilyAdapter):
    """Adapter for LLaVA-1.5-style checkpoints (``model_type == "llava"``)."""

    family = "llava"
    model_types = ("llava",)
    image_placeholder = "<image>"
    hf_class_name = "LlavaForConditionalGeneration"

    @property
    def keeps_cls(self) -> bool:
        """True when the projector also receives the CLS token ("full" feature strategy)."""
        return getattr(self.hf_config, "vision_feature_select_strategy", "default") == "full"

    def default_chat_template(self) -> str:
        return LLAVA_CHAT_TEMPLATE

    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        out = self.image_processor(images=list(images), return_tensors="pt")
        pv = out["pixel_values"]
        h, w = int(pv.shape[-2]) // self.patch_size, int(pv.shape[-1]) // self.patch_size
        n_tok = h * w + (1 if self.keeps_cls else 0)
        grids = [(h, w)] * len(images)
        return ImageInputs(
            pixel_values=pv, extras={}, llm_grids=grids, tokens_per_image=[n_tok] * len(images), vision_grids=grids,
            pixel_rows=[(k, k + 1) for k in range(len(images))],  # pixel_values [n_images, 3, H, W]
        )

    # pixel_cells: the base rule (one [3, H, W] image per row, patch_size x patch_size pixels per LLM token)

    def final_norm(self) -> torch.nn.Module:
        """The Llama-style LM's final RMSNorm, ``model.language_model.norm``."""
        return _unwrap(self.hf_model.model.language_model.norm)

    def projector_module(self) -> torch.nn.Module:
        """``model.multi_modal_projector`` (the two-layer MLP; its input: the selected vision features)."""
        return _unwrap(self.hf_model.model.multi_modal_projector)

    def image_token_coords(self, grid: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        """(row, col) of each of one image's LLM tokens, in sequence order ((-1, -1) for CLS)."""
        h, w = grid
        coords = [(r, c) for r in range(h) for c in range(w)]
        return [(-1, -1)] * (n_tokens - h * w) + coords

    def vision_hook_name(self, site: Site) -> str:
        if site.stem == "vision.resid_post":
            return f"vision_encoder.encoder_layers.{site.layer}.hook_out"
        return {"projector.in": "vision_projector.hook_in", "projector.out": "vision_projector.hook_out"}[site.stem]

    def vision_patches(self, site: Site, tensor: torch.Tensor, images: ImageInputs):
        # Encoder layers carry CLS + patches; projector tensors carry CLS only under "full".
        out = []
        for k, grid in enumerate(images.vision_grids):
            n = grid[0] * grid[1]
            t = tensor[k]
            if t.shape[0] == n + 1:
                t = t[1:]
            elif t.shape[0] != n:
                raise ValueError(f"{site.name}: image {k} has {t.shape[0]} rows, expected {n} patches (+CLS)")
            out.append((t, grid))
        return out
