"""Where each pixel-value element lands on the LLM patch grid, and per-item slices of a batch.

Two pixel layouts exist among the supported families:

* **image tensors** (LLaVA and any family whose ``pixel_values`` is ``[n_images, C, H, W]``): a pixel
  belongs to LLM grid cell ``(y // (H / rows), x // (W / cols))``;
* **flattened merge-unit patches** (Qwen2.5-VL: ``pixel_values`` is ``[n_patches, C·T·P·P]``, patches
  of one image in raster order of ``merge × merge`` units, the ``merge²`` patches of a unit
  contiguous): patch row ``k`` of an image belongs to LLM token ``k // merge²``, itself in raster
  order of the LLM grid. The adapter's ``merge`` attribute gives ``merge``.

Written by hand: no library maps processor layouts to LLM token grids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from lvlm_probe.errors import InputError
from lvlm_probe.models.base import ImageInputs
from lvlm_probe.models.records import Batch

from lvlm_probe.attribution._common import item_ids


@dataclass
class ItemPixels:
    """One item's share of a batch's pixel tensor.

    Attributes
    ----------
    batch : Batch
        The item alone (B = 1), its pixel rows and per-image extras sliced out.
    cells : torch.LongTensor
        Same shape as ``batch.pixel_values``: the item-local cell id of every element
        (cells of image k follow those of images < k, raster order within an image).
    grids : list of (rows, cols)
        LLM grid of each of the item's images.
    """

    batch: Batch
    cells: torch.Tensor
    grids: list[tuple[int, int]]

    @property
    def n_cells(self) -> int:
        return sum(h * w for h, w in self.grids)


def _layout(model: Any, batch: Batch) -> str:
    pv = batch.pixel_values
    if pv is None:
        raise InputError("the batch has no images; patch attribution needs at least one image per item")
    n_img = sum(batch.n_images)
    if pv.dim() == 4 and pv.shape[0] == n_img:
        return "images"
    if hasattr(model.adapter, "merge") and "image_grid_thw" in batch.extras:
        return "merge_units"
    raise InputError(
        f"pixel-space attribution does not know the {model.family!r} pixel layout (pixel_values "
        f"{tuple(pv.shape)}); use method='layer_ig' (projector output), which works for every family"
    )


def image_rows(model: Any, batch: Batch) -> list[tuple[int, int]]:
    """For each image of the batch, its ``[start, stop)`` rows along ``pixel_values`` dim 0."""
    ii: ImageInputs = batch.image_inputs
    if _layout(model, batch) == "images":
        return [(k, k + 1) for k in range(len(ii.llm_grids))]
    mu = int(model.adapter.merge) ** 2
    out, r0 = [], 0
    for n_tok in ii.tokens_per_image:
        out.append((r0, r0 + n_tok * mu))
        r0 += n_tok * mu
    if r0 != batch.pixel_values.shape[0]:
        raise InputError(f"pixel_values has {batch.pixel_values.shape[0]} rows but the images' grids give {r0}; "
                         "build the batch with model.prepare")
    return out


def split_items(model: Any, batch: Batch) -> list[ItemPixels]:
    """Per-item sub-batches with the cell id of every pixel element."""
    layout = _layout(model, batch)
    ii: ImageInputs = batch.image_inputs
    if ii is None:
        raise InputError("the batch carries no image_inputs; build it with model.prepare")
    rows = image_rows(model, batch)
    ids = item_ids(batch)
    pv = batch.pixel_values
    n_img_total = len(ii.llm_grids)
    out: list[ItemPixels] = []
    k0 = 0
    for b, n_img in enumerate(batch.n_images):
        if n_img == 0:
            raise InputError(f"item {ids[b]!r} has no image; patch attribution needs one (drop the item)")
        ks = list(range(k0, k0 + n_img))
        k0 += n_img
        r0, r1 = rows[ks[0]][0], rows[ks[-1]][1]
        pv_b = pv[r0:r1]
        extras = {k: (v[ks[0]:ks[-1] + 1] if v.shape[0] == n_img_total else v) for k, v in batch.extras.items()}
        grids = [ii.llm_grids[k] for k in ks]
        cells = torch.empty(pv_b.shape, dtype=torch.long, device=pv.device)
        base = 0
        for j, k in enumerate(ks):
            h, w = grids[j]
            a, z = rows[k][0] - r0, rows[k][1] - r0
            if layout == "images":
                H, W = pv_b.shape[-2:]
                if H % h or W % w:
                    raise InputError(f"item {ids[b]!r}: image {j} is {H}x{W} px, not a multiple of its {h}x{w} grid")
                ys = torch.arange(H, device=pv.device) // (H // h)
                xs = torch.arange(W, device=pv.device) // (W // w)
                cell = (ys[:, None] * w + xs[None, :]) + base
                cells[a:z] = cell.expand(pv_b[a:z].shape)
            else:
                mu = int(model.adapter.merge) ** 2
                unit = (torch.arange(z - a, device=pv.device) // mu) % (h * w)
                cells[a:z] = (unit + base)[:, None].expand(z - a, pv_b.shape[1])
            base += h * w
        sub_ii = ImageInputs(
            pixel_values=pv_b,
            extras=extras,
            llm_grids=grids,
            tokens_per_image=[ii.tokens_per_image[k] for k in ks],
            vision_grids=[ii.vision_grids[k] for k in ks],
        )
        sub = replace(
            batch,
            input_ids=batch.input_ids[b:b + 1],
            attention_mask=batch.attention_mask[b:b + 1],
            pixel_values=pv_b,
            extras=extras,
            roles=_roles_item(batch, b),
            prompts=[batch.prompts[b]] if batch.prompts else [],
            n_images=[n_img],
            item_ids=[ids[b]],
            n_image_tokens=[batch.n_image_tokens[b]] if batch.n_image_tokens else None,
            image_inputs=sub_ii,
        )
        out.append(ItemPixels(batch=sub, cells=cells, grids=grids))
    return out


def _roles_item(batch: Batch, b: int):
    from lvlm_probe.models.records import ROLE_NAMES

    r = batch.roles
    kw = {n: getattr(r, n)[b:b + 1] for n in ROLE_NAMES}
    return replace(r, patch_coords=r.patch_coords[b:b + 1], grids=[r.grids[b]], **kw)


def cells_to_maps(values: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
    """Item-local cell values [n_cells] → maps [n_images, R, C] (NaN-padded to the largest grid)."""
    R = max(h for h, _ in grids)
    C = max(w for _, w in grids)
    out = torch.full((len(grids), R, C), float("nan"), dtype=torch.float64)
    base = 0
    for j, (h, w) in enumerate(grids):
        out[j, :h, :w] = values[base:base + h * w].double().cpu().reshape(h, w)
        base += h * w
    return out
