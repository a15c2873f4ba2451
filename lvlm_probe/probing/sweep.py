"""`probe_sweep`: cross-validated linear probes per (site, layer, selection, concept), with controls.

Every score is computed on out-of-fold (OOF) predictions. Folds are assigned per *item* (all rows
of an item share a fold, and an item has the same fold for every concept, site and selection), so
the OOF prediction for an object in an image always comes from a probe that never saw that image.

Control task (Hewitt & Liang 2019): every control type (distinct value of ``control_by``) gets one label, drawn by
permuting the types' own labels, so the control labels keep the label distribution over types but carry no relation
to the features beyond type identity. With the default ``control_by="item_id"`` and item-level folds, a probe cannot
beat the majority rate on the control task except by chance; set ``control_by="name"`` (object class) to ask how well
the probe memorises a type it can see.

``p_value``: the out-of-fold predictions are held fixed and the true labels permuted; under the null that the
features carry no information about the labels, the OOF predictions are independent of the held-out labels, so this
is a valid test that needs no refitting.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from lvlm_probe.errors import InputError, StoreError
from lvlm_probe.probing.labels import BOX_COLUMNS, OTHER_BOX_COLUMNS, check_labels, patch_table
from lvlm_probe.probing.probe import LinearProbe

#: Columns of the frame :func:`probe_sweep` returns (one row per site × selection × concept).
SWEEP_COLUMNS: tuple[str, ...] = (
    "site", "component", "layer", "depth", "selection", "concept", "family", "level", "task", "score", "ci_low",
    "ci_high", "majority", "control_score", "selectivity", "p_value", "n", "n_items", "n_classes", "fold_std",
)
#: Columns of the out-of-fold predictions frame (``return_predictions=True``).
PREDICTION_COLUMNS: tuple[str, ...] = (
    "site", "component", "layer", "depth", "selection", "concept", "family", "item_id", "object_index",
    "other_index", "y_true", "y_pred", "p_true", "correct", "fold",
)
#: lbfgs tolerance of the default probe (sklearn's 1e-4 changes no reported accuracy here, at ~30% more time).
DEFAULT_TOL = 1e-3
SINGLE_ROW = ("image_mean", "last_prompt", "text_mean")
PAIR_FEATURES = ("concat", "difference", "mean")


# ---- site bookkeeping --------------------------------------------------------------------------
def site_depth(site: str, n_vision_layers: int, n_llm_layers: int) -> tuple[str, int, int]:
    """``(component, layer, depth)`` of a canonical site.

    ``layer`` is the site's layer number; ``projector.in`` is layer 0 and ``projector.out`` layer 1;
    ``llm.final_norm`` is layer ``n_llm_layers``. ``depth`` orders the whole model: vision layers
    ``0..Lv-1``, then ``projector.in`` (``Lv``) and ``projector.out`` (``Lv + 1``), then LLM layer
    ``l`` at ``Lv + 2 + l`` (every LLM stem of a layer shares its depth).
    """
    parts = site.split(".")
    comp = parts[0]
    if site == "projector.in":
        return "projector", 0, n_vision_layers
    if site == "projector.out":
        return "projector", 1, n_vision_layers + 1
    if site == "llm.final_norm":
        return "llm", n_llm_layers, n_vision_layers + 2 + n_llm_layers
    if comp not in ("vision", "llm") or not parts[-1].isdigit():
        raise InputError(f"{site!r} is not a canonical site name (see lvlm_probe.SITE_DOCS)")
    layer = int(parts[-1])
    return comp, layer, layer if comp == "vision" else n_vision_layers + 2 + layer


def _model_layers(store: Any) -> tuple[int, int]:
    info = store.model
    nv, nl = info.get("n_vision_layers"), info.get("n_llm_layers")
    sites = store.sites()
    if nv is None:
        nv = 1 + max([int(s.rsplit(".", 1)[1]) for s in sites if s.startswith("vision.")] or [-1])
    if nl is None:
        nl = 1 + max([int(s.rsplit(".", 1)[1]) for s in sites if s.startswith("llm.") and s[-1].isdigit()] or [-1])
    return int(nv), int(nl)


def _resolve_sites(store: Any, sites: Sequence[str] | str | None) -> list[str]:
    have = store.sites()
    if sites is None:
        return have
    if isinstance(sites, str):
        sites = [sites]
    out: list[str] = []
    for s in sites:
        if s.endswith(".*"):
            stem = s[:-2]
            found = [h for h in have if h.rsplit(".", 1)[0] == stem and h.rsplit(".", 1)[-1].isdigit()]
        else:
            found = [s] if s in have else []
        if not found:
            raise StoreError(f"site {s!r} is not in the store at {str(store.path)!r}; it holds {have}")
        out.extend(f for f in found if f not in out)
    return out


# ---- statistics --------------------------------------------------------------------------------
def permutation_matches(pred_counts: np.ndarray, true_counts: np.ndarray, n: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Matches ``sum(y_pred == y_perm)`` under ``n`` random permutations of the true labels.

    Only the class counts matter, so each permutation is drawn as a random contingency table
    with margins ``pred_counts`` and ``true_counts`` (sequential hypergeometric draws, vectorised
    over permutations) at a cost independent of the number of samples.

    Returns
    -------
    ndarray [n] of int
    """
    K = len(pred_counts)
    cap = np.tile(np.asarray(pred_counts, dtype=np.int64), (n, 1))
    matches = np.zeros(n, dtype=np.int64)
    for c in range(K):
        left = np.full(n, int(true_counts[c]), dtype=np.int64)
        pool = cap.sum(axis=1)
        for g in range(K):
            good = cap[:, g]
            pool = pool - good
            x = left if g == K - 1 else rng.hypergeometric(good, pool, left)
            if g == c:
                matches += x
            cap[:, g] = good - x
            left = left - x
    return matches


@dataclass
class _Concept:
    name: str
    family: str
    level: str
    task: str
    rows: pd.DataFrame
    item_code: np.ndarray  # [n] index into the sweep's item order
    y: np.ndarray  # [n] int codes or floats
    y_control: np.ndarray | None
    classes: np.ndarray | None
    folds: np.ndarray  # [n]
    boot_items: np.ndarray = field(default=None)  # [n] local item index
    boot_w: np.ndarray | None = None  # [B, n_items_local]


def _scores(task: str, y: np.ndarray, pred: np.ndarray, folds: np.ndarray, cv: int) -> tuple[float, float]:
    """Pooled OOF score and the standard deviation of per-fold scores."""
    per = []
    for k in range(cv):
        m = folds == k
        if m.sum() == 0:
            continue
        if task == "classification":
            per.append(float(np.mean(pred[m] == y[m])))
        else:
            ss = float(np.sum((y[m] - y[m].mean()) ** 2))
            per.append(1.0 - float(np.sum((y[m] - pred[m]) ** 2)) / ss if ss > 0 else math.nan)
    if task == "classification":
        pooled = float(np.mean(pred == y))
    else:
        ss = float(np.sum((y - y.mean()) ** 2))
        pooled = 1.0 - float(np.sum((y - pred) ** 2)) / ss if ss > 0 else math.nan
    return pooled, float(np.nanstd(per)) if per else math.nan


def _oof(X: np.ndarray, y: np.ndarray, folds: np.ndarray, cv: int, template: LinearProbe, task: str,
         n_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Out-of-fold predictions; classification also returns probabilities [n, n_classes]."""
    warnings.simplefilter("ignore", ConvergenceWarning)  # inside probe_sweep's warnings.catch_warnings(): restored
    n = len(y)
    # every fold is fitted from scratch: warm-starting from another fold's solution (which saw this
    # fold's rows) would leak the held-out labels into the out-of-fold predictions
    m = clone(template).set_params(task=task)
    if task == "classification":
        proba = np.zeros((n, n_classes), dtype=np.float64)
        for k in range(cv):
            te = folds == k
            if not te.any():
                continue
            tr = ~te
            present = np.unique(y[tr])
            if len(present) == 1:
                proba[te, present[0]] = 1.0
                continue
            m.fit(X[tr], y[tr])
            proba[np.ix_(te, m.classes_)] = m.predict_proba(X[te])
        return proba.argmax(axis=1), proba
    pred = np.zeros(n, dtype=np.float64)
    for k in range(cv):
        te = folds == k
        if not te.any():
            continue
        m.fit(X[~te], y[~te])
        pred[te] = m.predict(X[te])
    return pred, None


def _bootstrap_ci(c: _Concept, correct_or_pred: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the pooled OOF score, resampling *items* (cluster bootstrap)."""
    if n_boot <= 0:
        return math.nan, math.nan
    if c.boot_w is None:
        codes, local = np.unique(c.item_code, return_inverse=True)
        rng = np.random.default_rng([seed, 7919, len(codes)])
        c.boot_items = local
        c.boot_w = rng.multinomial(len(codes), np.full(len(codes), 1.0 / len(codes)), size=n_boot).astype(np.float64)
    W, it = c.boot_w, c.boot_items
    nit = W.shape[1]
    cnt = W @ np.bincount(it, minlength=nit)
    if c.task == "classification":
        stat = (W @ np.bincount(it, weights=correct_or_pred.astype(float), minlength=nit)) / cnt
    else:
        y = c.y.astype(float)
        ssres = W @ np.bincount(it, weights=(y - correct_or_pred) ** 2, minlength=nit)
        sy = W @ np.bincount(it, weights=y, minlength=nit)
        sy2 = W @ np.bincount(it, weights=y * y, minlength=nit)
        sstot = sy2 - sy * sy / cnt
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = 1.0 - ssres / sstot
    lo, hi = np.nanpercentile(stat, [2.5, 97.5])
    return float(lo), float(hi)


def _p_value(c: _Concept, pred: np.ndarray, n_perm: int, seed: int) -> float:
    """Permutation p-value of the OOF score: (1 + #{perm >= observed}) / (1 + n_perm)."""
    if n_perm <= 0:
        return math.nan
    rng = np.random.default_rng([seed, 104729, len(c.y)])
    if c.task == "classification":
        K = len(c.classes)
        obs = int(np.sum(pred == c.y))
        null = permutation_matches(np.bincount(pred, minlength=K), np.bincount(c.y, minlength=K), n_perm, rng)
        return float((1 + np.sum(null >= obs)) / (1 + n_perm))
    y = c.y.astype(float)
    obs = float(np.dot(y, pred))  # R^2 is monotone in sum(y * pred) once the margins are fixed
    null = np.empty(n_perm)
    for k in range(0, n_perm, 32):
        m = min(32, n_perm - k)
        null[k:k + m] = np.stack([rng.permutation(y) for _ in range(m)]) @ pred
    return float((1 + np.sum(null >= obs - 1e-12 * abs(obs))) / (1 + n_perm))


# ---- features ----------------------------------------------------------------------------------
class _PatchFeatures:
    """Pools the per-patch rows of one (site, image_patches) key into per-label features."""

    def __init__(self, rows: np.ndarray, index: pd.DataFrame) -> None:
        self.rows = rows
        ok = (index["row"] >= 0) & (index["col"] >= 0)  # drop non-grid tokens (e.g. a kept CLS)
        if "tile" in index:  # tiling families: the probes read the base view, the grid the boxes are mapped onto
            ok &= index["tile"] <= 0
        idx = index[ok.to_numpy()]
        rid = np.flatnonzero(ok.to_numpy())
        g = idx.groupby(["item_id", "image"], sort=False)
        shape = g.agg(H=("row", "max"), W=("col", "max"))
        shape["H"] += 1
        shape["W"] += 1
        shape["offset"] = np.concatenate([[0], np.cumsum((shape["H"] * shape["W"]).to_numpy())[:-1]])
        self.shape = shape
        key = pd.MultiIndex.from_frame(idx[["item_id", "image"]])
        pos = shape.index.get_indexer(key)
        flat = shape["offset"].to_numpy()[pos] + idx["row"].to_numpy() * shape["W"].to_numpy()[pos] + idx["col"].to_numpy()
        self.lut = np.full(int((shape["H"] * shape["W"]).sum()), -1, dtype=np.int64)
        self.lut[flat] = rid
        self.item_rows = idx.assign(_rid=rid)
        self.signature = (len(index), hash(index[[c for c in ("item_id", "image", "tile", "row", "col")
                                                           if c in index]].to_numpy().tobytes()))

    def _groups(self, rows: pd.DataFrame) -> np.ndarray:
        key = pd.MultiIndex.from_frame(rows[["item_id", "image"]].astype({"image": np.int64}))
        pos = self.shape.index.get_indexer(key)
        if (pos < 0).any():
            r = rows.iloc[int(np.flatnonzero(pos < 0)[0])]
            raise InputError(f"item {r['item_id']!r} has no image_patches rows for image {int(r['image'])}; the label "
                             "needs a captured image there (check labels 'image' column and store.failed)")
        return pos

    def box_matrix(self, rows: pd.DataFrame, cols: Sequence[str], min_overlap: float):
        """Sparse [n_labels, n_rows] averaging matrix over the patches under each label's box."""
        from scipy import sparse

        pos = self._groups(rows)
        sh = self.shape.iloc[pos]
        grids = sh[["H", "W"]].to_numpy()
        bi, rr, cc = patch_table(rows[list(cols)].to_numpy(float), rows[["width", "height"]].to_numpy(float), grids,
                                 min_overlap=min_overlap)
        rid = self.lut[sh["offset"].to_numpy()[bi] + rr * sh["W"].to_numpy()[bi] + cc]
        if (rid < 0).any():
            r = rows.iloc[int(bi[np.flatnonzero(rid < 0)[0]])]
            raise InputError(f"item {r['item_id']!r}: the store lacks some patches of its grid; recapture the item")
        cnt = np.bincount(bi, minlength=len(rows)).astype(np.float64)
        return sparse.csr_matrix((1.0 / cnt[bi], (bi, rid)), shape=(len(rows), len(self.rows)))

    def image_matrix(self, rows: pd.DataFrame):
        """Sparse [n_labels, n_rows] averaging matrix over all grid patches of each label's item image."""
        from scipy import sparse

        pos = self._groups(rows)
        ir = self.item_rows
        gpos = self.shape.index.get_indexer(pd.MultiIndex.from_frame(ir[["item_id", "image"]]))
        order = np.argsort(gpos, kind="stable")
        starts = np.searchsorted(gpos[order], np.arange(len(self.shape) + 1))
        counts = np.diff(starts)[pos]
        bi = np.repeat(np.arange(len(rows)), counts)
        local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        rid = ir["_rid"].to_numpy()[order][starts[pos][bi] + local]
        return sparse.csr_matrix((1.0 / counts[bi], (bi, rid)), shape=(len(rows), len(self.rows)))


# ---- the sweep ---------------------------------------------------------------------------------
def probe_sweep(
    store: Any,
    labels: pd.DataFrame,
    sites: Sequence[str] | str | None = None,
    *,
    selections: Sequence[str] | None = None,
    cv: int = 5,
    control: bool = True,
    control_by: str = "item_id",
    n_permutations: int = 200,
    n_bootstrap: int = 200,
    pair_feature: str = "concat",
    min_overlap: float = 0.0,
    probe: LinearProbe | None = None,
    seed: int = 0,
    return_predictions: bool = False,
    n_threads: int | None = 1,
    progress: bool = True,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Cross-validated linear probes for every (site, selection, concept), with control task and p-value.

    Parameters
    ----------
    store : ActivationStore
    labels : pandas.DataFrame
        Labels format (see :mod:`lvlm_probe.probing.labels`; e.g. from :func:`scene_labels`).
        Items missing from the store are dropped with a warning.
    sites : sequence of str, optional
        Canonical sites or ``stem.*`` patterns; default every site in the store.
    selections : sequence of str, optional
        Restrict to these store selections. Image-level concepts use each single-row selection
        (``image_mean``, ``last_prompt``, ``text_mean``) a site has, and ``image_patches`` pooled
        over the whole image where a site has no ``image_mean``; object- and pair-level concepts
        use ``image_patches`` (the patches under the box). ``generated`` is never probed.
    cv : int
        Folds; assigned per item (seeded), identical for every concept, site and selection.
    control : bool
        Also fit the control task (see Notes) and report ``control_score`` and ``selectivity``.
    control_by : str
        Labels column whose values are the control *types* (default each item is a type); rows
        where it is missing are typed by their item.
    n_permutations : int
        Permutations for ``p_value`` (0: skip).
    n_bootstrap : int
        Item-level bootstrap resamples for ``ci_low``/``ci_high`` (0: skip).
    pair_feature : {"concat", "difference", "mean"}
        Pair-level feature from the two objects' patch means ``a`` (``object_index``) and ``b``
        (``other_index``): ``[a, b]`` (default, order-aware), ``a - b`` or ``(a + b) / 2``
        (symmetric: cannot tell ``left of`` from ``right of``).
    min_overlap : float
        A patch is under a box when the box covers more than this fraction of it (0: any overlap).
    probe : LinearProbe, optional
        Template estimator (cloned per fold, each fold fitted from scratch); default
        ``LinearProbe(tol=1e-3)``.
    seed : int
        Seeds folds, control labels, bootstrap and permutations.
    return_predictions : bool
        Also return the out-of-fold predictions frame (:data:`PREDICTION_COLUMNS`).
    n_threads : int or None
        BLAS threads while fitting (1 is fastest for these small problems; None leaves it).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    results : pandas.DataFrame
        One row per (site, selection, concept), columns :data:`SWEEP_COLUMNS`: ``score`` is the
        accuracy (classification) or R^2 (regression) of the pooled out-of-fold predictions;
        ``ci_low``/``ci_high`` its 95% item-bootstrap interval; ``majority`` the frequency of
        the most common class (0 for regression); ``control_score`` the same score on the
        control task; ``selectivity = score - control_score``; ``p_value`` the permutation
        p-value; ``n`` samples, ``n_items`` items, ``n_classes`` (NA for regression);
        ``fold_std`` the spread of per-fold scores.
    predictions : pandas.DataFrame
        Only with ``return_predictions=True``: one row per label row × site × selection.

    Notes
    -----
    The control task and the permutation p-value are described in the module docstring.
    """
    labels = _check_sweep_inputs(store, labels, cv, pair_feature, control, control_by)
    site_list = _resolve_sites(store, sites)
    nv, nl = _model_layers(store)
    store_order = {iid: k for k, iid in enumerate(store.item_ids)}
    items = sorted(labels["item_id"].unique().tolist(), key=store_order.__getitem__)
    if len(items) < cv:
        raise InputError(f"{len(items)} labelled item(s) for cv={cv} folds; give at least {cv} items or lower cv")
    concepts = _build_concepts(labels, items, cv, control, control_by, seed)
    plan = _plan(store, site_list, concepts, selections)
    fit = _Fit(cv, probe if probe is not None else LinearProbe(tol=DEFAULT_TOL), control, n_bootstrap,
               n_permutations, seed, pair_feature, min_overlap)
    with tqdm(total=len(plan), desc="probe_sweep", unit="probe", disable=not progress) as bar, \
            warnings.catch_warnings(), _thread_limit(n_threads):
        results, preds = _run_plan(store, plan, site_list, items, (nv, nl), fit, return_predictions, bar)
    return _sweep_frames(results, preds, return_predictions)


def _sweep_frames(results: list[dict[str, Any]], preds: list[pd.DataFrame], return_predictions: bool
                  ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The results frame (sorted by depth, site, selection, family, concept) and, if asked, the predictions."""
    out = pd.DataFrame(results, columns=list(SWEEP_COLUMNS))
    out["n_classes"] = out["n_classes"].astype("Int64")
    out = out.sort_values(["depth", "site", "selection", "family", "concept"], kind="stable").reset_index(drop=True)
    if not return_predictions:
        return out
    pf = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    return out, pf


@dataclass(frozen=True)
class _Fit:
    """How each concept is probed (the sweep's fitting settings)."""

    cv: int
    template: LinearProbe
    control: bool
    n_bootstrap: int
    n_permutations: int
    seed: int
    pair_feature: str
    min_overlap: float


def _run_plan(store: Any, plan: list[tuple[str, str, _Concept]], site_list: list[str], items: list[str],
              layers: tuple[int, int], fit: _Fit, return_predictions: bool, bar: Any
              ) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    """Probe every planned (site, selection, concept), one site's activations in memory at a time."""
    results: list[dict[str, Any]] = []
    preds: list[pd.DataFrame] = []
    by_site: dict[str, list[tuple[str, _Concept]]] = {}
    for s, sel, c in plan:
        by_site.setdefault(s, []).append((sel, c))
    matrix_cache: dict[tuple, Any] = {}
    for s in (s for s in site_list if s in by_site):
        where = (s, *site_depth(s, *layers))
        feats: dict[str, Any] = {}
        for sel, c in by_site[s]:
            if sel not in feats:
                feats[sel] = _site_features(store, s, sel, items)
            X = _features(feats[sel], sel, c, fit.pair_feature, fit.min_overlap, matrix_cache)
            row, pred, proba = _probe_concept(X, c, fit.cv, fit.template, fit.control, fit.n_bootstrap,
                                              fit.n_permutations, fit.seed)
            results.append({"site": s, "component": where[1], "layer": where[2], "depth": where[3],
                            "selection": sel, **row})
            if return_predictions:
                preds.append(_prediction_frame(*where, sel, c, pred, proba))
            bar.update(1)
    return results, preds


@contextlib.contextmanager
def _thread_limit(n_threads: int | None) -> Iterator[None]:
    """BLAS threads limited to ``n_threads`` inside (None: unchanged), restored after."""
    if n_threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    limit = threadpool_limits(n_threads)
    try:
        yield
    finally:
        limit.restore_original_limits()


def _check_sweep_inputs(store: Any, labels: pd.DataFrame, cv: int, pair_feature: str, control: bool,
                        control_by: str) -> pd.DataFrame:
    """Validate the sweep's settings and labels; drop (with a warning) labels of items not in the store."""
    if cv < 2:
        raise InputError(f"cv={cv}: cross-validation needs at least 2 folds")
    if pair_feature not in PAIR_FEATURES:
        raise InputError(f"pair_feature={pair_feature!r}; use one of {PAIR_FEATURES}")
    labels = check_labels(labels)
    if control and control_by not in labels.columns:
        raise InputError(f"control_by={control_by!r} is not a labels column; columns are {list(labels.columns)}")
    in_store = labels["item_id"].map(lambda i: i in store)
    if not in_store.any():
        raise InputError(f"none of the labels' items is in the store (first label item {labels['item_id'].iloc[0]!r}, "
                         f"first store item {store.item_ids[:1]}); probe the store the items were captured into")
    if not in_store.all():
        gone = labels.loc[~in_store, "item_id"].unique().tolist()
        warnings.warn(f"{len(gone)} labelled item(s) are not in the store and are skipped (e.g. {gone[:5]}); "
                      "see store.failed for why", stacklevel=3)
        labels = labels[in_store.to_numpy()].reset_index(drop=True)
    return labels


def _build_concepts(labels: pd.DataFrame, items: list[str], cv: int, control: bool, control_by: str,
                    seed: int) -> list[_Concept]:
    """One :class:`_Concept` per labelled concept, with item-level folds (seeded) and control labels."""
    rng = np.random.default_rng(seed)
    item_fold = np.empty(len(items), dtype=np.int64)
    item_fold[rng.permutation(len(items))] = np.arange(len(items)) % cv
    item_pos = {iid: k for k, iid in enumerate(items)}
    concepts: list[_Concept] = []
    for name, rows in labels.groupby("concept", sort=True):
        rows = rows.reset_index(drop=True)
        task = rows["task"].iloc[0]
        code = rows["item_id"].map(item_pos).to_numpy()
        if task == "classification":
            classes, y = np.unique(rows["value"].astype(str).to_numpy() if rows["value"].map(type).nunique() > 1
                                   else rows["value"].to_numpy(), return_inverse=True)
            if len(classes) < 2:
                warnings.warn(f"concept {name!r} has a single class {classes.tolist()}; skipped", stacklevel=3)
                continue
        else:
            classes, y = None, rows["value"].to_numpy(dtype=float)
        yc = _control_labels(rows, y, control_by, [seed, 31, len(concepts)]) if control else None
        concepts.append(_Concept(str(name), str(rows["family"].iloc[0]), str(rows["level"].iloc[0]), task, rows, code,
                                 y, yc, classes, item_fold[code]))
    if not concepts:
        raise InputError("no concept has two classes or a numeric target; nothing to probe")
    return concepts


def _control_labels(rows: pd.DataFrame, y: np.ndarray, control_by: str, seed: list[int]) -> np.ndarray:
    """Control task (Hewitt & Liang 2019): one label per control type, drawn by permuting the types' labels."""
    tcol = rows[control_by]
    # rows without a type (e.g. image-level rows under control_by="name") are their item's type
    types = np.where(tcol.isna(), "item:" + rows["item_id"], "type:" + tcol.astype(str)).astype(str)
    utypes, first = np.unique(types, return_index=True)
    rep = y[first][np.random.default_rng(seed).permutation(len(first))]
    return rep[np.searchsorted(utypes, types)]


def _plan(store: Any, site_list: list[str], concepts: list[_Concept], selections: Sequence[str] | None
          ) -> list[tuple[str, str, _Concept]]:
    """Every (site, selection, concept) to probe: image concepts on single-row selections (or pooled patches),
    object and pair concepts on ``image_patches``."""
    keys = set(store.keys())
    plan: list[tuple[str, str, _Concept]] = []
    for s in site_list:
        have = {sel for (ss, sel) in keys if ss == s}
        if selections is not None:
            have &= set(selections)
        for c in concepts:
            if c.level == "image":
                sels = [sel for sel in SINGLE_ROW if sel in have]
                if "image_patches" in have and "image_mean" not in have:
                    sels.append("image_patches")
            else:
                sels = ["image_patches"] if "image_patches" in have else []
            plan.extend((s, sel, c) for sel in sels)
    if not plan:
        raise InputError(f"nothing to probe: the sites {site_list} have no selection that fits the labels' levels "
                         f"({sorted({c.level for c in concepts})}); object/pair labels need 'image_patches', image "
                         "labels one of image_mean/last_prompt/text_mean/image_patches")
    return plan


def _site_features(store: Any, site: str, sel: str, items: list[str]) -> Any:
    if sel == "image_patches":
        rows_t, index = store.get_rows(site, sel)
        return _PatchFeatures(_np32(rows_t), index)
    return _np32(store.get(site, sel, items=items))


def _probe_concept(X: np.ndarray, c: _Concept, cv: int, template: LinearProbe, control: bool, n_bootstrap: int,
                   n_permutations: int, seed: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Out-of-fold probe of one concept on features ``X``: its result row (without the site columns)."""
    n_cls = len(c.classes) if c.classes is not None else 0
    pred, proba = _oof(X, c.y, c.folds, cv, template, c.task, n_cls)
    score, fold_std = _scores(c.task, c.y, pred, c.folds, cv)
    correct = pred == c.y if c.task == "classification" else None
    lo, hi = _bootstrap_ci(c, correct if correct is not None else pred, n_bootstrap, seed)
    cscore = math.nan
    if control and c.y_control is not None:
        cpred, _ = _oof(X, c.y_control, c.folds, cv, template, c.task, n_cls)
        cscore = _scores(c.task, c.y_control, cpred, c.folds, cv)[0]
    maj = float(np.bincount(c.y).max() / len(c.y)) if c.task == "classification" else 0.0
    row = {"concept": c.name, "family": c.family, "level": c.level, "task": c.task, "score": score, "ci_low": lo,
           "ci_high": hi, "majority": maj, "control_score": cscore, "selectivity": score - cscore,
           "p_value": _p_value(c, pred, n_permutations, seed), "n": len(c.y),
           "n_items": int(len(np.unique(c.item_code))), "n_classes": n_cls if c.classes is not None else pd.NA,
           "fold_std": fold_std}
    return row, pred, proba


def _np32(t: Any) -> np.ndarray:
    import torch

    if isinstance(t, torch.Tensor):
        t = t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
        return np.ascontiguousarray(t.numpy(), dtype=np.float32)
    return np.ascontiguousarray(t, dtype=np.float32)


def _features(src: Any, sel: str, c: _Concept, pair_feature: str, min_overlap: float,
              cache: dict[tuple, Any]) -> np.ndarray:
    """Feature matrix [n_rows_of_concept, d] (pairs: [n, 2d] for concat) of one concept at one site."""
    if sel != "image_patches":
        X = src[c.item_code]
        if not np.isfinite(X).all():
            bad = c.rows["item_id"].iloc[int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])]
            raise InputError(f"item {bad!r} has a NaN {sel} (no tokens of that kind); drop its labels")
        return X
    pf: _PatchFeatures = src
    key = (c.name, pf.signature, min_overlap)
    if key not in cache:
        if c.level == "image":
            cache[key] = (pf.image_matrix(c.rows),)
        elif c.level == "object":
            cache[key] = (pf.box_matrix(c.rows, BOX_COLUMNS, min_overlap),)
        else:
            cache[key] = (pf.box_matrix(c.rows, BOX_COLUMNS, min_overlap),
                          pf.box_matrix(c.rows, OTHER_BOX_COLUMNS, min_overlap))
    mats = cache[key]
    if len(mats) == 1:
        return np.asarray(mats[0] @ pf.rows, dtype=np.float32)
    a = np.asarray(mats[0] @ pf.rows, dtype=np.float32)
    b = np.asarray(mats[1] @ pf.rows, dtype=np.float32)
    if pair_feature == "concat":
        return np.concatenate([a, b], axis=1)
    return a - b if pair_feature == "difference" else (a + b) / 2


def _prediction_frame(site: str, comp: str, layer: int, depth: int, sel: str, c: _Concept, pred: np.ndarray,
                      proba: np.ndarray | None) -> pd.DataFrame:
    n = len(c.y)
    if c.task == "classification":
        y_true = c.classes[c.y]
        y_pred = c.classes[pred]
        p_true = proba[np.arange(n), c.y]
        correct = pd.array(pred == c.y, dtype="boolean")
    else:
        y_true, y_pred = c.y, pred
        p_true = np.full(n, np.nan)
        correct = pd.array([pd.NA] * n, dtype="boolean")
    return pd.DataFrame({
        "site": site, "component": comp, "layer": layer, "depth": depth, "selection": sel, "concept": c.name,
        "family": c.family, "item_id": c.rows["item_id"].to_numpy(), "object_index": c.rows["object_index"].array,
        "other_index": c.rows["other_index"].array, "y_true": y_true, "y_pred": y_pred, "p_true": p_true,
        "correct": correct, "fold": c.folds,
    })
