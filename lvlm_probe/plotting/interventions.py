"""Cause x intervention heat map (fraction of each planted cause's errors an intervention fixes)."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lvlm_probe.plotting._common import require_columns
from lvlm_probe.plotting.style import figsize, paper_style


#: Colour-bar label of each value :func:`plot_intervention_matrix` can show.
VALUE_LABELS = {"fixed_fraction": "fraction of planted errors fixed",
                "reduction": "net reduction: (fixed − introduced) / planted",
                "effect": "reduction beyond the best control"}


def plot_intervention_matrix(table: pd.DataFrame, *, intended: Mapping[str, str] | None = None,
                             columns: Sequence[str] | None = None, value: str = "fixed_fraction",
                             ax: plt.Axes | None = None, width: str | float = "two",
                             height: float | None = None) -> Figure:
    """Heat map: rows planted cause, columns intervention, colour and text = ``value`` (default: the fraction of
    planted errors fixed).

    Parameters
    ----------
    table : DataFrame
        Long frame with ``cause, intervention, fixed_fraction`` (and ``n_errors``, written after the row label),
        e.g. ``cause_intervention_matrix(...)["table"]``.
    intended : mapping, optional
        Cause -> intervention expected to fix it (methods.md §9.2); those cells get a black frame.
    columns : sequence of str, optional
        Column order (default: order of first appearance).
    value : str
        A column of ``table``: ``fixed_fraction`` (0..1, blues), or ``reduction`` / ``effect`` (signed, clipped to
        [-1, 1] for the colour, red = the method adds planted errors; the cell text keeps the value).

    Returns
    -------
    Figure
        ``ax.images[0]`` holds the matrix [n_causes, n_interventions]; NaN (no planted errors) is grey.
    """
    require_columns(table, ["cause", "intervention", value], "plot_intervention_matrix", "table")
    rows = list(dict.fromkeys(table.cause))
    cols = list(columns) if columns is not None else list(dict.fromkeys(table.intervention))
    mat = table.pivot(index="cause", columns="intervention", values=value).reindex(index=rows, columns=cols)
    signed = value != "fixed_fraction"
    vals = mat.to_numpy(float)
    n_err = table.groupby("cause").n_errors.first() if "n_errors" in table else None
    with paper_style():
        if ax is None:
            w = figsize(width)[0]
            fig, ax = plt.subplots(figsize=(w, height or 0.32 * len(rows) + 1.2))
        else:
            fig = ax.figure
        cmap = plt.get_cmap("RdBu" if signed else "Blues").with_extremes(bad="0.85")
        im = ax.imshow(np.ma.masked_invalid(np.clip(vals, -1, 1)), cmap=cmap, vmin=-1 if signed else 0, vmax=1,
                       aspect="auto")
        for i in range(vals.shape[0]):
            for j in range(vals.shape[1]):
                txt = "–" if np.isnan(vals[i, j]) else f"{vals[i, j]:.2f}"
                dark = not np.isnan(vals[i, j]) and (abs(vals[i, j]) if signed else vals[i, j]) > 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=6, color="white" if dark else "black")
        for c, m in (intended or {}).items():
            if c in rows and m in cols:
                ax.add_patch(Rectangle((cols.index(m) - 0.5, rows.index(c) - 0.5), 1, 1, fill=False, lw=1.5,
                                       edgecolor="black"))
        labels = [f"{r} (n={int(n_err[r])})" if n_err is not None else r for r in rows]
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), labels)
        ax.set_xlabel("intervention")
        ax.set_ylabel("planted cause")
        ax.spines[:].set_visible(False)
        fig.colorbar(im, ax=ax, label=VALUE_LABELS.get(value, value), shrink=0.8)
    return fig
