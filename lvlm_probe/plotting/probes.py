"""Probe curves over depth and logit-lens maps."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import transforms
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lvlm_probe.errors import InputError
from lvlm_probe.plotting._common import as_image, frame_to_grid, ordered, require_columns, select_one
from lvlm_probe.plotting.style import COMPONENT_COLORS, PALETTE, SEQUENTIAL_CMAP, figsize, paper_style

PROBE_COLUMNS: tuple[str, ...] = ("component", "depth", "concept", "score", "ci_low", "ci_high", "control_score")
COMPONENT_ORDER: tuple[str, ...] = ("vision", "projector", "llm")
COMPONENT_LABELS: dict[str, str] = {"vision": "vision encoder", "projector": "projector", "llm": "LLM"}
LENS_COLUMNS: tuple[str, ...] = ("layer", "row", "col", "prob")


def _grid_shape(n: int, ncols: int | None) -> tuple[int, int]:
    ncols = ncols or min(n, 3)
    return int(np.ceil(n / ncols)), ncols


def plot_probe_curves(sweep_df: pd.DataFrame, concepts: Sequence[str] | None = None, *,
                      selection: str | None = None, panels: str | None = None, hue: str = "concept",
                      control: bool = True, majority: bool = False, ylabel: str | None = None,
                      ncols: int | None = None, width: str | float = "two", height: float | None = None) -> Figure:
    """Probe score vs depth through vision encoder, projector and LLM, one line per concept.

    Each line is the mean cross-validated score with its confidence band (``ci_low`` .. ``ci_high``); the
    control-task score of the same probe is the dashed line of the same colour. The depth ranges of the
    components are shaded and labelled.

    Parameters
    ----------
    sweep_df : DataFrame
        ``probe_sweep`` output: one row per (site, layer, selection, concept) with ``component``, ``depth``,
        ``concept``, ``score``, ``ci_low``, ``ci_high``, ``control_score`` (and ``selection``, ``majority``).
    concepts : sequence of str, optional
        Concepts to plot, in this order; all by default.
    selection : str, optional
        Keep one token selection (``"image_mean"``, ...).
    panels : str, optional
        Column whose values get one panel each (e.g. ``"selection"``, ``"family"``, ``"concept"``). By default
        ``"selection"`` when several selections remain, else a single panel.
    hue : str
        Column whose values get one colour each (``"concept"``).
    control : bool
        Draw the dashed control-task score.
    majority : bool
        Draw the majority-class baseline (dotted grey; needs a ``majority`` column).
    ylabel : str, optional
        Default ``"probe score"``.
    ncols : int, optional
        Panels per figure row.
    width : {"one", "two"} or float
    height : float, optional

    Returns
    -------
    Figure
        One axes per panel; ``ax.lines`` holds, per hue value, the score line then (with ``control``) its
        control line.
    """
    f = "plot_probe_curves"
    cols = list(PROBE_COLUMNS) + (["majority"] if majority else [])
    df = require_columns(sweep_df, cols if control else [c for c in cols if c != "control_score"], f, "probe sweep")
    df, concepts, panels = _curve_rows(df, concepts, selection, panels, hue, f)
    panel_values = ordered(df[panels], []) if panels else [None]
    hue_values = concepts if (hue == "concept" and concepts) else ordered(df[hue], [])
    colors = {h: PALETTE[k % len(PALETTE)] for k, h in enumerate(hue_values)}
    nrows, nc = _grid_shape(len(panel_values), ncols)
    with paper_style():
        fig, axes = plt.subplots(nrows, nc, figsize=figsize(width, 0.42 * nrows / max(1, nc / 2), height),
                                 squeeze=False, sharey=True)
        for k, pv in enumerate(panel_values):
            ax = axes.flat[k]
            _curve_panel(ax, df if pv is None else df[df[panels] == pv], hue, hue_values, colors, control, majority)
            if k % nc == 0:
                ax.set_ylabel(ylabel or "probe score")
            if pv is not None:
                ax.set_title(f"{panels} = {pv}")
        for ax in axes.flat[len(panel_values):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if control:
            handles.append(plt.Line2D([], [], color="0.3", ls="--", lw=0.8))
            labels.append("control task")
        if majority:
            handles.append(plt.Line2D([], [], color="0.5", ls=":", lw=0.8))
            labels.append("majority class")
        fig.legend(handles, labels, loc="outside right upper")
    return fig


def _curve_rows(df: pd.DataFrame, concepts: Sequence[str] | None, selection: str | None, panels: str | None,
                hue: str, f: str) -> tuple[pd.DataFrame, list | None, str | None]:
    """The sweep rows plotted, the concepts, and the panel column; one line per (panel, hue) and depth."""
    if selection is not None:
        df = select_one(df, "selection", selection, f)
    if concepts is not None:
        concepts = list(concepts)
        missing = [c for c in concepts if c not in set(df["concept"])]
        if missing:
            raise InputError(f"{f}: concept(s) {missing} are not in the sweep; it has {sorted(set(df['concept']))}")
        df = df[df["concept"].isin(concepts)]
    if hue not in df.columns:
        raise InputError(f"{f}: hue={hue!r} is not a column of the sweep")
    if panels is None and "selection" in df.columns and df["selection"].nunique() > 1:
        panels = "selection"
    if panels is not None and panels not in df.columns:
        raise InputError(f"{f}: panels={panels!r} is not a column of the sweep")
    keys = [k for k in (panels, hue) if k is not None]
    dup = df.duplicated(subset=[*keys, "depth"])
    if dup.any():
        r = df[dup].iloc[0]
        extra = [c for c in ("site", "selection", "family") if c in df.columns and c not in keys]
        raise InputError(f"{f}: several rows share depth {r['depth']} for {dict(r[keys])}; filter the sweep "
                         f"(e.g. selection=... or one site kind) or split them with panels= / hue= (columns {extra})")
    return df, concepts, panels


def _curve_panel(ax: plt.Axes, d: pd.DataFrame, hue: str, hue_values: list, colors: dict, control: bool,
                 majority: bool) -> None:
    """One panel: shaded components, per hue value the score with its band (and the dashed control)."""
    _shade_components(ax, d)
    for h in hue_values:
        g = d[d[hue] == h].sort_values("depth")
        if len(g) == 0:
            continue
        x = g["depth"].to_numpy(float)
        ax.fill_between(x, g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float), color=colors[h],
                        alpha=0.2, lw=0)
        ax.plot(x, g["score"].to_numpy(float), color=colors[h], marker="o", label=str(h))
        if control:
            ax.plot(x, g["control_score"].to_numpy(float), color=colors[h], ls="--", lw=0.8, label="_control")
    if majority:
        m = d.groupby("depth")["majority"].mean()
        ax.plot(m.index.to_numpy(float), m.to_numpy(float), color="0.5", ls=":", lw=0.8, label="_majority")
    ax.set_xlabel("depth")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _shade_components(ax: plt.Axes, d: pd.DataFrame) -> None:
    """Shade each component's depth range and label it just above ``ax`` (outside the data area, so a label never
    covers a curve at the top of the scale)."""
    trans = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    spans = d.groupby("component")["depth"].agg(["min", "max"])
    for comp in ordered(spans.index, COMPONENT_ORDER):
        lo, hi = float(spans.loc[comp, "min"]), float(spans.loc[comp, "max"])
        ax.axvspan(lo - 0.5, hi + 0.5, color=COMPONENT_COLORS.get(comp, "0.85"), alpha=0.12, lw=0, zorder=0)
        ax.text((lo + hi) / 2, 1.01, COMPONENT_LABELS.get(comp, str(comp)), transform=trans, ha="center",
                va="bottom", fontsize=6, color="0.3", clip_on=False)


def plot_logit_lens(lens_df: pd.DataFrame, word: str | None = None, *, item: int | str | None = None,
                    site: str | None = None, layers: Sequence[int] | None = None, grid: bool = False,
                    image: object = None, ncols: int | None = None, vmax: float | None = None,
                    width: str | float = "one", height: float | None = None) -> Figure:
    """Logit-lens probability of a word at each image patch, as a layers × patches heatmap or per-layer maps.

    Parameters
    ----------
    lens_df : DataFrame
        ``word_probability`` output (``b``, ``layer``, ``row``, ``col``, ``word``, ``prob``) or ``logit_lens``
        output (``b``, ``layer``, ``row``, ``col``, ``rank``, ``token``, ``prob``). Rows without patch
        coordinates (text tokens) are dropped.
    word : str, optional
        The word (``word`` column) or token (``token`` column, compared without surrounding spaces) whose
        probability is shown. With a ``logit_lens`` frame, ``None`` shows the top-1 probability; patches where
        the word is outside the top k are left blank (NaN).
    item : int or str, optional
        Batch row (``b``, an int) or ``item_id`` (a str); required when the frame holds several items.
    site : str, optional
        Keep one site, or the sites under a prefix (``"llm"`` keeps ``llm.resid_post.*``), when a layer number
        occurs at several sites.
    layers : sequence of int, optional
        Layers to show (all by default; the grid shows at most 12, evenly spaced, unless given).
    grid : bool
        False: one heatmap, y = layer, x = patch index ``row * cols + col``. True: one [rows, cols] map per
        layer with a shared colour scale (over ``image`` when given).
    image : PIL image or array, optional
        Drawn under each per-layer map (grid mode), the map stretched over the whole image.
    vmax : float, optional
        Top of the colour scale (default: the maximum shown).

    Returns
    -------
    Figure
        Heatmap mode: one axes (``ax.images[0]`` is the [n_layers, rows*cols] array) plus a colourbar.
        Grid mode: one axes per layer plus a colourbar.
    """
    f = "plot_logit_lens"
    df = _lens_rows(require_columns(lens_df, LENS_COLUMNS, f, "logit-lens frame"), item, site, f)
    base = df.dropna(subset=["row", "col"])  # every image token of this item: the grid's shape
    if len(base) == 0:
        raise InputError(f"{f}: no rows with patch coordinates (row, col); the lens frame must include image tokens")
    shape = (int(base["row"].max()) + 1, int(base["col"].max()) + 1)
    all_layers = sorted(int(v) for v in df["layer"].unique())
    df, word = _lens_word(df, word, f, list(lens_df.columns))
    layers = _lens_layers(layers, all_layers, grid, f)
    grids = {la: frame_to_grid(df[df["layer"] == la], "prob", f, shape) if (df["layer"] == la).any()
             else np.full(shape, np.nan) for la in layers}
    label = f"p({word!r})" if word is not None else "top-1 probability"
    top = vmax if vmax is not None else float(np.nanmax([np.nanmax(g) if np.isfinite(g).any() else 0.0
                                                        for g in grids.values()]) or 1.0)
    with paper_style():
        if not grid:
            return _lens_heatmap(grids, layers, shape, top, label, figsize(width, 0.75, height))
        return _lens_maps(grids, layers, as_image(image, f), top, label, ncols, width, height)


def _lens_rows(df: pd.DataFrame, item: int | str | None, site: str | None, f: str) -> pd.DataFrame:
    """One item's rows, of one site (or site prefix); a tiling family's base view only (tile 0)."""
    if item is not None:
        by = "item_id" if isinstance(item, str) and "item_id" in df.columns else "b"
        df = select_one(df, by, item, f, "item")
    elif "b" in df.columns:
        df = select_one(df, "b", None, f, "item")
    if site is not None:
        if "site" not in df.columns:
            raise InputError(f"{f}: site={site!r} given but the frame has no 'site' column")
        keep = (df["site"] == site) | df["site"].astype(str).str.startswith(site.rstrip(".") + ".")
        if not keep.any():
            raise InputError(f"{f}: no rows with site {site!r} (or starting with {site.rstrip('.') + '.'!r}); "
                             f"the frame has {sorted(set(df['site']))[:8]}")
        df = df[keep]
    if "tile" in df.columns:  # other tiles share (row, col) with the base view: they would overwrite its cells
        df = df[~(df["tile"].fillna(0) > 0)]
    return df


def _lens_word(df: pd.DataFrame, word: str | None, f: str, columns: list) -> tuple[pd.DataFrame, str | None]:
    """The rows of the word (or top-1 token) shown, and the word."""
    if "word" in df.columns:
        if word is None:
            df = select_one(df, "word", None, f, "word")
            return df, str(df["word"].iloc[0])
        return select_one(df, "word", word, f, "word"), word
    if "token" in df.columns and "rank" in df.columns:
        if word is None:
            return df[df["rank"] == 1], None
        df = df[df["token"].astype(str).str.strip() == word.strip()]
        if len(df) == 0:
            raise InputError(f"{f}: token {word!r} is never in the top k; use word_probability for its "
                             f"probability everywhere")
        return df, word
    raise InputError(f"{f}: the frame needs a 'word' column (word_probability) or 'token' and 'rank' columns "
                     f"(logit_lens); it has {columns}")


def _lens_layers(layers: Sequence[int] | None, all_layers: list[int], grid: bool, f: str) -> list[int]:
    """The layers shown: all (at most 12, evenly spaced, in grid mode) or the given ones, checked."""
    if layers is None:
        if grid and len(all_layers) > 12:
            return [all_layers[int(round(i))] for i in np.linspace(0, len(all_layers) - 1, 12)]
        return all_layers
    bad = [la for la in layers if la not in all_layers]
    if bad:
        raise InputError(f"{f}: layer(s) {bad} are not in the frame; it has {all_layers}")
    return list(layers)


def _lens_heatmap(grids: dict, layers: list[int], shape: tuple[int, int], top: float, label: str,
                  size: tuple[float, float]) -> Figure:
    """One [n_layers, rows * cols] heatmap with a colourbar."""
    mat = np.stack([grids[la].reshape(-1) for la in layers])  # [n_layers, rows * cols]
    fig, ax = plt.subplots(figsize=size)
    im = ax.imshow(mat, aspect="auto", origin="lower", cmap=SEQUENTIAL_CMAP, vmin=0, vmax=top,
                   extent=(-0.5, mat.shape[1] - 0.5, -0.5, len(layers) - 0.5))
    ax.set_yticks(range(len(layers)), [str(la) for la in layers])
    ax.set_xlabel(f"image patch (row × {shape[1]} + col)")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label=label)
    return fig


def _lens_maps(grids: dict, layers: list[int], img: Any, top: float, label: str, ncols: int | None,
               width: str | float, height: float | None) -> Figure:
    """One [rows, cols] map per layer (over the image when given) with a shared colour scale."""
    nrows, nc = _grid_shape(len(layers), ncols or min(len(layers), 4))
    w = figsize(width)[0]
    fig, axes = plt.subplots(nrows, nc, figsize=(w, height or w / nc * nrows * 1.05), squeeze=False)
    for ax, la in zip(axes.flat, layers):
        if img is not None:
            h, wi = img.shape[:2]
            ax.imshow(img, extent=(0, wi, h, 0))
            ax.imshow(grids[la], extent=(0, wi, h, 0), alpha=0.65, cmap=SEQUENTIAL_CMAP, vmin=0, vmax=top)
        else:
            ax.imshow(grids[la], cmap=SEQUENTIAL_CMAP, vmin=0, vmax=top)
        ax.set_title(f"layer {la}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    sm = ScalarMappable(norm=Normalize(0, top), cmap=SEQUENTIAL_CMAP)  # opaque, unlike the overlays
    fig.colorbar(sm, ax=axes.ravel().tolist(), label=label, shrink=0.8)
    return fig
