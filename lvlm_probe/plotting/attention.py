"""Patch heatmaps over the image, and image-attention mass over layers and generation steps."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lvlm_probe.errors import InputError
from lvlm_probe.plotting._common import (as_array, as_image, frame_to_grid, ordered, parse_boxes, require_columns,
                                         select_one)
from lvlm_probe.plotting.style import (DIVERGING_CMAP, OKABE_ITO, PALETTE, SEQUENTIAL_CMAP, figsize, paper_style)

#: Value columns recognised in long per-patch frames, in order of preference.
VALUE_COLUMNS: tuple[str, ...] = ("value", "attention", "prob", "effect", "mass")
ATTENTION_COLUMNS: tuple[str, ...] = ("b", "step", "layer", "head", "to_role", "mass")
SPREADS: tuple[str, ...] = ("sd", "iqr", "range")


def _heatmap_grid(values: Any, select: Mapping[str, Any] | None, value: str | None, label: str | None, f: str
                  ) -> tuple[np.ndarray, str | None]:
    """The [rows, cols] map (from an array, or a long frame after ``select``) and the colourbar label."""
    if not isinstance(values, pd.DataFrame):
        return as_array(values, "values", f, ndim=2), label
    require_columns(values, ["row", "col"], f, "patch frame")
    df = values
    for k, v in (select or {}).items():
        if k not in df.columns:
            raise InputError(f"{f}: select key {k!r} is not a column of the frame ({list(df.columns)})")
        df = select_one(df, k, v, f, "select")
    if value is None:
        value = next((c for c in VALUE_COLUMNS if c in df.columns), None)
        if value is None:
            raise InputError(f"{f}: the frame has no value column; expected one of {list(VALUE_COLUMNS)} "
                             f"or value=NAME")
    elif value not in df.columns:
        raise InputError(f"{f}: value={value!r} is not a column of the frame ({list(df.columns)})")
    return frame_to_grid(df, value, f), label or value


def _heatmap_norm(grid: np.ndarray, signed: bool | None) -> tuple[Normalize, bool]:
    """Colour normalisation: centred on 0 when the map is signed (by default: when it has both signs)."""
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if signed is None:
        signed = lo < 0 < hi
    if signed:
        m = max(abs(lo), abs(hi)) or 1.0
        return TwoSlopeNorm(0.0, -m, m), True
    return Normalize(lo, hi if hi > lo else lo + 1.0), False


def plot_patch_heatmap(image: Any, values: Any, boxes: Any = None, labels: Sequence[str] | None = None, *,
                       select: Mapping[str, Any] | None = None, value: str | None = None,
                       signed: bool | None = None, cmap: str | None = None, alpha: float = 0.6,
                       colorbar: bool = True, colorbar_label: str | None = None, title: str | None = None,
                       image_size: tuple[int, int] | None = None, ax: plt.Axes | None = None,
                       width: str | float = "one", height: float | None = None) -> Figure:
    """An attribution or attention map over the image patches, drawn over the image, with object boxes.

    The [rows, cols] map is stretched over the whole image (``extent = (0, W, H, 0)`` in pixels), so patch
    ``(r, c)`` covers the pixels of that patch and boxes in pixel coordinates line up with it.

    Parameters
    ----------
    image : PIL image, array [H, W(, C)], path or None
        The image as the model saw it (or None: the map alone, in patch units unless ``image_size``).
    values : array [rows, cols], tensor, or DataFrame
        The map, or a long frame with ``row``, ``col`` and a value column (``value`` of
        ``PatchAttribution.frame()``, ``attention`` of the image-attention maps, ``prob``, ``effect``).
        A frame must hold one value per patch after ``select``.
    boxes : SceneGraph, list of SceneObject, or list of (x0, y0, x1, y1), optional
        Object boxes in image pixels; SceneGraph objects are labelled with their description.
    labels : list of str, optional
        One label per box (overrides the object descriptions).
    select : dict, optional
        Column filters applied to a frame first, e.g. ``{"b": 0, "method": "ig", "image": 0}``.
    value : str, optional
        Value column of a frame (default: the first of ``value``, ``attention``, ``prob``, ``effect``, ``mass``).
    signed : bool, optional
        Diverging colour map centred on 0 (default: when the map has both signs).
    cmap : str, optional
        Default viridis (unsigned) / PuOr_r (signed).
    alpha : float
        Opacity of the map over the image.
    image_size : (W, H), optional
        Pixel size to draw the map at when no image is given (for boxes in pixels).
    ax : Axes, optional
        Draw into this axes (its figure is returned).

    Returns
    -------
    Figure
        ``ax.images[-1]`` is the map (extent in pixels); one Rectangle per box; a colourbar axes.
    """
    f = "plot_patch_heatmap"
    grid, colorbar_label = _heatmap_grid(values, select, value, colorbar_label, f)
    img = as_image(image, f)
    bxs, lbls = parse_boxes(boxes, labels, f)
    if img is not None:
        h, w = img.shape[:2]
    elif image_size is not None:
        w, h = image_size
    else:
        h, w = grid.shape
    norm, signed = _heatmap_norm(grid, signed)
    with paper_style():
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize(width, h / w * 0.85 if w else 0.85, height))
        else:
            fig = ax.figure
        if img is not None:
            ax.imshow(img, extent=(0, w, h, 0), cmap="gray" if img.ndim == 2 else None)
        im = ax.imshow(grid, extent=(0, w, h, 0), cmap=cmap or (DIVERGING_CMAP if signed else SEQUENTIAL_CMAP),
                       norm=norm, alpha=alpha if img is not None else 1.0, interpolation="nearest")
        for k, ((x0, y0, x1, y1), lab) in enumerate(zip(bxs, lbls)):
            color = PALETTE[(k + 3) % len(PALETTE)] if len(bxs) > 1 else OKABE_ITO["vermillion"]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=1.2))
            if lab:  # inside the box's top-left corner, so labels at the image border stay visible
                ax.text(x0, y0, lab, color="white", fontsize=6, va="top", ha="left", clip_on=True,
                        bbox=dict(boxstyle="square,pad=0.1", fc=color, ec="none", alpha=0.85))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        if title:
            ax.set_title(title)
        if colorbar:
            # an opaque mappable: the overlay's alpha would wash out the colourbar
            fig.colorbar(ScalarMappable(norm=norm, cmap=im.get_cmap()), ax=ax, label=colorbar_label, shrink=0.85)
    return fig


def plot_image_attention(attn_df: pd.DataFrame, by: str = "layer", *, to_role: str | Sequence[str] = "image",
                         items: Sequence[Any] | None = None, layers: Sequence[int] | None = None,
                         steps: Sequence[int] | None = None, spread: str = "sd", ax: plt.Axes | None = None,
                         width: str | float = "one", height: float | None = None) -> Figure:
    """Attention mass on the image tokens vs layer or vs generation step: mean over heads, band = head spread.

    The mass of each (layer, head) is first averaged over items and over the steps (``by="layer"``) or over
    items and layers (``by="step"``); the line is the mean over heads of that average and the band its
    spread over heads.

    Parameters
    ----------
    attn_df : DataFrame
        ``image_attention`` output: ``b`` (row in the batch), ``step``, ``layer``, ``head``, ``to_role``, ``mass``.
    by : {"layer", "step"}
        The x axis.
    to_role : str or sequence of str
        Key role(s); one line each (default ``"image"``).
    items, layers, steps : sequence, optional
        Keep only these batch rows (``b``), layers and steps.
    spread : {"sd", "iqr", "range"}
        Band: mean ± standard deviation over heads, 25–75 % quantiles, or min–max.

    Returns
    -------
    Figure
        ``ax.lines[k]`` is the mean of the k-th role; ``ax.collections[k]`` its band.
    """
    f = "plot_image_attention"
    df = require_columns(attn_df, ATTENTION_COLUMNS, f, "image-attention frame")
    if by not in ("layer", "step"):
        raise InputError(f"{f}: by={by!r}; use 'layer' or 'step'")
    if spread not in SPREADS:
        raise InputError(f"{f}: spread={spread!r}; use one of {list(SPREADS)}")
    roles = [to_role] if isinstance(to_role, str) else list(to_role)
    missing = [r for r in roles if r not in set(df["to_role"])]
    if missing:
        raise InputError(f"{f}: role(s) {missing} not in the frame's to_role values {sorted(set(df['to_role']))}")
    for col, keep in (("b", items), ("layer", layers), ("step", steps)):
        if keep is not None:
            df = df[df[col].isin(list(keep))]
            if len(df) == 0:
                raise InputError(f"{f}: no rows left after keeping {col} in {list(keep)}")
    with paper_style():
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize(width, 0.68, height))
        else:
            fig = ax.figure
        for k, role in enumerate(ordered(roles, roles)):
            per_head = (df[df["to_role"] == role].groupby([by, "head"])["mass"].mean()
                        .unstack("head").sort_index())  # [n_x, n_heads]
            x = per_head.index.to_numpy(float)
            v = per_head.to_numpy(float)
            mean = np.nanmean(v, axis=1)
            if spread == "sd":
                lo, hi = mean - np.nanstd(v, axis=1), mean + np.nanstd(v, axis=1)
            elif spread == "iqr":
                lo, hi = np.nanpercentile(v, 25, axis=1), np.nanpercentile(v, 75, axis=1)
            else:
                lo, hi = np.nanmin(v, axis=1), np.nanmax(v, axis=1)
            color = PALETTE[k % len(PALETTE)]
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(x, mean, color=color, marker="o", label=f"to {role}")
        ax.set_xlabel("layer" if by == "layer" else "generation step")
        ax.set_ylabel("attention mass")
        band = {"sd": "± s.d.", "iqr": "IQR", "range": "min–max"}[spread]
        ax.set_title(f"mean over heads ({band} band)", fontsize=7)
        if len(roles) > 1:
            ax.legend()
    return fig
