"""Diagnosis figures: causes per error kind, a per-error evidence panel, and the planted-cause confusion matrix."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker
from matplotlib.patches import Rectangle

from lvlm_probe.errors import InputError
from lvlm_probe.plotting._common import as_array, as_image, ordered, parse_boxes, require_columns
from lvlm_probe.plotting.style import (HIGHLIGHT, KINDS, LEVEL_COLORS, LEVELS, OKABE_ITO, STAGE_COLORS, STAGES,
                                       figsize, paper_style)


def plot_cause_bars(diagnosis_df: pd.DataFrame, by: str = "stage", *, normalize: bool = False,
                    annotate: bool = True, ax: plt.Axes | None = None, width: str | float = "one",
                    height: float | None = None) -> Figure:
    """Stacked bars: for each error kind, how many errors were traced to each cause.

    Parameters
    ----------
    diagnosis_df : DataFrame
        ``diagnose`` output, one row per error, with ``kind`` and ``stage`` / ``level``.
    by : {"stage", "level"}
        The cause column stacked in each bar, in the canonical order (data-level stages first).
    normalize : bool
        Fractions of each kind's errors instead of counts.
    annotate : bool
        Write each bar's total above it.

    Returns
    -------
    Figure
        ``ax.containers[j]`` is the BarContainer of the j-th cause (legend order), one bar per kind.
    """
    f = "plot_cause_bars"
    if by not in ("stage", "level"):
        raise InputError(f"{f}: by={by!r}; use 'stage' or 'level'")
    df = require_columns(diagnosis_df, ["kind", by], f, "diagnosis frame")
    order, colors = (STAGES, STAGE_COLORS) if by == "stage" else (LEVELS, LEVEL_COLORS)
    counts = pd.crosstab(df["kind"], df[by])
    counts = counts.reindex(index=ordered(df["kind"], KINDS), columns=ordered(df[by], order), fill_value=0)
    totals = counts.sum(axis=1)
    table = counts.div(totals, axis=0) if normalize else counts
    with paper_style():
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize(width, 0.75, height))
        else:
            fig = ax.figure
        x = np.arange(len(table.index))
        bottom = np.zeros(len(x))
        for cause in table.columns:
            h = table[cause].to_numpy(float)
            ax.bar(x, h, bottom=bottom, color=colors.get(cause, "0.6"), label=str(cause), width=0.7,
                   edgecolor="white", linewidth=0.4)
            bottom += h
        if annotate:
            for xi, (b, n) in enumerate(zip(bottom, totals)):
                ax.text(xi, b, f"n={int(n)}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x, [str(k) for k in table.index])
        ax.set_xlabel("error kind")
        ax.set_ylabel("fraction of errors" if normalize else "errors")
        ax.legend(title=by, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _wrap_spans(text: str, span: tuple[int, int] | None, width: int) -> list[list[tuple[str, bool]]]:
    """Greedy word wrap of ``text`` into lines of segments ``(string, highlighted)``; no characters are lost."""
    words: list[tuple[int, int]] = []  # (start, end) of each word with its trailing spaces
    k = 0
    while k < len(text):
        j = k
        while j < len(text) and not text[j].isspace():
            j += 1
        while j < len(text) and text[j].isspace() and text[j] != "\n":
            j += 1
        if j < len(text) and text[j] == "\n":
            j += 1
        words.append((k, max(j, k + 1)))
        k = max(j, k + 1)
    lines: list[tuple[int, int]] = []
    start = end = 0
    for a, b in words:
        if end > start and (b - start > width and a > start or text[a - 1] == "\n"):
            lines.append((start, end))
            start = a
        end = b
    if end > start or not lines:
        lines.append((start, end))
    out = []
    for a, b in lines:
        cuts = sorted({a, b, *(min(max(s, a), b) for s in (span or ()))})
        segs = []
        for s, e in zip(cuts, cuts[1:]):
            if e > s:
                hl = span is not None and s >= span[0] and e <= span[1]
                segs.append((text[s:e].replace("\n", ""), hl))
        out.append(segs)
    return out


def _row_get(row: Mapping[str, Any], key: str) -> Any:
    v = row.get(key) if hasattr(row, "get") else None
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):  # lists, tuples
        pass
    return v


def plot_evidence_panel(row: pd.Series | Mapping[str, Any], image: Any = None, *, text: str | None = None,
                        span: tuple[int, int] | None = None, box: Sequence[float] | None = None,
                        features: Sequence[str] | Mapping[str, float] | None = None, wrap: int = 48,
                        width: str | float = "two", height: float | None = None) -> Figure:
    """One error's evidence: the image with the object's box, the text with the error span, and its scores.

    Parameters
    ----------
    row : Series or dict
        One diagnosis row (``kind``, ``stage``, ``level``, ``confidence``, ``score_<stage>`` columns, evidence
        columns), optionally merged with its misalignment row (``polarity``, ``subject``, ``claimed``, ``start``,
        ``end``). Read when present: ``box`` (pixels), ``generated_text`` / ``generation`` (the full text).
    image : PIL image, array or path, optional
        The item's image; without it the panel has two axes.
    text : str, optional
        The full generated text (default: ``row["generated_text"]`` or ``row["generation"]``, else ``row["text"]``).
    span : (start, end), optional
        Character span of the error in ``text`` (default ``row["start"], row["end"]``).
    box : (x0, y0, x1, y1), optional
        Box of the object in image pixels (default ``row["box"]``).
    features : list of column names or dict name -> value, optional
        Bars of the right panel (default: every ``score_<stage>`` column; the diagnosed stage is highlighted).
    wrap : int
        Characters per text line.

    Returns
    -------
    Figure
        Axes: [image,] text, bars. The highlighted text segments carry a bbox; one bar per feature.
    """
    f = "plot_evidence_panel"
    row, text, span, feats = _panel_inputs(row, text, span, features, f)
    box = box if box is not None else _row_get(row, "box")
    img = as_image(image, f)
    with paper_style():
        w, h = figsize(width, 0.3, height)
        ratios = ([1.0] if img is not None else []) + [1.6, 1.2]
        fig, axes = plt.subplots(1, len(ratios), figsize=(w, h), width_ratios=ratios)
        axes = list(np.atleast_1d(axes))
        if img is not None:
            _draw_image(axes.pop(0), img, box, _row_get(row, "subject"), f)
        tax, bax = axes
        _draw_text(tax, text, span, wrap, row)
        _draw_scores(bax, feats, row)
    return fig


def _panel_inputs(row: Any, text: str | None, span: tuple[int, int] | None,
                  features: Sequence[str] | Mapping[str, float] | None, f: str) -> tuple[Any, Any, Any, dict]:
    """The evidence panel's row, full text, error span and bar values, checked (one line per problem)."""
    if isinstance(row, pd.DataFrame):
        if len(row) != 1:
            raise InputError(f"{f}: expected one row (e.g. df.iloc[k]), got a frame of {len(row)} rows")
        row = row.iloc[0]
    if not hasattr(row, "get"):
        raise InputError(f"{f}: row must be a pandas Series or a dict, got {type(row).__name__}")
    if text is None:
        text = next((str(_row_get(row, k)) for k in ("generated_text", "generation", "text")
                     if _row_get(row, k) is not None), None)
    if span is None and _row_get(row, "start") is not None and _row_get(row, "end") is not None:
        span = (int(row["start"]), int(row["end"]))
    if text is not None and span is not None and not (0 <= span[0] <= span[1] <= len(text)):
        raise InputError(f"{f}: span {span} is outside the text ({len(text)} characters); pass the full generated "
                         f"text with text=... (the misalignment row's 'text' is only the error words)")
    if features is None:
        names = [c for c in row.index if str(c).startswith("score_")] if hasattr(row, "index") else \
            [c for c in row if str(c).startswith("score_")]
        if not names:
            raise InputError(f"{f}: the row has no score_<stage> columns; pass features=[columns] or "
                             f"features={{name: value}}")
        features = names
    if isinstance(features, Mapping):
        return row, text, span, {str(k): float(v) for k, v in features.items()}
    missing = [c for c in features if c not in row]
    if missing:
        raise InputError(f"{f}: feature column(s) {missing} are not in the row")
    return row, text, span, {str(c): float(row[c]) if _row_get(row, c) is not None else np.nan for c in features}


def _draw_image(ax: plt.Axes, img: np.ndarray, box: Any, label: Any, f: str) -> None:
    """The item's image, framed, with the object's box and label."""
    ih, iw = img.shape[:2]
    ax.imshow(img, extent=(0, iw, ih, 0), cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    if box is not None:
        (x0, y0, x1, y1), = parse_boxes([box], None, f)[0]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=OKABE_ITO["vermillion"], lw=1.5))
        if label:
            ax.text(x0, y0, str(label), color="white", fontsize=6, va="top",
                    bbox=dict(boxstyle="square,pad=0.1", fc=OKABE_ITO["vermillion"], ec="none"))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[:].set_visible(True)  # a frame: a white scene background would vanish into the page
    ax.spines[:].set_color("0.6")
    ax.spines[:].set_linewidth(0.6)


def _draw_text(tax: plt.Axes, text: str | None, span: tuple[int, int] | None, wrap: int, row: Any) -> None:
    """The generated text with the error span highlighted, titled with what was claimed and what is true."""
    tax.axis("off")
    if text is not None:
        lines = []
        for segs in _wrap_spans(text, span, wrap):
            areas = [TextArea(s, textprops=dict(fontsize=7, fontweight="bold" if hl else "normal",
                                                bbox=dict(boxstyle="square,pad=0.05", fc=HIGHLIGHT, ec="none")
                                                if hl else None))
                     for s, hl in segs] or [TextArea(" ", textprops=dict(fontsize=7))]
            lines.append(HPacker(children=areas, pad=0, sep=0, align="baseline"))
        tax.add_artist(AnchoredOffsetbox(loc="upper left", child=VPacker(children=lines, pad=0, sep=2),
                                         frameon=False, pad=0.1, borderpad=0.2))
    title = " ".join(str(v) for v in (_row_get(row, "kind"), _row_get(row, "polarity")) if v is not None)
    claimed = _row_get(row, "claimed")
    if claimed is not None:
        title += f": {claimed!r}"
    truth = _row_get(row, "truth")
    if truth is None:
        truth = _row_get(row, "true")
    if truth is not None:
        title += f" (true: {truth})"
    tax.set_title(title or "error", fontsize=7, loc="left")


def _draw_scores(bax: plt.Axes, feats: dict[str, float], row: Any) -> None:
    """One bar per feature, the diagnosed stage's highlighted; the title names the cause and its score."""
    stage = _row_get(row, "stage")
    names = list(feats)
    colors = [HIGHLIGHT if stage is not None and n.removeprefix("score_").replace("_", " ") == stage
              else OKABE_ITO["blue"] for n in names]
    y = np.arange(len(names))
    bax.barh(y, [feats[n] for n in names], color=colors, edgecolor="0.3", linewidth=0.4)
    bax.set_yticks(y, [n.removeprefix("score_").replace("_", " ") for n in names])
    bax.invert_yaxis()
    bax.set_xlabel("score")
    if stage is None:
        return
    level = _row_get(row, "level")
    own = feats.get("score_" + str(stage).replace(" ", "_"))
    title = f"cause: {stage}" + (f" ({level})" if level else "")
    if own is not None and not np.isnan(own):
        title += f", score {own:.2f}"
        top = max(feats, key=lambda n: -np.inf if np.isnan(feats[n]) else feats[n])
        if feats[top] > own + 1e-9:
            title += f"\n(rules are tried in order; {top.removeprefix('score_').replace('_', ' ')} scores " \
                     "higher but its rule does not hold)"
    bax.set_title(title, fontsize=7, loc="left")


def plot_confusion(confusion: Any, labels: Sequence[str] | None = None, *, normalize: bool = True,
                   annotate: bool = True, xlabel: str = "diagnosed cause", ylabel: str = "planted cause",
                   ax: plt.Axes | None = None, width: str | float = "one", height: float | None = None) -> Figure:
    """Planted vs diagnosed cause: counts written in the cells, colour = row-normalised fraction.

    Parameters
    ----------
    confusion : array [n, m], DataFrame (square table or long frame)
        A count matrix (rows = planted, columns = diagnosed); a table DataFrame (index = planted, columns =
        diagnosed); or a long frame with ``planted`` and ``diagnosed`` columns (one row per case, or with a
        ``count`` column).
    labels : sequence of str, optional
        Row / column labels of a matrix (required for arrays); for a long frame, the label order (labels not
        seen get empty rows / columns).
    normalize : bool
        Colour by the fraction of each planted row (True) or by counts.
    annotate : bool
        Write the counts in the cells.

    Returns
    -------
    Figure
        ``ax.images[0]`` holds the colour matrix; ``ax.texts`` the counts (row-major).
    """
    f = "plot_confusion"
    if isinstance(confusion, pd.DataFrame) and {"planted", "diagnosed"} <= set(confusion.columns):
        require_columns(confusion, ["planted", "diagnosed"], f, "confusion frame")
        order = list(labels) if labels is not None else ordered(
            list(confusion["planted"]) + list(confusion["diagnosed"]), STAGES)
        w = confusion["count"] if "count" in confusion.columns else None
        table = pd.crosstab(confusion["planted"], confusion["diagnosed"], values=w,
                            aggfunc="sum" if w is not None else None)
        table = table.reindex(index=order, columns=order, fill_value=0).fillna(0)
    elif isinstance(confusion, pd.DataFrame):
        table = confusion
        if labels is not None:
            if not len(labels) == table.shape[0] == table.shape[1]:
                raise InputError(f"{f}: {len(labels)} labels for a {table.shape} table; give one per row and column")
            table = pd.DataFrame(table.to_numpy(), index=list(labels), columns=list(labels))
    else:
        mat = as_array(confusion, "confusion", f, ndim=2)
        if labels is None:
            raise InputError(f"{f}: a matrix needs labels=[...] (one per row / column); or pass a DataFrame")
        labels = list(labels)
        if not mat.shape[0] == mat.shape[1] == len(labels):
            raise InputError(f"{f}: matrix of shape {mat.shape} but {len(labels)} labels; give one per row and column")
        table = pd.DataFrame(mat, index=labels, columns=labels)
    counts = table.to_numpy(float)  # [n_planted, n_diagnosed]
    if (counts < 0).any():
        raise InputError(f"{f}: counts must be non-negative")
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    color = frac if normalize else counts
    with paper_style():
        if ax is None:
            side = figsize(width)[0]
            fig, ax = plt.subplots(figsize=(side, height or side * 0.85))
        else:
            fig = ax.figure
        im = ax.imshow(color, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, counts.max()))
        if annotate:
            for i in range(counts.shape[0]):
                for j in range(counts.shape[1]):
                    ax.text(j, i, f"{int(round(counts[i, j]))}", ha="center", va="center", fontsize=6,
                            color="white" if color[i, j] > (0.6 if normalize else 0.6 * counts.max()) else "black")
        ax.set_xticks(range(counts.shape[1]), [str(c) for c in table.columns], rotation=45, ha="right")
        ax.set_yticks(range(counts.shape[0]), [str(c) for c in table.index])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.spines[:].set_visible(False)
        fig.colorbar(im, ax=ax, label="fraction of planted row" if normalize else "count", shrink=0.8)
    return fig


def plot_reliability(table: pd.DataFrame, ece: float | None = None, *, ax: plt.Axes | None = None,
                     width: str | float = "one") -> Figure:
    """Reliability diagram of the cascade's confidence: per bin, how often the named stage was right.

    Parameters
    ----------
    table : DataFrame
        :func:`lvlm_probe.tracing.calibration.reliability` output (``bin_low, bin_high, n, mean_confidence,
        accuracy``).
    ece : float, optional
        Written in the title.

    Returns
    -------
    Figure
        ``ax.containers[0]`` holds the accuracy bars (one per non-empty bin); the diagonal is perfect calibration.
    """
    require_columns(table, ["bin_low", "bin_high", "n", "mean_confidence", "accuracy"], "plot_reliability",
                    "reliability table")
    with paper_style():
        if ax is None:
            side = figsize(width)[0]
            fig, ax = plt.subplots(figsize=(side, side * 0.8))
        else:
            fig = ax.figure
        w = (table.bin_high - table.bin_low).to_numpy()
        ax.bar(table.bin_low, table.accuracy, width=w, align="edge", color=OKABE_ITO["blue"], edgecolor="white",
               label="stage right (fraction)")
        ax.plot(table.mean_confidence, table.accuracy, "o", color="black", ms=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        for x, y, n in zip(table.bin_low + w / 2, table.accuracy, table.n):
            ax.text(x, min(y + 0.03, 1.02), str(int(n)), ha="center", va="bottom", fontsize=5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("confidence (held-out organism)")
        ax.set_ylabel("fraction right")
        if ece is not None:
            ax.set_title(f"ECE {ece:.3f}")
        ax.legend(frameon=False, loc="upper left", fontsize=6)
    return fig
