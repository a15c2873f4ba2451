"""The one paper style: rcParams file, colour-blind-safe palette, column widths and atomic figure saving."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from lvlm_probe._atomic import atomic_open
from lvlm_probe.errors import InputError
from lvlm_probe.schema import KINDS, LEVELS, STAGE_DISPLAY_ORDER  # noqa: F401 - KINDS, LEVELS re-exported

#: Path of the shipped matplotlib style file.
STYLE_PATH: Path = Path(__file__).with_name("paper.mplstyle")

#: Okabe & Ito (2008) colour-blind-safe palette, by name.
OKABE_ITO: dict[str, str] = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
#: The same colours as a list, in the order of the style's colour cycle.
PALETTE: list[str] = list(OKABE_ITO.values())

#: Figure widths in inches: one column and two columns of a typical two-column paper.
ONE_COLUMN: float = 3.5
TWO_COLUMN: float = 7.2

#: Colours of the model components of a probe sweep.
COMPONENT_COLORS: dict[str, str] = {"vision": OKABE_ITO["sky"], "projector": OKABE_ITO["orange"],
                                    "llm": OKABE_ITO["green"]}
#: Order and colours of the cause stages and levels of a diagnosis.
STAGES: tuple[str, ...] = STAGE_DISPLAY_ORDER
STAGE_COLORS: dict[str, str] = {
    "cooccurrence": "#E69F00", "attribute prior": "#F0E442", "relation prior": "#F5C710",
    "encoder": "#0072B2", "projector": "#56B4E9", "llm fusion": "#009E73",
    "decoding": "#D55E00", "long generation": "#CC79A7", "undetermined": "#999999",
}

LEVEL_COLORS: dict[str, str] = {"data": "#E69F00", "model": "#0072B2", "inference": "#D55E00",
                                "undetermined": "#999999"}
#: Highlight colour for error spans (text and bars).
HIGHLIGHT: str = OKABE_ITO["yellow"]

#: Colour maps: sequential (perceptually uniform, colour-blind safe) and diverging (signed attributions).
SEQUENTIAL_CMAP: str = "viridis"
DIVERGING_CMAP: str = "PuOr_r"


def use_style() -> None:
    """Apply the paper style globally (``plt.style.use``) for the rest of the session."""
    plt.style.use(str(STYLE_PATH))


def paper_style() -> contextlib.AbstractContextManager:
    """Context manager applying the paper style only inside the ``with`` block.

    Every figure function of :mod:`lvlm_probe.plotting` builds its figure inside this context.

    Examples
    --------
    >>> with paper_style():
    ...     fig, ax = plt.subplots(figsize=figsize("one"))
    """
    return plt.style.context(str(STYLE_PATH))


def figsize(width: str | float = "one", aspect: float = 0.68, height: float | None = None) -> tuple[float, float]:
    """Figure size ``(w, h)`` in inches.

    Parameters
    ----------
    width : {"one", "two"} or float
        ``"one"`` = :data:`ONE_COLUMN` (3.5 in), ``"two"`` = :data:`TWO_COLUMN` (7.2 in), or inches.
    aspect : float
        Height / width when ``height`` is not given.
    height : float, optional
        Height in inches.
    """
    if isinstance(width, str):
        if width not in ("one", "two"):
            raise InputError(f"width={width!r} is not a column width; use 'one' (3.5 in), 'two' (7.2 in) or inches")
        w = ONE_COLUMN if width == "one" else TWO_COLUMN
    else:
        w = float(width)
        if not w > 0:
            raise InputError(f"width={width!r} must be positive inches")
    return w, float(height) if height is not None else w * aspect


def save_figure(fig: Figure, path_stem: str | os.PathLike, formats: Sequence[str] = ("pdf", "png"),
                dpi: int | None = None) -> list[Path]:
    """Save ``fig`` as ``path_stem.<fmt>`` for each format, each written atomically.

    Each file is drawn into a temporary file in the target folder and renamed into place, so a crash never
    leaves a half-written figure. Parent folders are created.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path_stem : str or PathLike
        Path without suffix (a suffix equal to one of ``formats`` is dropped), e.g. ``"figs/probe_curves"``.
    formats : sequence of str
        Any format matplotlib writes: ``"pdf"``, ``"svg"`` (vector), ``"png"`` (raster, ``dpi``).
    dpi : int, optional
        Raster resolution; the style's ``savefig.dpi`` (300) by default.

    Returns
    -------
    list of Path
        The written files, in the order of ``formats``.
    """
    if isinstance(formats, str):
        formats = (formats,)
    if not formats:
        raise InputError("save_figure needs at least one format, e.g. formats=('pdf', 'png')")
    # every format matplotlib can write (savefig switches canvas per format, whatever the caller's backend)
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    bad = [f for f in formats if f.lower().lstrip(".") not in supported]
    if bad:
        raise InputError(f"save_figure cannot write format(s) {bad}; supported are {sorted(supported)}")
    stem = Path(path_stem)
    if stem.suffix.lstrip(".").lower() in {f.lower().lstrip(".") for f in formats}:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with paper_style():
        for fmt in formats:
            fmt = fmt.lower().lstrip(".")
            target = stem.parent / f"{stem.name}.{fmt}"
            with atomic_open(target, "wb") as fh:
                fig.savefig(fh, format=fmt, dpi=dpi if dpi is not None else mpl.rcParams["savefig.dpi"])
            written.append(target)
    return written
