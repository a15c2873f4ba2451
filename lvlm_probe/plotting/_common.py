"""Shared helpers of the figure functions: input validation, grids from frames, images and boxes."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.errors import InputError


def require_columns(df: Any, columns: Iterable[str], func: str, what: str = "frame") -> pd.DataFrame:
    """Check that ``df`` is a DataFrame with ``columns``; raise :class:`InputError` naming the missing ones."""
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{func}: expected a pandas DataFrame ({what}), got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{func}: the {what} lacks column(s) {missing}; it has {list(df.columns)}. "
                         f"Pass the DataFrame returned by the matching lvlm_probe function (see docs/plotting.md).")
    if len(df) == 0:
        raise InputError(f"{func}: the {what} is empty; nothing to plot")
    return df


def select_one(df: pd.DataFrame, column: str, value: Any, func: str, param: str | None = None) -> pd.DataFrame:
    """Rows with ``df[column] == value``; with ``value=None`` the column must hold a single value."""
    param = param or column
    if column not in df.columns:
        return df
    values = list(pd.unique(df[column].dropna()))
    if value is None:
        if len(values) > 1:
            shown = values[:8]
            raise InputError(f"{func}: the frame holds {len(values)} values of {column!r} ({shown}"
                             f"{' ...' if len(values) > 8 else ''}); choose one with {param}=...")
        return df
    out = df[df[column] == value]
    if len(out) == 0:
        raise InputError(f"{func}: no rows with {column} == {value!r}; the frame has {values[:8]}")
    return out


def as_array(values: Any, name: str, func: str, ndim: int = 2) -> np.ndarray:
    """A float numpy array from a numpy array, torch tensor or nested list, with ``ndim`` dimensions."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch
        values = values.detach().float().cpu().numpy()
    arr = np.asarray(values, dtype=float)
    if arr.ndim != ndim:
        raise InputError(f"{func}: {name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def frame_to_grid(df: pd.DataFrame, value: str, func: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Pivot a long frame with ``row``, ``col`` and ``value`` columns into a [rows, cols] array (NaN where absent).

    Raises :class:`InputError` when a (row, col) occurs twice (the frame mixes items / layers / heads).
    """
    d = df.dropna(subset=["row", "col"])
    if len(d) == 0:
        raise InputError(f"{func}: no rows with patch coordinates (row, col); keep the image-token rows")
    r = d["row"].astype(int).to_numpy()
    c = d["col"].astype(int).to_numpy()
    dup = pd.Series(list(zip(r, c))).duplicated()
    if dup.any():
        raise InputError(f"{func}: patch (row, col) = {tuple(pd.Series(list(zip(r, c)))[dup].iloc[0])} occurs "
                         f"more than once; filter the frame to one item / image / method / site / layer / head, "
                         f"or average first (e.g. df.groupby(['row', 'col'], as_index=False)['{value}'].mean())")
    rows, cols = shape if shape is not None else (int(r.max()) + 1, int(c.max()) + 1)
    grid = np.full((rows, cols), np.nan)
    grid[r, c] = d[value].astype(float).to_numpy()
    return grid


def as_image(image: Any, func: str) -> np.ndarray | None:
    """An [H, W] or [H, W, 3|4] array from a PIL image, array, tensor or path; None stays None."""
    if image is None:
        return None
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        from PIL import Image

        try:
            with Image.open(image) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as e:
            raise InputError(f"{func}: cannot read image {image!r} ({e}); pass a PIL image, array or image file") from e
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # [C, H, W] -> [H, W, C]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise InputError(f"{func}: image must be [H, W] or [H, W, C], got shape {arr.shape}")
    return arr


def parse_boxes(boxes: Any, labels: Sequence[str] | None, func: str
                ) -> tuple[list[tuple[float, float, float, float]], list[str | None]]:
    """Boxes ``(x0, y0, x1, y1)`` in pixels and their labels from a SceneGraph, SceneObjects or tuples."""
    if boxes is None:
        return [], []
    default_labels: list[str | None] = []
    if hasattr(boxes, "objects"):  # SceneGraph
        boxes = boxes.objects
    out: list[tuple[float, float, float, float]] = []
    for k, b in enumerate(boxes):
        name = None
        if hasattr(b, "box") and hasattr(b, "name"):  # SceneObject
            name = b.describe() if hasattr(b, "describe") else b.name
            b = b.box
            if b is None:
                raise InputError(f"{func}: object {k} ({name!r}) has no box; give boxes with (x0, y0, x1, y1)")
        try:
            x0, y0, x1, y1 = (float(v) for v in b)
        except (TypeError, ValueError) as e:
            raise InputError(f"{func}: box {k} = {b!r} is not (x0, y0, x1, y1) in pixels") from e
        out.append((x0, y0, x1, y1))
        default_labels.append(name)
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(out):
            raise InputError(f"{func}: {len(labels)} labels for {len(out)} boxes; give one label per box")
        return out, labels
    return out, default_labels


def ordered(values: Iterable[Any], order: Sequence[Any]) -> list[Any]:
    """Unique ``values`` with those in ``order`` first (in that order), then the rest in first-seen order."""
    seen = list(pd.unique(pd.Series(list(values))))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


def map_thumbnail_png(values: np.ndarray, title: str = "", size: float = 1.6) -> bytes:
    """A small PNG of a [rows, cols] map (diverging colour map), drawn on an explicit Figure (no pyplot state),
    for notebook views of results."""
    import io

    from matplotlib.figure import Figure

    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(values, cmap="PuOr_r")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()
