"""Gemma3 family (``Gemma3ForConditionalGeneration``): SigLIP vision tower, pooling projector, Gemma3 LM.

Owns every Gemma3 fact:

- the placeholder a prompt carries once per image is ``<start_of_image>``, **not** the image token: the processor
  replaces it by the text ``"\\n\\n<start_of_image>" + n × "<image_soft_token>" + "<end_of_image>\\n\\n"`` before
  tokenising, so the image features fill the ``<image_soft_token>`` positions and the begin/end markers and the
  blank lines around them are scaffolding (:meth:`Gemma3Adapter.placeholder_expansion`);
- every image is resized to one square (no tiles, unless pan-and-scan is switched on, which is refused), the
  SigLIP tower gives ``(image_size / patch_size)²`` patches (no CLS token) and the projector average-pools them
  to ``mm_tokens_per_image`` soft tokens on a ``√n × √n`` grid, in raster order;
- the LM reads ``token_type_ids`` (1 at image tokens): with it the soft tokens of one image attend to each other
  bidirectionally; without it HF silently runs a causal mask (logits change by ~0.2 on real checkpoints);
- the chat template (``<start_of_turn>user`` … ``<end_of_turn>``, the assistant turn is ``model``, a system
  message is prepended to the first user turn).
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from lvlm_probe.errors import UnsupportedModelError
from lvlm_probe.models.base import FamilyAdapter, ImageInputs, Site, _unwrap

#: Gemma3's prompt format, written for lvlm_probe (used when a checkpoint ships no template): BOS, then one
#: ``<start_of_turn>ROLE\n … <end_of_turn>\n`` block per turn (the assistant's role is ``model``); a system
#: message opens the first user turn followed by a blank line; images come as ``<start_of_image>``.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% for c in m['content'] %}{% set ns.system = ns.system + (c['text'] | trim) %}{% endfor %}"
    "{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if ns.system %}{{ ns.system }}\n\n{% set ns.system = '' %}{% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}"
    "<end_of_turn>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class Gemma3Adapter(FamilyAdapter):
    """Adapter for Gemma3 vision-language checkpoints (``model_type == "gemma3"``)."""

    family = "gemma3"
    model_types = ("gemma3",)
    image_placeholder = "<start_of_image>"
    hf_class_name = "Gemma3ForConditionalGeneration"
    # the bidirectional attention inside each image reads it; without it HF silently runs a causal mask
    token_type_input = "token_type_ids"

    # ---- facts -------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        """``<image_soft_token>`` (``config.image_token_id``): one per pooled image feature."""
        return int(self.hf_config.image_token_id)

    @property
    def placeholder_token_id(self) -> int:
        """``<start_of_image>`` (``config.boi_token_id``): what the prompt carries once per image."""
        return int(self.hf_config.boi_token_id)

    @property
    def end_of_image_token_id(self) -> int:
        """``<end_of_image>`` (``config.eoi_token_id``)."""
        return int(self.hf_config.eoi_token_id)

    @property
    def n_vision_layers(self) -> int:
        return int(self.hf_config.vision_config.num_hidden_layers)

    @property
    def patches_per_side(self) -> int:
        """SigLIP patches per side of the (square) image: ``image_size // patch_size``."""
        vc = self.hf_config.vision_config
        return int(vc.image_size) // int(vc.patch_size)

    @property
    def tokens_per_side(self) -> int:
        """Soft tokens per side of the pooled grid: ``√mm_tokens_per_image``."""
        n = int(self.hf_config.mm_tokens_per_image)
        side = int(round(n ** 0.5))
        if side * side != n or self.patches_per_side % side:
            raise UnsupportedModelError(f"mm_tokens_per_image={n} is not a square whose side divides the "
                                        f"{self.patches_per_side}-patch side of the image")
        return side

    def template_token_ids(self) -> set[int]:
        """The tokenizer's special ids plus the begin/end-of-image markers (never the soft image token)."""
        ids = super().template_token_ids() | {self.placeholder_token_id, self.end_of_image_token_id}
        ids.discard(self.image_token_id)
        return ids

    # ---- prompts -----------------------------------------------------------------------------
    def default_chat_template(self) -> str:
        return GEMMA3_CHAT_TEMPLATE

    def answer_prefix(self) -> str:
        return ""

    def placeholder_expansion(self, n_tokens: int, images: ImageInputs | None = None,
                              index: int | None = None) -> str:
        """What Gemma3's processor puts in place of one ``<start_of_image>`` before tokenising: a blank line,
        ``<start_of_image>``, ``n_tokens`` soft tokens, ``<end_of_image>`` and a blank line."""
        tok = self.tokenizer
        boi, eoi, soft = tok.convert_ids_to_tokens([self.placeholder_token_id, self.end_of_image_token_id,
                                                    self.image_token_id])
        return f"\n\n{boi}{soft * n_tokens}{eoi}\n\n"

    # ---- images ------------------------------------------------------------------------------
    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        # pan-and-scan would add crops, each its own <start_of_image> block, in a text the processor rewrites
        out = self.image_processor(images=list(images), return_tensors="pt", do_pan_and_scan=False)
        pv = out["pixel_values"]
        if pv.shape[0] != len(images):
            raise UnsupportedModelError(f"the Gemma3 image processor returned {pv.shape[0]} images for "
                                        f"{len(images)}; pan-and-scan crops are not supported")
        side, n_side = self.tokens_per_side, self.patches_per_side
        n = len(images)
        return ImageInputs(
            pixel_values=pv, extras={}, llm_grids=[(side, side)] * n,
            tokens_per_image=[side * side] * n, vision_grids=[(n_side, n_side)] * n,
            pixel_rows=[(k, k + 1) for k in range(n)],  # pixel_values [n_images, 3, H, W]
        )

    # pixel_cells: the base rule (one [3, H, W] image per row; an LLM cell is the square of pixels its
    # kernel × kernel pooled patches cover)

    def image_token_coords(self, grid: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        """Raster order of the pooled grid (the projector flattens the pooled map row by row)."""
        h, w = grid
        coords = [(r, c) for r in range(h) for c in range(w)]
        if n_tokens != len(coords):
            raise ValueError(f"{n_tokens} soft tokens for a {h}x{w} grid")
        return coords

    # ---- logit lens --------------------------------------------------------------------------
    def final_norm(self) -> torch.nn.Module:
        """The Gemma3 text model's final RMSNorm, ``model.language_model.norm``."""
        return _unwrap(self.hf_model.model.language_model.norm)

    def unembed(self) -> torch.nn.Module:
        """``lm_head`` (Gemma3ForConditionalGeneration applies no final logit soft-capping)."""
        return _unwrap(self.hf_model.lm_head)

    # ---- sites -------------------------------------------------------------------------------
    def vision_hook_name(self, site: Site) -> str:
        if site.stem == "vision.resid_post":
            return f"vision_encoder.encoder_layers.{site.layer}.hook_out"
        return {"projector.in": "vision_projector.hook_in", "projector.out": "vision_projector.hook_out"}[site.stem]

    def vision_patches(self, site: Site, tensor: torch.Tensor, images: ImageInputs):
        """Encoder layers and ``projector.in`` hold ``[n_images, patches², d]`` SigLIP patches (no CLS) in raster
        order; ``projector.out`` holds ``[n_images, tokens, d]`` pooled tokens in raster order of the LLM grid."""
        grids = images.llm_grids if site.stem == "projector.out" else images.vision_grids
        if tensor.dim() != 3 or tensor.shape[0] != len(grids):
            raise ValueError(f"{site.name}: tensor of shape {tuple(tensor.shape)}, expected "
                             f"[{len(grids)} images, rows, d]")
        out = []
        for k, (h, w) in enumerate(grids):
            if tensor.shape[1] != h * w:
                raise ValueError(f"{site.name}: image {k} has {tensor.shape[1]} rows, expected {h * w} ({h}x{w})")
            out.append((tensor[k], (h, w)))
        return out
