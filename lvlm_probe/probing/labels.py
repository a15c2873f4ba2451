"""Probe labels: the tidy labels format, a builder from scene graphs, and box → patch mapping.

Labels format
-------------
One row per probing sample. Required columns: ``item_id`` (str), ``concept`` (str), ``value``
(a class label, or a number for continuous targets). Optional columns (filled by
:func:`check_labels` when absent):

=============== =========================================================================
``family``      ``"object" | "attribute" | "relation"`` (``"custom"`` when not given)
``level``       ``"image"`` (feature = whole image), ``"object"`` (patches under one box) or
                ``"pair"`` (patches under two boxes); inferred from the box columns
``image``       index of the image within the item (default 0)
``object_index`` nullable Int64: index into ``SceneGraph.objects`` (object and pair level)
``other_index`` nullable Int64: the second object of a pair
``name``        class name of the object (``other_name`` for the second object of a pair)
``x0 y0 x1 y1`` the object's box in the item image's pixel coordinates (x1, y1 exclusive)
``ox0 oy0 ox1 oy1`` the second object's box (pair level)
``width height`` the item image's size in pixels (needed for object and pair level)
``task``        ``"classification"`` or ``"regression"`` (inferred per concept when absent)
=============== =========================================================================
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.data.scene import GEOMETRIC_RELATIONS, SceneGraph
from lvlm_probe.errors import InputError

FAMILIES: tuple[str, ...] = ("object", "attribute", "relation")
LEVELS: tuple[str, ...] = ("image", "object", "pair")
BOX_COLUMNS: tuple[str, ...] = ("x0", "y0", "x1", "y1")
OTHER_BOX_COLUMNS: tuple[str, ...] = ("ox0", "oy0", "ox1", "oy1")
#: Column order of a labels frame (see the module docstring).
LABEL_COLUMNS: tuple[str, ...] = (
    "item_id", "family", "concept", "value", "level", "image", "object_index", "other_index", "name",
    "other_name", *BOX_COLUMNS, *OTHER_BOX_COLUMNS, "width", "height", "task",
)
TASKS: tuple[str, ...] = ("classification", "regression")


# ---- scene graphs → labels ---------------------------------------------------------------------
def _scene_of(item: Any) -> tuple[str, SceneGraph]:
    iid = str(getattr(item, "id", ""))
    scene = getattr(item, "scene", None)
    if isinstance(scene, dict):
        scene = SceneGraph.from_dict(scene)
    if not isinstance(scene, SceneGraph):
        raise InputError(f"item {iid!r} has no SceneGraph (item.scene is {type(scene).__name__}); scene_labels "
                         "needs ground truth: build items with SceneWorld or pass Item(scene=SceneGraph(...))")
    return iid, scene


def _image_size(item: Any, scene: SceneGraph) -> tuple[float, float]:
    if scene.width is not None and scene.height is not None:
        return float(scene.width), float(scene.height)
    im = item.images()[0]
    return float(im.width), float(im.height)


def _dominant(a: Any, b: Any, preds: set[str], width: float, height: float) -> str:
    """The one predicate of a pair: the geometric one on the axis of larger centre offset."""
    horiz = sorted(p for p in preds if p in ("left of", "right of"))
    vert = sorted(p for p in preds if p in ("above", "below"))
    other = sorted(p for p in preds if p not in GEOMETRIC_RELATIONS)
    if horiz and vert and a.box is not None and b.box is not None:
        (ax, ay), (bx, by) = a.center, b.center
        return horiz[0] if abs(ax - bx) / width >= abs(ay - by) / height else vert[0]
    return (horiz or vert or other)[0]


def scene_labels(
    items: Sequence[Any],
    families: Iterable[str] = FAMILIES,
    *,
    classes: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    predicates: Sequence[str] = tuple(GEOMETRIC_RELATIONS),
    seed: int = 0,
) -> pd.DataFrame:
    """Build a tidy labels frame from the items' scene graphs.

    Parameters
    ----------
    items : sequence of Item
        Each with a :class:`~lvlm_probe.SceneGraph` in ``item.scene`` (boxes needed for the
        attribute and relation families).
    families : iterable of {"object", "attribute", "relation"}
        ``object``: image level, one concept ``object:<class>`` per class with value
        ``"yes"``/``"no"`` (is an object of that class in the image).
        ``attribute``: object level, one concept per attribute type (e.g. ``color``, ``size``),
        one row per object with that attribute; the feature is the mean of the patches under
        the object's box.
        ``relation``: pair level, concept ``relation``; one row per unordered pair of objects
        that stands in one of ``predicates``, oriented at random (seeded) as
        ``objects[object_index] <value> objects[other_index]``. When a pair holds a horizontal
        and a vertical predicate, the one on the axis of the larger box-centre offset (relative
        to the image size) is kept. The reversed pair would carry the inverse label on the same
        two patch sets, so it is not added.
    classes : sequence of str, optional
        Classes of the object family (default: every class seen in the items, sorted).
    attributes : sequence of str, optional
        Attribute types of the attribute family (default: every one seen, sorted).
    predicates : sequence of str
        Relation predicates of the relation family.
    seed : int
        Seeds the orientation of relation pairs.

    Returns
    -------
    pandas.DataFrame
        In the labels format (columns :data:`LABEL_COLUMNS`).
    """
    fams = list(dict.fromkeys(families))
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        raise InputError(f"unknown label famil(ies) {bad}; choose from {FAMILIES}")
    scenes = [(_scene_of(it), it) for it in items]
    if classes is None:
        classes = sorted({n for (_, s), _ in scenes for n in s.names})
    if attributes is None:
        attributes = sorted({a for (_, s), _ in scenes for o in s.objects for a in o.attributes})
    want_preds = set(predicates)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    for (iid, scene), it in scenes:
        if "object" in fams:
            present = set(scene.names)
            for c in classes:
                rows.append({"item_id": iid, "family": "object", "concept": f"object:{c}",
                             "value": "yes" if c in present else "no", "level": "image"})
        if "attribute" not in fams and "relation" not in fams:
            continue
        need_boxes = scene.objects and any(o.box is None for o in scene.objects)
        if need_boxes:
            k = next(k for k, o in enumerate(scene.objects) if o.box is None)
            raise InputError(f"item {iid!r}: object {k} ({scene.objects[k].name!r}) has no box; the attribute and "
                             "relation families probe the patches under each box, so give every object a box "
                             "or build labels with families=('object',)")
        width, height = _image_size(it, scene) if scene.objects else (math.nan, math.nan)
        if "attribute" in fams:
            for k, o in enumerate(scene.objects):
                for a in attributes:
                    if a in o.attributes:
                        rows.append({"item_id": iid, "family": "attribute", "concept": a, "value": o.attributes[a],
                                     "level": "object", "object_index": k, "name": o.name,
                                     **dict(zip(BOX_COLUMNS, o.box)), "width": width, "height": height})
        if "relation" in fams:
            held: dict[tuple[int, int], set[str]] = {}
            for r in scene.relations:
                if r.predicate in want_preds:
                    held.setdefault((r.subject, r.object), set()).add(r.predicate)
            for i in range(len(scene.objects)):
                for j in range(i + 1, len(scene.objects)):
                    if (i, j) not in held and (j, i) not in held:
                        continue
                    s, o = (i, j) if rng.random() < 0.5 else (j, i)
                    if (s, o) not in held:  # only the other orientation was listed
                        s, o = o, s
                    a, b = scene.objects[s], scene.objects[o]
                    rows.append({"item_id": iid, "family": "relation", "concept": "relation",
                                 "value": _dominant(a, b, held[(s, o)], width, height), "level": "pair",
                                 "object_index": s, "other_index": o, "name": a.name, "other_name": b.name,
                                 **dict(zip(BOX_COLUMNS, a.box)), **dict(zip(OTHER_BOX_COLUMNS, b.box)),
                                 "width": width, "height": height})
    return check_labels(pd.DataFrame(rows, columns=[c for c in LABEL_COLUMNS if c != "task"]))


# ---- validation ------------------------------------------------------------------------------
def _infer_task(values: pd.Series) -> str:
    """Regression for real-valued targets (numbers that are not all integers, or > 20 distinct)."""
    v = values.to_numpy(dtype=object)
    if all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)) for x in v):
        arr = np.asarray(v, dtype=float)
        if not np.all(arr == np.round(arr)) or len(np.unique(arr)) > 20:
            return "regression"
    return "classification"


def check_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Validate a labels frame and fill its optional columns.

    Parameters
    ----------
    labels : pandas.DataFrame
        At least ``item_id``, ``concept``, ``value`` (see the module docstring for the format).

    Returns
    -------
    pandas.DataFrame
        A copy with every column of :data:`LABEL_COLUMNS` (extra columns kept), ``level`` and
        ``task`` inferred where missing.

    Raises
    ------
    InputError
        A required column is missing, a value is missing, a box is incomplete or lacks the
        image size, or a concept mixes levels or tasks.
    """
    if not isinstance(labels, pd.DataFrame):
        raise InputError(f"labels must be a pandas DataFrame, got {type(labels).__name__}; build one with "
                         "scene_labels(items) or in the format of lvlm_probe.probing.labels")
    missing = [c for c in ("item_id", "concept", "value") if c not in labels.columns]
    if missing:
        raise InputError(f"labels lack column(s) {missing}; a labels frame needs item_id, concept, value "
                         "(see docs/probing.md, 'Labels format')")
    df = _fill_optional(labels.copy().reset_index(drop=True))
    has_box, has_other = _check_boxes(df)
    _check_levels(df, has_box, has_other)
    df["task"] = df["concept"].map(_concept_tasks(df))
    extra = [c for c in df.columns if c not in LABEL_COLUMNS]
    return df[list(LABEL_COLUMNS) + extra]


def _fill_optional(df: pd.DataFrame) -> pd.DataFrame:
    """String ids and concepts, a value on every row, and every optional column present with its default."""
    df["item_id"] = df["item_id"].astype(str)
    df["concept"] = df["concept"].astype(str)
    nan_val = df["value"].isna()
    if nan_val.any():
        r = df[nan_val].iloc[0]
        raise InputError(f"labels row of item {r['item_id']!r}, concept {r['concept']!r} has no value; drop it or "
                         "give it one")
    df["family"] = df["family"].fillna("custom").astype(str) if "family" in df else "custom"
    df["image"] = df["image"].fillna(0).astype(int) if "image" in df else 0
    for c in ("object_index", "other_index"):
        df[c] = pd.array(df[c] if c in df else [pd.NA] * len(df), dtype="Int64")
    for c in ("name", "other_name", "task"):
        if c not in df:
            df[c] = None
    for c in (*BOX_COLUMNS, *OTHER_BOX_COLUMNS, "width", "height"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float) if c in df else math.nan
    return df


def _check_boxes(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each row's box and other box are complete or absent; returns the masks of present coordinates."""
    has_box = df[list(BOX_COLUMNS)].notna()
    has_other = df[list(OTHER_BOX_COLUMNS)].notna()
    for cols, mask in ((BOX_COLUMNS, has_box), (OTHER_BOX_COLUMNS, has_other)):
        partial = mask.any(axis=1) & ~mask.all(axis=1)
        if partial.any():
            r = df[partial].iloc[0]
            raise InputError(f"labels row of item {r['item_id']!r}, concept {r['concept']!r}: incomplete box "
                             f"{[r[c] for c in cols]}; give all of {list(cols)} or none")
    return has_box, has_other


def _check_levels(df: pd.DataFrame, has_box: pd.DataFrame, has_other: pd.DataFrame) -> None:
    """Infer missing levels from the boxes (in place); object and pair rows need their boxes and the image size."""
    inferred = np.where(has_other.all(axis=1), "pair", np.where(has_box.all(axis=1), "object", "image"))
    if "level" not in df:
        df["level"] = inferred
    df["level"] = df["level"].fillna(pd.Series(inferred, index=df.index)).astype(str)
    bad_level = ~df["level"].isin(LEVELS)
    if bad_level.any():
        raise InputError(f"unknown level(s) {sorted(set(df.loc[bad_level, 'level']))}; levels are {LEVELS}")
    need_box = df["level"].isin(("object", "pair"))
    lacks = need_box & ~has_box.all(axis=1) | (df["level"] == "pair") & ~has_other.all(axis=1)
    if lacks.any():
        r = df[lacks].iloc[0]
        raise InputError(f"labels row of item {r['item_id']!r}, concept {r['concept']!r} is {r['level']}-level but "
                         f"lacks its box column(s); give {list(BOX_COLUMNS)}"
                         f"{' and ' + str(list(OTHER_BOX_COLUMNS)) if r['level'] == 'pair' else ''}")
    no_size = need_box & ~(df["width"].gt(0) & df["height"].gt(0))
    if no_size.any():
        r = df[no_size].iloc[0]
        raise InputError(f"labels row of item {r['item_id']!r}, concept {r['concept']!r} has a box but no image size; "
                         "give width and height (pixels of the item's image) so the box can be mapped to the patch grid")


def _concept_tasks(df: pd.DataFrame) -> dict[str, str]:
    """Concept -> its one task (given, or inferred from its values); a concept keeps one level."""
    tasks = {}
    for concept, g in df.groupby("concept", sort=False):
        levels = set(g["level"])
        if len(levels) > 1:
            raise InputError(f"concept {concept!r} mixes levels {sorted(levels)}; use one concept name per level")
        given = set(g["task"].dropna())
        if len(given) > 1 or (given and not given <= set(TASKS)):
            raise InputError(f"concept {concept!r} has task(s) {sorted(given)}; use one of {TASKS}")
        tasks[concept] = given.pop() if given else _infer_task(g["value"])
    return tasks


# ---- boxes → patches -------------------------------------------------------------------------
def box_patches(box: Sequence[float], image_size: tuple[float, float], grid: tuple[int, int], *,
                min_overlap: float = 0.0) -> list[tuple[int, int]]:
    """Patch cells under a box.

    Parameters
    ----------
    box : (x0, y0, x1, y1)
        Pixel box in the image's coordinates, ``x1``/``y1`` exclusive.
    image_size : (width, height)
        The image's size in pixels.
    grid : (rows, cols)
        The patch grid that covers the whole image (cell ``(r, c)`` spans
        ``x in [c*W/cols, (c+1)*W/cols)``, ``y in [r*H/rows, (r+1)*H/rows)``).
    min_overlap : float
        Keep a cell when the box covers more than this fraction of the cell's area (0: any
        overlap). When no cell passes, the cell holding the box centre is returned.

    Returns
    -------
    list of (row, col)
        In raster order.
    """
    rows, cols = patch_table(np.asarray([box], dtype=float), np.asarray([image_size], dtype=float),
                             np.asarray([grid], dtype=np.int64), min_overlap=min_overlap)[1:]
    return list(zip(rows.tolist(), cols.tolist()))


def patch_table(boxes: np.ndarray, sizes: np.ndarray, grids: np.ndarray, *,
                min_overlap: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`box_patches` for many boxes.

    Parameters
    ----------
    boxes : ndarray [N, 4]
        ``x0, y0, x1, y1`` per box.
    sizes : ndarray [N, 2]
        ``width, height`` of each box's image.
    grids : ndarray [N, 2]
        ``rows, cols`` of each box's patch grid.
    min_overlap : float
        See :func:`box_patches`.

    Returns
    -------
    box_index, row, col : ndarray [M]
        One entry per (box, cell under it), boxes in order, cells in raster order.
    """
    n = len(boxes)
    if n == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    H, W = grids[:, 0].astype(float), grids[:, 1].astype(float)
    ch, cw = sizes[:, 1] / H, sizes[:, 0] / W  # cell height / width in pixels
    x0, y0, x1, y1 = (boxes[:, k] for k in range(4))
    c0 = np.clip(np.floor(x0 / cw), 0, W - 1).astype(np.int64)
    c1 = np.clip(np.ceil(x1 / cw) - 1, 0, W - 1).astype(np.int64)
    r0 = np.clip(np.floor(y0 / ch), 0, H - 1).astype(np.int64)
    r1 = np.clip(np.ceil(y1 / ch) - 1, 0, H - 1).astype(np.int64)
    nr, nc = np.maximum(r1 - r0 + 1, 1), np.maximum(c1 - c0 + 1, 1)
    cnt = nr * nc
    idx = np.repeat(np.arange(n), cnt)
    local = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    rr = r0[idx] + local // nc[idx]
    cc = c0[idx] + local % nc[idx]
    ox = np.minimum(x1[idx], (cc + 1) * cw[idx]) - np.maximum(x0[idx], cc * cw[idx])
    oy = np.minimum(y1[idx], (rr + 1) * ch[idx]) - np.maximum(y0[idx], rr * ch[idx])
    frac = np.clip(ox, 0, None) * np.clip(oy, 0, None) / (cw[idx] * ch[idx])
    keep = frac > min_overlap
    got = np.bincount(idx[keep], minlength=n) > 0
    if not got.all():  # degenerate or tiny boxes: the cell under the centre
        miss = np.flatnonzero(~got)
        cx, cy = (x0[miss] + x1[miss]) / 2, (y0[miss] + y1[miss]) / 2
        mr = np.clip(np.floor(cy / ch[miss]), 0, H[miss] - 1).astype(np.int64)
        mc = np.clip(np.floor(cx / cw[miss]), 0, W[miss] - 1).astype(np.int64)
        idx = np.concatenate([idx[keep], miss])
        rr = np.concatenate([rr[keep], mr])
        cc = np.concatenate([cc[keep], mc])
        order = np.lexsort((cc, rr, idx))
        return idx[order], rr[order], cc[order]
    return idx[keep], rr[keep], cc[keep]
