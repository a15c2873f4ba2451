"""LLaVA-OneVision family (``LlavaOnevisionForConditionalGeneration``: SigLIP vision tower, any-resolution tiles with
the ``anyres_max`` shrink, Qwen2 LM in the released checkpoints).

Extends :mod:`lvlm_probe.models.llava_next`; the facts that differ (checked against transformers 5.23,
``models/llava_onevision``):

- **anyres_max**: after unpadding, the high-resolution grid ``(rows, cols)`` of an image is bilinearly resized
  (``nn.functional.interpolate``, ``align_corners=False``) to ``(int(rows // r), int(cols // r))`` when
  ``r = sqrt(rows·cols / (N·g²)) > 1.1``, with ``N`` from ``vision_aspect_ratio = "anyres_max_N"`` (9 in the
  released checkpoints) and ``g`` the base grid side (``LlavaOnevisionModel.pack_image_features``; the processor
  counts the same in ``_get_unpadded_features``). The newline tokens follow the shrunk rows;
- **several images in one item**: the processor gives each image of an item with more than one image only its
  base view (the image padded to a square with the mean colour, then resized; ``pad_to_square``), and the model
  adds one newline after its ``g²`` base tokens. Which items those are is a forward input, ``batch_num_images``
  (images per item that has any): the processor derives it from a list of images **nested per item**; a flat
  list counts every image as an item of its own. lvlm_probe always processes per item
  (:meth:`LlavaOnevisionAdapter.process_item_images`) and ``Batch.model_inputs()`` derives ``batch_num_images``
  from ``Batch.n_images``;
- the SigLIP tower has no CLS token: the released checkpoints use ``vision_feature_select_strategy="full"``
  (``"default"`` would drop a real patch and HF's packing rejects it; refused here);
- the chat template (Qwen2's ``<|im_start|>user\\n<image>…<|im_end|>\\n<|im_start|>assistant\\n``), no BOS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from lvlm_probe.errors import UnsupportedModelError
from lvlm_probe.models.base import ImageInputs
from lvlm_probe.models.llava_next import AnyresLayout, LlavaNextAdapter

#: Qwen2-style prompt format of the released checkpoints, written for lvlm_probe (used when a checkpoint ships
#: none): an optional system turn, then ``<|im_start|>user\n`` + one ``<image>`` per image + the text +
#: ``<|im_end|>\n<|im_start|>assistant\n``.
LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class OnevisionLayout(AnyresLayout):
    """:class:`~lvlm_probe.models.llava_next.AnyresLayout` plus what OneVision adds.

    Attributes
    ----------
    high : (rows, cols)
        The unpadded high-resolution grid **before** the shrink (where each crop row lies; ``offset`` as in
        LLaVA-NeXT).
    shrunk : (rows, cols)
        The grid the LLM receives (tile 1): ``high`` after the ``anyres_max`` shrink, or ``high`` itself.
    patched : bool
        False for an image of an item with several images: base view only (``n_crops == 0``), then one newline.
    """

    shrunk: tuple[int, int] = (0, 0)
    patched: bool = True

    @property
    def n_crops(self) -> int:
        return self.crops[0] * self.crops[1] if self.patched else 0

    @property
    def shrinks(self) -> bool:
        """Whether the ``anyres_max`` shrink resized the high-resolution grid."""
        return self.patched and self.shrunk != self.high

    @property
    def n_tokens(self) -> int:
        """Base grid + (shrunk grid + one newline per row), or base grid + one newline without crops."""
        base = self.base[0] * self.base[1]
        return base + (self.shrunk[0] * (self.shrunk[1] + 1) if self.patched else 1)


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """Adapter for LLaVA-OneVision checkpoints (``model_type == "llava_onevision"``)."""

    family = "llava_onevision"
    model_types = ("llava_onevision",)
    image_placeholder = "<image>"
    hf_class_name = "LlavaOnevisionForConditionalGeneration"
    images_per_item_input = "batch_num_images"

    # ---- facts -------------------------------------------------------------------------------
    @property
    def anyres_max(self) -> int:
        """``N`` of ``vision_aspect_ratio = "anyres_max_N"`` (the model's config, which its forward reads)."""
        spec = str(getattr(self.hf_config, "vision_aspect_ratio", "anyres_max_9"))
        if not spec.startswith("anyres_max_") or not spec[len("anyres_max_"):].isdigit():
            raise UnsupportedModelError(f"vision_aspect_ratio={spec!r}: lvlm_probe reads 'anyres_max_N' only")
        return int(spec[len("anyres_max_"):])

    def _check_strategy(self) -> None:
        strategy = getattr(self.hf_config, "vision_feature_select_strategy", "full")
        if strategy != "full":
            raise UnsupportedModelError(f"vision_feature_select_strategy={strategy!r}: LLaVA-OneVision's SigLIP "
                                        "tower has no CLS token, so HF packs its tiles only with 'full' (the "
                                        "released checkpoints' setting); lvlm_probe supports 'full'")

    def layout(self, size: Sequence[int], patched: bool = True) -> OnevisionLayout:
        """The layout of an image of ``size = (height, width)`` original pixels; ``patched=False`` for an image of
        an item with several images (base view only)."""
        lay = super().layout(size)
        rows, cols = lay.high
        g = lay.base[0]
        # HF's rule (pack_image_features, _get_unpadded_features), the same float expressions
        ratio = math.sqrt(rows * cols / (self.anyres_max * g ** 2))
        shrunk = (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)
        return OnevisionLayout(size=lay.size, canvas=lay.canvas, crops=lay.crops, base=lay.base, high=lay.high,
                               offset=lay.offset, shrunk=shrunk, patched=patched)

    def _layout_of(self, images: ImageInputs, k: int) -> OnevisionLayout:
        """Image ``k``'s layout. Whether it was cut into crops is read from its tiles (``process_item_images``
        gives an image of a multi-image item one tile, the base view), which ``Batch.select`` keeps with it."""
        return self.layout(images.extras["image_sizes"][k].tolist(), patched=len(images.tiles(k)) > 1)

    # ---- prompts -----------------------------------------------------------------------------
    def default_chat_template(self) -> str:
        return LLAVA_ONEVISION_CHAT_TEMPLATE

    def answer_prefix(self) -> str:
        return ""  # the generation prompt ends with a newline

    # ---- images ------------------------------------------------------------------------------
    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        """Every image as the only image of its item (crops, the ``anyres_max`` shrink)."""
        return self.process_item_images([[im] for im in images])

    def process_item_images(self, per_item: Sequence[Sequence[Image.Image]]) -> ImageInputs:
        """HF's image processor on the images nested per item: an item with one image gets the base view and the
        crops, an item with several images the base view of each (padded to a square)."""
        self._check_strategy()
        nested = [list(ims) for ims in per_item if len(ims)]
        out = self.image_processor(images=nested, return_tensors="pt")
        pv, sizes = out["pixel_values"], out["image_sizes"]
        if pv.dim() != 5 or tuple(pv.shape[-2:]) != (self.image_size, self.image_size):
            raise UnsupportedModelError(f"the LLaVA-OneVision image processor returned pixel_values of shape "
                                        f"{tuple(pv.shape)}; expected [images, crops, 3, {self.image_size}, "
                                        f"{self.image_size}] (do_pad and crops of vision_config.image_size)")
        patched = [len(ims) == 1 for ims in nested for _ in ims]
        lays = [self.layout(s, p) for s, p in zip(sizes.tolist(), patched)]
        return ImageInputs(
            pixel_values=pv, extras={"image_sizes": sizes},
            llm_grids=[lay.base for lay in lays], tokens_per_image=[lay.n_tokens for lay in lays],
            vision_grids=[lay.base for lay in lays],
            pixel_rows=[(k, k + 1) for k in range(len(lays))],  # pixel_values [n_images, crops + 1, 3, S, S]
            tile_grids=[[lay.base, lay.shrunk] if lay.patched else [lay.base] for lay in lays],
        )

    def image_token_layout(self, images: ImageInputs, k: int) -> list[tuple[int, int, int]]:
        """Tile 0: the base grid in raster order. With crops, tile 1: the (shrunk) high-resolution grid in raster
        order, each row followed by its newline ``(1, -1, -1)``; without (an item with several images): one
        newline ``(0, -1, -1)`` after the base grid."""
        lay = self._layout_of(images, k)
        (h, w), (rows, cols) = lay.base, lay.shrunk
        out = [(0, r, c) for r in range(h) for c in range(w)]
        if not lay.patched:
            return out + [(0, -1, -1)]
        for r in range(rows):
            out.extend((1, r, c) for c in range(cols))
            out.append((1, -1, -1))
        return out

    def pixel_cells(self, pixels: torch.Tensor, grid: tuple[int, int], images: ImageInputs | None = None,
                    index: int | None = None) -> torch.Tensor:
        """As LLaVA-NeXT: base-view pixel ``(y, x)`` → cell ``(y·h // S, x·w // S)`` and crop pixels by the image
        position they show (the shrink does not move them). An image of a multi-image item has only its base
        view (the image padded to a square): each pixel goes to the cell of the token that reads it, padding
        included; the zero crops that pad the batch repeat the base view's cells."""
        return super().pixel_cells(pixels, grid, images=images, index=index)

    def vision_patches(self, site, tensor, images):
        """The vision tower and the projector run on the base view and crops of every image with crops and on the
        base view alone of every image of a multi-image item (``[Σ views, g², d]``, no CLS). Per image its
        **base view** (tile 0) comes out on the base grid in raster order: the rows the LLM receives at its
        tile-0 tokens."""
        return super().vision_patches(site, tensor, images)

    def grid_sums(self, site, tensor, images):
        """``projector.out`` rows of each image summed onto its base grid: the base view's rows one per cell; each
        crop row placed on the unpadded high-resolution grid (before the shrink, which mixes neighbouring rows),
        dropped when ``unpad_image`` removes it, else added to the base cell covering the same part of the
        image. An image without crops: its base rows."""
        return super().grid_sums(site, tensor, images)
