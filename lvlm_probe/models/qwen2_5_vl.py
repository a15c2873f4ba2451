"""Qwen2.5-VL family (``Qwen2_5_VLForConditionalGeneration``): windowed ViT, 2×2 patch merger, mRoPE LM.

Owns every Qwen2.5-VL fact: ``<|image_pad|>`` tokens wrapped in ``<|vision_start|>…<|vision_end|>``,
a dynamic-resolution grid from ``image_grid_thw`` (one LLM token per ``merge×merge`` block of
patches), and the window permutation the vision blocks and merger run in, which
:meth:`vision_patches` undoes so that every vision-side row gets its true (row, col).
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from lvlm_probe.errors import UnsupportedModelError
from lvlm_probe.models.base import FamilyAdapter, ImageInputs, Site, _unwrap

QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen2_5_VLAdapter(FamilyAdapter):
    """Adapter for Qwen2.5-VL checkpoints (``model_type == "qwen2_5_vl"``)."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    hf_class_name = "Qwen2_5_VLForConditionalGeneration"
    # without it HF silently falls back to 1-D positions (the processor returns it; the model needs it)
    token_type_input = "mm_token_type_ids"

    @property
    def image_token_id(self) -> int:
        return int(self.hf_config.image_token_id)

    @property
    def n_vision_layers(self) -> int:
        return int(self.hf_config.vision_config.depth)

    @property
    def merge(self) -> int:
        return int(self.hf_config.vision_config.spatial_merge_size)

    def default_chat_template(self) -> str:
        return QWEN_CHAT_TEMPLATE

    def answer_prefix(self) -> str:
        return ""

    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        out = self.image_processor(images=list(images), return_tensors="pt")
        thw = out["image_grid_thw"]
        m = self.merge
        llm_grids, vision_grids, n_tok, rows = [], [], [], []
        r0 = 0
        for t, h, w in thw.tolist():
            vision_grids.append((int(h), int(w)))
            llm_grids.append((int(h) // m, int(w) // m))
            n_tok.append(int(t) * int(h) * int(w) // (m * m))
            rows.append((r0, r0 + int(t) * int(h) * int(w)))  # one pixel row per vision patch
            r0 = rows[-1][1]
        return ImageInputs(
            pixel_values=out["pixel_values"],
            extras={"image_grid_thw": thw},
            llm_grids=llm_grids,
            tokens_per_image=n_tok,
            vision_grids=vision_grids,
            pixel_rows=rows,
        )

    def pixel_cells(self, pixels: torch.Tensor, grid: tuple[int, int], images: ImageInputs | None = None,
                    index: int | None = None) -> torch.Tensor:
        """Flattened merge-unit patches: ``pixels`` is ``[n_patches, C·T·P·P]``, one image's patches in raster
        order of ``merge × merge`` units with the ``merge²`` patches of a unit contiguous, so patch row ``k``
        feeds LLM token ``k // merge²``, itself in raster order of the LLM grid (frames wrap onto the grid)."""
        if pixels.dim() != 2:
            raise UnsupportedModelError(f"{type(self).__name__}: pixel rows of shape {tuple(pixels.shape)} are not "
                                      "flattened patches [n_patches, C·T·P·P]")
        h, w = grid
        unit = (torch.arange(pixels.shape[0], device=pixels.device) // self.merge ** 2) % (h * w)
        return unit[:, None].expand(pixels.shape).clone()

    def final_norm(self) -> torch.nn.Module:
        """The text model's final RMSNorm, ``model.language_model.norm``."""
        return _unwrap(self.hf_model.model.language_model.norm)

    def llm_layer_modules(self):
        """``model.language_model.layers``."""
        return list(_unwrap(self.hf_model.model.language_model).layers)

    def vision_block_modules(self):
        """``model.visual.blocks`` (run in window order; :meth:`vision_patches` undoes it)."""
        return [_unwrap(b) for b in _unwrap(self.hf_model.model.visual).blocks]

    def projector_module(self) -> torch.nn.Module:
        """``model.visual.merger`` (its input: the last block's patches; output: one row per LLM image token)."""
        return _unwrap(_unwrap(self.hf_model.model.visual).merger)

    def image_token_coords(self, grid: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        h, w = grid
        return [(r, c) for r in range(h) for c in range(w)][:n_tokens]

    def vision_hook_name(self, site: Site) -> str:
        if site.stem == "vision.resid_post":
            return f"vision_encoder.blocks.{site.layer}.hook_out"
        return {"projector.in": "vision_projector.hook_in", "projector.out": "vision_projector.hook_out"}[site.stem]

    def window_index(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """The merge-unit permutation the vision blocks run in (as HF computes it)."""
        vc = self.hf_config.vision_config
        try:
            from transformers.vision_utils import get_vision_window_index

            idx, _ = get_vision_window_index(
                grid_thw.cpu(), spatial_merge_size=vc.spatial_merge_size, window_size=vc.window_size,
                patch_size=vc.patch_size,
            )
        except ImportError:  # older transformers keep it as a method of the vision tower
            idx, _ = self.hf_model.model.visual.get_window_index(grid_thw.cpu())
        return torch.as_tensor(idx, dtype=torch.long)

    def vision_patches(self, site: Site, tensor: torch.Tensor, images: ImageInputs):
        thw = images.extras["image_grid_thw"]
        win = self.window_index(thw)
        m = self.merge
        mu = m * m
        unit_level = site.stem == "projector.out"
        n_units = int(win.numel())
        if unit_level:
            if tensor.shape[0] != n_units:
                raise ValueError(f"{site.name}: {tensor.shape[0]} rows, expected {n_units} merged tokens")
            raster = torch.empty_like(tensor)
            raster[win.to(tensor.device)] = tensor
            sizes = [t * h * w // mu for t, h, w in thw.tolist()]
            grids = images.llm_grids
        else:
            if tensor.shape[0] != n_units * mu:
                raise ValueError(f"{site.name}: {tensor.shape[0]} rows, expected {n_units * mu} patches")
            dest = self._patch_destinations(thw, win)
            raster = torch.empty_like(tensor)
            raster[dest.to(tensor.device)] = tensor
            sizes = [t * h * w for t, h, w in thw.tolist()]
            grids = images.vision_grids
        parts = torch.split(raster, sizes, dim=0)
        return [(p, g) for p, g in zip(parts, grids)]

    def _patch_destinations(self, thw: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
        """For each patch row in window order, its index in per-image raster (t, row, col) order."""
        m = self.merge
        mu = m * m
        unit_img_start, patch_img_start, unit_grid = [], [], []
        u0 = p0 = 0
        for t, h, w in thw.tolist():
            unit_img_start.append(u0)
            patch_img_start.append(p0)
            unit_grid.append((t, h, w))
            u0 += t * h * w // mu
            p0 += t * h * w
        starts = torch.tensor(unit_img_start)
        unit = win.repeat_interleave(mu)  # original merge-unit id of each window-order row
        sub = torch.arange(unit.numel()) % mu
        img = torch.searchsorted(starts, unit, right=True) - 1
        dest = torch.empty_like(unit)
        for k, (_t, h, w) in enumerate(unit_grid):
            sel = img == k
            local = unit[sel] - unit_img_start[k]
            hm, wm = h // m, w // m
            tt, rem = local // (hm * wm), local % (hm * wm)
            uh, uw = rem // wm, rem % wm
            i, j = sub[sel] // m, sub[sel] % m
            row, col = uh * m + i, uw * m + j
            dest[sel] = patch_img_start[k] + tt * h * w + row * w + col
        return dest
