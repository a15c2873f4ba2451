"""Mistral3 family (``Mistral3ForConditionalGeneration``): Pixtral vision encoder, patch merger, Mistral LM.

Owns every Mistral3 fact (checked against transformers 5.23, ``models/mistral3`` and ``models/pixtral``):

- the image processor (``PixtralImageProcessor``) keeps each image's aspect ratio: an image whose longest edge is
  above ``size["longest_edge"]`` is scaled down to it (a smaller one is **not** scaled up), and each side is then
  rounded **up** to a whole number of ``patch_size × spatial_merge_size`` pixels (the processor passes that product
  as the image processor's ``patch_size``). ``image_sizes`` ``[n_images, 2]`` is the resized ``(height, width)``;
  ``pixel_values`` ``[n_images, 3, H, W]`` pads every image with zeros at the bottom and right to the batch's largest
  height and width. The model reads only each image's own ``image_sizes`` pixels;
- the Pixtral tower runs every image's ``(h / p) × (w / p)`` patches (no CLS) as **one** sequence
  ``[1, Σ patches, d]``, image after image, each in raster order, with a block-diagonal attention mask (an image
  attends only to itself) and 2-D rotary positions;
- the projector (``Mistral3MultiModalProjector``): RMSNorm, then the patch merger concatenates each
  ``spatial_merge_size × spatial_merge_size`` block of patches (``unfold``) and maps it to one vector, then a
  2-layer MLP; one LLM token per block, ``(h / (p·m)) × (w / (p·m))`` per image, in raster order. The projector's
  input is the tower's layer ``vision_feature_layer`` (-1: the last; Pixtral has no final norm);
- the processor (``PixtralProcessor.replace_image_token``) rewrites each ``[IMG]`` of the text into, per row of the
  token grid, ``cols`` × ``[IMG]`` then ``[IMG_BREAK]``, the last ``[IMG_BREAK]`` replaced by ``[IMG_END]``. Only the
  ``[IMG]`` positions receive image features; ``[IMG_BREAK]`` / ``[IMG_END]`` are ordinary embedded tokens (the
  ``separator`` role here);
- the chat template (Mistral's ``<s>[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]``).

TransformerLens 4.3's bridge adapter (``Mistral3ArchitectureAdapter``) wraps the Pixtral tower **opaquely** (one
component, no per-layer hooks), so the bridge cannot hook ``vision.resid_post.{l}``. The family therefore runs on
the forward-hook fallback by default (``bridge_missing_sites``), where every canonical site is served;
``lp.load(..., backend="bridge")`` gives the bridge with every other site.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
from PIL import Image

from lvlm_probe.errors import UnsupportedModelError
from lvlm_probe.models.base import FamilyAdapter, ImageInputs, Site, _unwrap

#: The text markers Pixtral's processor writes after each row of an image's tokens.
IMAGE_TOKEN = "[IMG]"
IMAGE_BREAK = "[IMG_BREAK]"
IMAGE_END = "[IMG_END]"

#: Mistral's prompt format (v7 style), written for lvlm_probe (used when a checkpoint ships none): BOS, a system
#: message inside ``[SYSTEM_PROMPT] … [/SYSTEM_PROMPT]``, each user turn ``[INST]`` + one ``[IMG]`` per image + the
#: text + ``[/INST]``, each assistant turn its text and EOS.
MISTRAL3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{% for c in m['content'] %}{{ c['text'] }}{% endfor %}"
    "[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}[IMG]{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}[/INST]"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}"
    "{% endif %}{% endfor %}"
)


class Mistral3Adapter(FamilyAdapter):
    """Adapter for Mistral3 (Mistral-Small-3.x vision) checkpoints (``model_type == "mistral3"``)."""

    family = "mistral3"
    model_types = ("mistral3",)
    image_placeholder = IMAGE_TOKEN
    hf_class_name = "Mistral3ForConditionalGeneration"
    bridge_missing_sites: ClassVar[dict[str, str]] = {
        "vision.resid_post": "TransformerLens' Mistral3 bridge wraps the Pixtral vision tower as one opaque "
                             "component (no per-layer hooks); load with backend='hooks' (the default for mistral3)",
    }
    _separators: set[int] | None = None

    # ---- facts -------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        """``[IMG]`` (``config.image_token_index``): one per merged image feature."""
        return int(self.hf_config.image_token_id)

    @property
    def n_vision_layers(self) -> int:
        return int(self.hf_config.vision_config.num_hidden_layers)

    @property
    def patch_size(self) -> int:
        return int(self.hf_config.vision_config.patch_size)

    @property
    def merge(self) -> int:
        """Patches merged per side into one LLM token (``config.spatial_merge_size``)."""
        return int(self.hf_config.spatial_merge_size)

    @property
    def token_pixels(self) -> int:
        """Pixels per side of one LLM token: ``patch_size × spatial_merge_size``."""
        return self.patch_size * self.merge

    def separator_token_ids(self) -> set[int]:
        """``[IMG_BREAK]`` and ``[IMG_END]`` (the row ends of an expanded image); ids the tokenizer lacks are left
        out."""
        if self._separators is None:
            ids = {self.tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_BREAK, IMAGE_END)}
            unk = self.tokenizer.unk_token_id
            self._separators = {int(i) for i in ids if i is not None and i != unk and i != self.image_token_id}
        return set(self._separators)

    # ---- prompts -----------------------------------------------------------------------------
    def default_chat_template(self) -> str:
        return MISTRAL3_CHAT_TEMPLATE

    def answer_prefix(self) -> str:
        return ""

    def placeholder_expansion(self, n_tokens: int, images: ImageInputs | None = None,
                              index: int | None = None) -> str:
        """What ``PixtralProcessor.replace_image_token`` writes for one ``[IMG]``: per row of the image's token grid,
        ``cols`` × ``[IMG]`` + ``[IMG_BREAK]``, the last ``[IMG_BREAK]`` being ``[IMG_END]``. Without ``images``:
        ``n_tokens`` image tokens on one row."""
        rows, cols = (1, n_tokens) if images is None or index is None else images.llm_grids[index]
        if rows * cols != n_tokens:
            raise ValueError(f"{n_tokens} image tokens for a {rows}x{cols} grid")
        row = IMAGE_TOKEN * cols
        return (row + IMAGE_BREAK) * (rows - 1) + row + IMAGE_END

    # ---- images ------------------------------------------------------------------------------
    def resized_size(self, image: Image.Image) -> tuple[int, int]:
        """``(height, width)`` the image processor gives ``image`` (HF's own rule), or ValueError naming the minimum
        when a side would become 0 pixels (a strip whose short side vanishes when its long side is scaled down)."""
        from transformers.models.pixtral.image_processing_pil_pixtral import get_resize_output_image_size

        L = int(self.image_processor.size["longest_edge"])
        tp = self.token_pixels
        h, w = image.height, image.width
        out = get_resize_output_image_size(torch.zeros(3, h, w).numpy(), size=(L, L), patch_size=(tp, tp),
                                           input_data_format="channels_first")
        if min(out) <= 0:
            need = max(1, math.ceil(max(h, w) / L))
            raise ValueError(f"scaled to the processor's longest edge of {L} px its short side becomes 0 px; a "
                             f"{max(h, w)} px long side needs a short side of at least {need} px (the minimum size)")
        return int(out[0]), int(out[1])

    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        """The image processor with ``patch_size = patch_size × spatial_merge_size`` (what the processor passes):
        ``pixel_values`` ``[n_images, 3, H_max, W_max]`` zero-padded, ``image_sizes`` ``[n_images, 2]``."""
        for im in images:
            self.resized_size(im)
        tp = self.token_pixels
        out = self.image_processor(images=list(images), return_tensors="pt",
                                   patch_size={"height": tp, "width": tp})
        pv, sizes = out["pixel_values"], out["image_sizes"]
        if not isinstance(pv, torch.Tensor) or pv.dim() != 4 or pv.shape[0] != len(images):
            raise UnsupportedModelError("the Pixtral image processor returned unpadded images; lvlm_probe needs "
                                        "do_pad=True (the processor's default)")
        sizes = torch.as_tensor(sizes, dtype=torch.long).reshape(len(images), 2)
        llm, vision = [], []
        for h, w in sizes.tolist():
            if h % tp or w % tp:
                raise UnsupportedModelError(f"an image resized to {h}x{w} px is not a multiple of patch_size x "
                                            f"spatial_merge_size = {tp} px")
            llm.append((h // tp, w // tp))
            vision.append((h // self.patch_size, w // self.patch_size))
        return ImageInputs(
            pixel_values=pv, extras={"image_sizes": sizes}, llm_grids=llm, tokens_per_image=[h * w for h, w in llm],
            vision_grids=vision, pixel_rows=[(k, k + 1) for k in range(len(images))],  # [n_images, 3, H, W]
        )

    def image_token_coords(self, grid: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        """Raster order of the merged grid (the ``[IMG_BREAK]`` between rows are not image tokens)."""
        h, w = grid
        if n_tokens != h * w:
            raise ValueError(f"{n_tokens} image tokens for a {h}x{w} grid")
        return [(r, c) for r in range(h) for c in range(w)]

    def pixel_cells(self, pixels: torch.Tensor, grid: tuple[int, int], images: ImageInputs | None = None,
                    index: int | None = None) -> torch.Tensor:
        """One ``[1, 3, H_max, W_max]`` row per image, the image in its top-left ``image_sizes`` corner: pixel
        ``(y, x)`` feeds token ``(y // t, x // t)``, ``t = patch_size × spatial_merge_size``. The batch padding
        (never read by the model) gets the nearest cell, so every element has one."""
        if pixels.dim() != 4 or pixels.shape[0] != 1:
            raise UnsupportedModelError(f"Mistral3 has no pixel-cell rule for pixel rows of shape {tuple(pixels.shape)}")
        h, w = grid
        if images is not None and index is not None:
            H, W = (int(v) for v in images.extras["image_sizes"][index].tolist())
        else:
            H, W = int(pixels.shape[-2]), int(pixels.shape[-1])
        if H != h * self.token_pixels or W != w * self.token_pixels:
            raise ValueError(f"{H}x{W} px, not its {h}x{w} grid of {self.token_pixels}-px tokens")
        t = self.token_pixels
        dev = pixels.device
        ys = (torch.arange(pixels.shape[-2], device=dev) // t).clamp(max=h - 1)
        xs = (torch.arange(pixels.shape[-1], device=dev) // t).clamp(max=w - 1)
        return (ys[:, None] * w + xs[None, :]).expand(pixels.shape).clone()

    # ---- logit lens --------------------------------------------------------------------------
    def final_norm(self) -> torch.nn.Module:
        """The Mistral LM's final RMSNorm, ``model.language_model.norm``."""
        return _unwrap(self.hf_model.model.language_model.norm)

    def unembed(self) -> torch.nn.Module:
        return _unwrap(self.hf_model.lm_head)

    # ---- HF modules of the forward-hook fallback ---------------------------------------------
    def llm_layer_modules(self) -> Sequence[torch.nn.Module]:
        return [_unwrap(m) for m in self.hf_model.model.language_model.layers]

    def vision_block_modules(self) -> Sequence[torch.nn.Module]:
        """Pixtral's attention layers, ``model.vision_tower.transformer.layers``."""
        return [_unwrap(m) for m in _unwrap(self.hf_model.model.vision_tower).transformer.layers]

    def projector_module(self) -> torch.nn.Module:
        """``model.multi_modal_projector`` (norm, patch merger, MLP); its first input is the selected layer."""
        return _unwrap(self.hf_model.model.multi_modal_projector)

    # ---- sites -------------------------------------------------------------------------------
    def vision_hook_name(self, site: Site) -> str:
        if site.stem == "vision.resid_post":
            return f"vision_encoder.encoder_layers.{site.layer}.hook_out"
        return {"projector.in": "vision_projector.hook_in", "projector.out": "vision_projector.hook_out"}[site.stem]

    def vision_patches(self, site: Site, tensor: torch.Tensor, images: ImageInputs):
        """Every image's rows one after the other, each in raster order: the tower's layers ``[1, Σ patches, d]``
        and ``projector.in`` ``[Σ patches, d]`` on the ``(h/p) × (w/p)`` patch grid; ``projector.out``
        ``[Σ tokens, d]`` on the merged token grid (the LLM's input at the image's ``[IMG]`` positions)."""
        grids = images.llm_grids if site.stem == "projector.out" else images.vision_grids
        t = tensor[0] if tensor.dim() == 3 and tensor.shape[0] == 1 else tensor
        n = sum(h * w for h, w in grids)
        if t.dim() != 2 or t.shape[0] != n:
            raise ValueError(f"{site.name}: tensor of shape {tuple(tensor.shape)}, expected [{n} rows, d] (the "
                             f"images' {'tokens' if site.stem == 'projector.out' else 'patches'} one after another)")
        out, r0 = [], 0
        for h, w in grids:
            out.append((t[r0:r0 + h * w], (h, w)))
            r0 += h * w
        return out
