"""LLaVA-NeXT family (``LlavaNextForConditionalGeneration``: CLIP vision tower, any-resolution tiles, Llama/Mistral LM).

Owns every LLaVA-NeXT fact (checked against transformers 5.23, ``models/llava_next``):

- one ``<image>`` placeholder becomes ``n`` copies of the image token, ``n`` = base grid + unpadded
  high-resolution grid + one newline per row of it (``LlavaNextProcessor._get_number_of_features``);
- the image processor gives, per image, a **base view** (the whole image squashed to ``image_size`` square) and
  the crops of the best-fitting ``image_grid_pinpoints`` canvas (the image resized with its aspect ratio kept and
  centred on the canvas, cut into ``image_size`` squares in raster order); ``pixel_values`` is
  ``[n_images, max_crops + 1, 3, S, S]``, padded with zero crops to the batch's largest count, and
  ``image_sizes`` ``[n_images, 2]`` (original height, width) is a forward input: the model derives each image's
  crop count and canvas from it (``image_size_to_num_patches``, ``get_anyres_image_grid_shape``);
- the model (``LlavaNextModel.pack_image_features``) lays out one image's features as the base view's
  ``(S/p)²`` patches in raster order (**tile 0**), then the crops' patches assembled into one
  ``(rows·S/p) × (cols·S/p)`` grid, the rows/columns of the canvas padding removed (``unpad_image``), in raster
  order with the learned ``image_newline`` vector after each row (**tile 1**). Every one of these positions is
  an ``<image>`` id in ``input_ids``; the newline positions sit on no grid cell (coordinates ``(-1, -1)``);
- vision features come from ``vision_feature_layer`` with CLS dropped (``vision_feature_select_strategy ==
  "default"``; ``"full"`` cannot be packed into the tile grids by HF and is refused);
- the chat template (llava-v1.6-mistral's ``[INST] <image>\\n… [/INST]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from lvlm_probe.errors import UnsupportedModelError
from lvlm_probe.models.llava import LlavaConfigFacts
from lvlm_probe.models.base import FamilyAdapter, ImageInputs, Site, _unwrap

#: llava-v1.6-mistral's prompt format, written for lvlm_probe (used when a checkpoint ships no template): a system
#: message first, then ``[INST] `` + one ``<image>\n`` per image + the text + `` [/INST]``; the tokenizer adds BOS.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{{ '\\n' }}"
    "{% elif m['role'] == 'user' %}[INST] "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]"
    "{% else %} {% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class AnyresLayout:
    """Where one image's crops and tokens go (all from its original size and the pinpoints).

    Attributes
    ----------
    size : (height, width)
        The original image size (``image_sizes``).
    canvas : (height, width)
        The best-fitting pinpoint resolution (``select_best_resolution``).
    crops : (rows, cols)
        Crops of the canvas, ``canvas / image_size``.
    base : (rows, cols)
        Token grid of the base view (tile 0), ``image_size / patch_size`` per side.
    high : (rows, cols)
        Token grid of the high-resolution tile (tile 1) after unpadding.
    offset : (rows, cols)
        Rows and columns of the full crop grid removed before ``high`` starts (the canvas padding).
    """

    size: tuple[int, int]
    canvas: tuple[int, int]
    crops: tuple[int, int]
    base: tuple[int, int]
    high: tuple[int, int]
    offset: tuple[int, int]

    @property
    def n_crops(self) -> int:
        """Crops of the canvas (the pixel rows of the image are ``1 + n_crops``: the base view first)."""
        return self.crops[0] * self.crops[1]

    @property
    def n_tokens(self) -> int:
        """LLM tokens of the image: base grid + high grid + one newline per row of the high grid."""
        return self.base[0] * self.base[1] + self.high[0] * (self.high[1] + 1)


class LlavaNextAdapter(LlavaConfigFacts, FamilyAdapter):
    """Adapter for LLaVA-NeXT (1.6) checkpoints (``model_type == "llava_next"``)."""

    family = "llava_next"
    model_types = ("llava_next",)
    image_placeholder = "<image>"
    hf_class_name = "LlavaNextForConditionalGeneration"

    # ---- facts -------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of the base view and of every crop in pixels (``vision_config.image_size``)."""
        return int(self.hf_config.vision_config.image_size)

    @property
    def grid_pinpoints(self) -> list[list[int]]:
        return [list(map(int, p)) for p in self.hf_config.image_grid_pinpoints]

    def _check_strategy(self) -> None:
        strategy = getattr(self.hf_config, "vision_feature_select_strategy", "default")
        if strategy != "default":
            raise UnsupportedModelError(f"vision_feature_select_strategy={strategy!r}: HF packs LLaVA-NeXT's tiles "
                                        "only without the CLS token ('default'); lvlm_probe supports 'default'")

    def layout(self, size: Sequence[int]) -> AnyresLayout:
        """The any-resolution layout of an image of ``size = (height, width)`` original pixels.

        The same rules as HF's model (``get_anyres_image_grid_shape``, ``unpad_image``) and processor
        (``_get_unpadded_features``), written out here so that every token gets its tile and cell.
        """
        from transformers.image_processing_utils import select_best_resolution  # HF's own canvas choice

        H, W = int(size[0]), int(size[1])
        S, p = self.image_size, self.patch_size
        ch, cw = select_best_resolution((H, W), self.grid_pinpoints)
        nph, npw = ch // S, cw // S
        g = S // p
        rows, cols = nph * g, npw * g
        top = left = 0
        if W / H > cols / rows:  # wider than the canvas: rows of padding above and below
            new_h = int(round(H * (cols / W), 7))
            top = (rows - new_h) // 2
            rows -= 2 * top
        else:
            new_w = int(round(W * (rows / H), 7))
            left = (cols - new_w) // 2
            cols -= 2 * left
        return AnyresLayout(size=(H, W), canvas=(ch, cw), crops=(nph, npw), base=(g, g), high=(rows, cols),
                            offset=(top, left))

    def _layout_of(self, images: ImageInputs, k: int) -> AnyresLayout:
        """The layout of image ``k`` of a processed batch (from its ``image_sizes`` row)."""
        return self.layout(images.extras["image_sizes"][k].tolist())

    def _layouts(self, images: ImageInputs) -> list[AnyresLayout]:
        return [self._layout_of(images, k) for k in range(len(images.extras["image_sizes"]))]

    # ---- prompts -----------------------------------------------------------------------------
    def default_chat_template(self) -> str:
        return LLAVA_NEXT_CHAT_TEMPLATE

    # ---- images ------------------------------------------------------------------------------
    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        self._check_strategy()
        out = self.image_processor(images=list(images), return_tensors="pt")
        pv, sizes = out["pixel_values"], out["image_sizes"]
        if pv.dim() != 5 or tuple(pv.shape[-2:]) != (self.image_size, self.image_size):
            raise UnsupportedModelError(f"the LLaVA-NeXT image processor returned pixel_values of shape "
                                        f"{tuple(pv.shape)}; expected [images, crops, 3, {self.image_size}, "
                                        f"{self.image_size}] (do_pad and crops of vision_config.image_size)")
        lays = [self.layout(s) for s in sizes.tolist()]
        return ImageInputs(
            pixel_values=pv, extras={"image_sizes": sizes},
            llm_grids=[lay.base for lay in lays], tokens_per_image=[lay.n_tokens for lay in lays],
            vision_grids=[lay.base for lay in lays],
            pixel_rows=[(k, k + 1) for k in range(len(lays))],  # pixel_values [n_images, crops + 1, 3, S, S]
            tile_grids=[[lay.base, lay.high] for lay in lays],
        )

    def image_token_coords(self, grid: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        """Only the base grid follows from the grid alone; the tiles need the image size: use
        :meth:`image_token_layout`."""
        raise UnsupportedModelError("LLaVA-NeXT's token layout depends on the image size; use image_token_layout")

    def image_token_layout(self, images: ImageInputs, k: int) -> list[tuple[int, int, int]]:
        """Tile 0: the base grid in raster order; tile 1: the unpadded high-resolution grid in raster order, each
        row followed by its newline token ``(1, -1, -1)``."""
        lay = self._layout_of(images, k)
        (h, w), (rows, cols) = lay.base, lay.high
        out = [(0, r, c) for r in range(h) for c in range(w)]
        for r in range(rows):
            out.extend((1, r, c) for c in range(cols))
            out.append((1, -1, -1))
        return out

    def channel_view(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[images, crops, C, S, S]`` as ``[images·crops, C, S·S]`` (a view)."""
        C = pixel_values.shape[-3]
        return pixel_values.reshape(-1, C, pixel_values.shape[-2] * pixel_values.shape[-1])

    def pixel_cells(self, pixels: torch.Tensor, grid: tuple[int, int], images: ImageInputs | None = None,
                    index: int | None = None) -> torch.Tensor:
        """Cells of the base grid (the attribution grid, ``llm_grids``) by image position.

        Base view (crop 0, the image squashed to ``S`` square): pixel ``(y, x)`` → cell ``(y·h // S, x·w // S)``.
        Crop ``q`` of the canvas: its pixel is placed on the canvas, mapped back through the centring and the
        aspect-keeping resize to a point of the original image, and gets the base cell that covers that point;
        canvas padding goes to the nearest cell; zero crops that only pad the batch (never read by the model)
        repeat the base view's cells. So occluding a cell removes that region of the image from both views.
        """
        if images is None or index is None or "image_sizes" not in images.extras:
            raise UnsupportedModelError("LLaVA-NeXT's cell rule needs the image's size: pass images= and index=")
        if pixels.dim() != 5 or pixels.shape[0] != 1:
            raise UnsupportedModelError(f"LLaVA-NeXT has no pixel-cell rule for pixel rows of shape "
                                        f"{tuple(pixels.shape)}")
        h, w = grid
        S = int(pixels.shape[-1])
        if pixels.shape[-2] != S or S % h or S % w:
            raise ValueError(f"{pixels.shape[-2]}x{S} px, not a multiple of its {h}x{w} grid")
        lay = self._layout_of(images, index)
        dev = pixels.device
        base_y = torch.arange(S, device=dev) * h // S
        base_x = torch.arange(S, device=dev) * w // S
        base = base_y[:, None] * w + base_x[None, :]
        per_crop = [base] * pixels.shape[1]
        (H0, W0), (ch, cw) = lay.size, lay.canvas
        # the aspect-keeping resize onto the canvas (HF's get_patch_output_size) and its centring
        if cw / W0 < ch / H0:
            nw, nh = cw, min(math.ceil(H0 * cw / W0), ch)
        else:
            nh, nw = ch, min(math.ceil(W0 * ch / H0), cw)
        top, left = (ch - nh) // 2, (cw - nw) // 2
        for q in range(min(lay.n_crops, pixels.shape[1] - 1)):
            i, j = divmod(q, lay.crops[1])
            # integer arithmetic: the pixel centre (2Y + 1) / 2 of canvas row Y, as a fraction of the resized image
            ys = ((2 * (torch.arange(S, device=dev) + i * S - top) + 1) * h).div(2 * nh, rounding_mode="floor")
            xs = ((2 * (torch.arange(S, device=dev) + j * S - left) + 1) * w).div(2 * nw, rounding_mode="floor")
            per_crop[1 + q] = ys.clamp(0, h - 1)[:, None] * w + xs.clamp(0, w - 1)[None, :]
        cells = torch.stack(per_crop)  # [crops + 1, S, S]
        return cells[None, :, None].expand(pixels.shape).clone()

    # ---- logit lens --------------------------------------------------------------------------
    def final_norm(self) -> torch.nn.Module:
        """The LM's final RMSNorm, ``model.language_model.norm``."""
        return _unwrap(self.hf_model.model.language_model.norm)

    def unembed(self) -> torch.nn.Module:
        return _unwrap(self.hf_model.lm_head)

    # ---- sites -------------------------------------------------------------------------------
    def vision_hook_name(self, site: Site) -> str:
        if site.stem == "vision.resid_post":
            return f"vision_encoder.encoder_layers.{site.layer}.hook_out"
        return {"projector.in": "vision_projector.hook_in", "projector.out": "vision_projector.hook_out"}[site.stem]

    def vision_patches(self, site: Site, tensor: torch.Tensor, images: ImageInputs):
        """The vision tower and the projector run on every crop of every image, ``[Σ (1 + crops), rows, d]``
        (the encoder's rows start with CLS). Per image, its **base view** (tile 0, its first crop) comes out on
        the base grid, in raster order: the same rows the LLM receives at the image's tile-0 tokens. The
        high-resolution crops are not returned per patch."""
        lays = self._layouts(images)
        n_rows = sum(1 + lay.n_crops for lay in lays)
        if tensor.shape[0] != n_rows:
            raise ValueError(f"{site.name}: tensor of shape {tuple(tensor.shape)}, expected {n_rows} crops "
                             "(base view + crops per image)")
        out, off = [], 0
        for k, lay in enumerate(lays):
            h, w = lay.base
            t = tensor[off]
            if t.shape[0] == h * w + 1:
                t = t[1:]
            elif t.shape[0] != h * w:
                raise ValueError(f"{site.name}: image {k} has {t.shape[0]} rows, expected {h * w} patches (+CLS)")
            out.append((t, (h, w)))
            off += 1 + lay.n_crops
        return out

    def grid_sums(self, site: Site, tensor: torch.Tensor, images: ImageInputs) -> list[torch.Tensor]:
        """``projector.out`` rows of each image summed onto its base grid: the base view's rows one per cell; each
        crop row is placed on the assembled high-resolution grid, dropped when ``unpad_image`` removes it (the LLM
        never receives it), else added to the base cell that covers the same part of the image."""
        if site.stem != "projector.out":
            return super().grid_sums(site, tensor, images)
        lays = self._layouts(images)
        out, off = [], 0
        for lay in lays:
            (h, w), (rows, cols), (top, left) = lay.base, lay.high, lay.offset
            g, dev = h, tensor.device
            acc = tensor[off].clone()
            if not lay.n_crops:  # a view without crops (LLaVA-OneVision's multi-image items)
                out.append(acc)
                off += 1
                continue
            crops = tensor[off + 1:off + 1 + lay.n_crops]  # [n_crops, g*g, d]
            q = torch.arange(lay.n_crops, device=dev)[:, None]
            p = torch.arange(g * g, device=dev)[None, :]
            R = (q // lay.crops[1]) * g + p // g - top  # row / col on the unpadded high-resolution grid
            C = (q % lay.crops[1]) * g + p % g - left
            keep = (R >= 0) & (R < rows) & (C >= 0) & (C < cols)
            cell = ((2 * R + 1) * h).div(2 * max(rows, 1), rounding_mode="floor") * w + \
                ((2 * C + 1) * w).div(2 * max(cols, 1), rounding_mode="floor")
            acc.index_add_(0, cell[keep], crops[keep])
            out.append(acc)
            off += 1 + lay.n_crops
        return out
