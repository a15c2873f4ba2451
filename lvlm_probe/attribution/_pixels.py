"""Where each pixel-value element lands on the LLM patch grid, per item of a batch.

The family facts come from ``lvlm_probe.models``: ``Batch.pixel_rows`` / ``Batch.select`` give each image's
pixel rows and each item's sub-batch, and ``FamilyAdapter.pixel_cells`` the pixel ↔ token cell rule of the
family's pixel layout. This module only numbers the cells of an item's images one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lvlm_probe.errors import InputError, UnsupportedModelError
from lvlm_probe.models.records import Batch

from lvlm_probe.attribution._common import item_ids


@dataclass
class ItemPixels:
    """One item's share of a batch's pixel tensor.

    Attributes
    ----------
    batch : Batch
        The item alone (B = 1), its pixel rows and per-image extras sliced out (``Batch.select``).
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


def _unknown_layout(model: Any, batch: Batch) -> InputError:
    return InputError(
        f"pixel-space attribution does not know the {model.family!r} pixel layout (pixel_values "
        f"{tuple(batch.pixel_values.shape)}); use method='layer_ig' (projector output), which works for every family"
    )


def image_rows(model: Any, batch: Batch) -> list[tuple[int, int]]:
    """For each image of the batch, its ``[start, stop)`` rows along ``pixel_values`` dim 0."""
    if batch.pixel_values is None:
        raise InputError("the batch has no images; patch attribution needs at least one image per item")
    return batch.pixel_rows()


def item_cells(model: Any, item: Batch, iid: str) -> torch.Tensor:
    """Item-local cell ids [same shape as ``item.pixel_values``] of a one-item batch (the adapter's cell rule)."""
    pv = item.pixel_values
    cells = torch.empty(pv.shape, dtype=torch.long, device=pv.device)
    base = 0
    for j, ((a, z), (h, w)) in enumerate(zip(image_rows(model, item), item.image_inputs.llm_grids)):
        try:
            cells[a:z] = model.adapter.pixel_cells(pv[a:z], (h, w), images=item.image_inputs, index=j) + base
        except UnsupportedModelError:  # before ValueError: it is one
            raise _unknown_layout(model, item) from None
        except ValueError as exc:
            raise InputError(f"item {iid!r}: image {j} is {exc}") from None
        base += h * w
    return cells


def split_items(model: Any, batch: Batch) -> list[ItemPixels]:
    """Per-item sub-batches with the cell id of every pixel element."""
    image_rows(model, batch)  # a batch without images, or pixels that no longer fit them, fails here
    ids = item_ids(batch)
    out: list[ItemPixels] = []
    for b, n_img in enumerate(batch.n_images):
        if n_img == 0:
            raise InputError(f"item {ids[b]!r} has no image; patch attribution needs one (drop the item)")
        sub = batch.select([b])  # named ids[b] (its index when the batch has no ids)
        out.append(ItemPixels(batch=sub, cells=item_cells(model, sub, ids[b]), grids=list(sub.image_inputs.llm_grids)))
    return out


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
