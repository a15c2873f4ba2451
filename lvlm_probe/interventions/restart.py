"""Restarting the enumeration: describe each region of the image in a fresh generation and join them.

A model trained on short descriptions stops, or drifts, once an enumeration runs past the length it learned
(methods.md §9.2, P8 long-generation drift). :class:`RegionRestart` keeps every enumeration short: it paints all of
the image but one region with the image's background (its most common border colour), describes that view, does so
for each region that holds anything, and joins the descriptions in region order. Nothing is trained and no
activation is edited; the prompt, the model and its decoding settings are those of the plain run. It is the
toolkit's control for a long-generation cause, in the spirit of the local views of HALC (Chen et al., ICML 2024,
https://arxiv.org/abs/2403.00425), which re-describe parts of the image; a model whose errors do not come from
enumeration length gains nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from lvlm_probe.errors import InputError
from lvlm_probe.interventions.base import Intervention, check_text_strategy
from lvlm_probe.models.records import Batch, Generation


def background(pixels: torch.Tensor) -> torch.Tensor:
    """The most common border pixel of one image.

    Parameters
    ----------
    pixels : torch.Tensor [C, H, W]
        One image as the model receives it (normalised).

    Returns
    -------
    torch.Tensor [C]
    """
    border = torch.cat([pixels[:, 0, :], pixels[:, -1, :], pixels[:, :, 0], pixels[:, :, -1]], dim=1)  # [C, n]
    values, counts = torch.unique(border, dim=1, return_counts=True)
    return values[:, int(counts.argmax())]


def region_views(pixels: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, list[bool]]:
    """Every region of a ``rows x cols`` grid shown alone, the rest painted with :func:`background`.

    Parameters
    ----------
    pixels : torch.Tensor [C, H, W]

    Returns
    -------
    views : torch.Tensor [rows * cols, C, H, W]
        In reading order (row by row).
    occupied : list of bool
        Per view: whether its region holds any pixel other than the background.
    """
    C, H, W = pixels.shape
    fill = background(pixels)
    ys = [round(k * H / rows) for k in range(rows + 1)]
    xs = [round(k * W / cols) for k in range(cols + 1)]
    views, occupied = [], []
    for r in range(rows):
        for c in range(cols):
            v = fill[:, None, None].expand(C, H, W).clone()
            v[:, ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = pixels[:, ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
            views.append(v)
            occupied.append(bool((pixels[:, ys[r]:ys[r + 1], xs[c]:xs[c + 1]] != fill[:, None, None]).any()))
    return torch.stack(views), occupied


@dataclass(frozen=True)
class RegionRestart(Intervention):
    """Describe each region of the image in its own generation and join the descriptions (restart the
    enumeration so that none runs long).

    Regions with nothing but background are skipped; an image with no occupied region is described whole. Each
    region's generation may use ``max_new_tokens``, so the joined text can be longer than one generation. Only
    for families that take one ``[C, H, W]`` pixel tensor per image (LLaVA-1.5 and the organisms), one image per item.
    """

    rows: int = 2
    cols: int = 2
    name = "region_restart"
    paper = ("toolkit: restart the enumeration per image region, for long-generation drift (after the local views "
             "of HALC, Chen et al. ICML 2024, https://arxiv.org/abs/2403.00425)")

    def generate(self, model: Any, batch: Batch, **generate_kwargs: Any) -> Generation:
        """Generate under the intervention (called by :func:`~lvlm_probe.interventions.decode`)."""
        if self.rows < 1 or self.cols < 1 or self.rows * self.cols < 2:
            raise InputError(f"region_restart needs at least 2 regions, got rows={self.rows}, cols={self.cols}")
        check_text_strategy(self.name, "joins several generations", model, batch, generate_kwargs)
        px = batch.pixel_values
        per_image = [region_views(px[b], self.rows, self.cols) for b in range(len(batch))]
        parts: list[list[list[int]]] = [[] for _ in range(len(batch))]
        for r in range(self.rows * self.cols):
            if not any(occ[r] for _, occ in per_image):
                continue
            view = replace(batch, pixel_values=torch.stack([views[r] for views, _ in per_image]).to(px.dtype))
            gen = model.generate(view, **generate_kwargs)
            for b, (_, occ) in enumerate(per_image):
                if occ[r]:
                    parts[b].append(gen.tokens[b])
        if any(not p for p in parts):
            whole = model.generate(batch, **generate_kwargs)
            parts = [p or [whole.tokens[b]] for b, p in enumerate(parts)]
        eos = model.tokenizer.eos_token_id
        joined = []
        for p in parts:
            body = [t for part in p for t in (part[:-1] if part and part[-1] == eos else part)]
            joined.append(body + ([eos] if p[-1] and p[-1][-1] == eos else []))
        return model.generation_from_tokens(batch, joined, dict(generate_kwargs))
