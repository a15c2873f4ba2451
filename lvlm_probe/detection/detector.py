"""A claim-level hallucination detector from internal states, its layer sweep and output-only baselines.

The detector is a logistic regression (scikit-learn) on the scalar features of :mod:`lvlm_probe.detection.features`
and, optionally, the residual stream at one LLM layer, in the line of hidden-state probes for hallucination (HALP,
https://arxiv.org/abs/2406.05927; research/methods.md §4.4) and internal confidence (Jiang et al., ICLR 2025).
Every feature is also expressed **within each model**, against that model's own claims: scalar features as
quantiles (beside their raw values), residual dimensions as robust z-scores (median, interquartile range). Each
training model weighs the same in the fit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lvlm_probe.detection.collect import ClaimSet
from lvlm_probe.errors import InputError

#: Baselines: one feature each, signed so that a high score means a likely hallucination. ``p_emit`` and
#: ``entropy`` read only the output distribution; ``internal_confidence`` and ``p_present`` read internal states.
BASELINES: dict[str, tuple[str, float]] = {"p_emit": ("p_emit", -1.0), "entropy": ("entropy", 1.0),
                                           "internal_confidence": ("internal_confidence", -1.0),
                                           "p_present": ("p_present", -1.0)}
_KINDS = ("object", "attribute", "relation")
#: ``format`` of a saved detector (:meth:`HallucinationDetector.save`).
DETECTOR_FORMAT = "lvlm_probe.HallucinationDetector/1"


def _quantiles(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Column-wise mid-rank quantile of each value within its group (0.5 where missing)."""
    from scipy.stats import rankdata

    out = np.full(x.shape, 0.5)
    for g in np.unique(groups):
        m = groups == g
        for j in range(x.shape[1]):
            v = x[m, j]
            ok = np.isfinite(v)
            if ok.any():
                col = np.full(len(v), 0.5)
                col[ok] = (rankdata(v[ok]) - 0.5) / ok.sum()
                out[np.flatnonzero(m), j] = col
    return out


def _robust_z(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(x - median) / IQR within each group (column-wise), clipped to ±10; NaN → 0."""
    out = np.zeros(x.shape)
    for g in np.unique(groups):
        m = groups == g
        v = x[m].astype(np.float64)
        q1, med, q3 = np.nanpercentile(v, [25, 50, 75], axis=0)
        scale = np.where(q3 - q1 > 1e-12, q3 - q1, np.nanstd(v, axis=0) + 1e-12)
        out[m] = np.nan_to_num((v - med) / scale, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(out, -10, 10)


def _scalar_matrix(t: pd.DataFrame) -> np.ndarray:
    eps = 1e-9
    cols = [np.log(1 - t.p_emit.astype(float) + eps), t.entropy.astype(float), np.log(t["rank"].astype(float)),
            t.pmi_img.astype(float), t.knockout_effect.astype(float), t.img_attn.astype(float),
            t.img_attn_ratio.astype(float), np.log(t.internal_confidence.astype(float) + eps),
            t.p_present.astype(float)]
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols], axis=1)


def feature_matrix(claims: ClaimSet, layer: int | None, features: str = "scalar") -> np.ndarray:
    """The detector's input.

    ``"scalar"``: per-model quantiles of the scalar features, an indicator of a missing ``p_present``, the claim's
    kind (object / attribute / relation) and whether it answers a question, and the scalar features' raw values
    (log(1 - p_emit), entropy, log rank, PMI, knockout effect, attention mass and ratio, log internal confidence,
    p_present); ``"resid"``: per-model robust z-scores of the residual stream at ``layer``; ``"all"``: both.

    The quantiles rank a claim among its own model's claims; the raw values keep the absolute scale, which tells
    a model that hallucinates often from one that rarely does. That scale carries over between models of one
    family and training recipe (the organisms), not between model sizes: fit a detector per family.

    Returns
    -------
    numpy.ndarray [n_claims, n_features]
    """
    if features not in ("all", "resid", "scalar"):
        raise InputError(f"features={features!r}; use 'all', 'resid' or 'scalar'")
    t = claims.table
    groups = t.model.astype(str).to_numpy()
    parts = []
    if features in ("all", "scalar"):
        raw = _scalar_matrix(t)
        parts.append(_quantiles(raw, groups))
        raw[:, -1] = np.where(np.isnan(raw[:, -1]), 0.5, raw[:, -1])  # p_present unknown: even odds
        parts.append(np.clip(np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0), -30, 30))
        parts.append(np.stack([t.p_present.isna().to_numpy()] + [(t.kind == k).to_numpy() for k in _KINDS]
                              + [(t.task != "caption").to_numpy()], axis=1).astype(float))
    if features in ("all", "resid"):
        if layer is None or not -claims.resid.shape[1] <= layer < claims.resid.shape[1]:
            raise InputError(f"layer={layer!r} is outside the claims' {claims.resid.shape[1]} LLM layers")
        parts.append(_robust_z(claims.resid[:, layer, :], groups))
    return np.concatenate(parts, axis=1)


#: Columns of :func:`_scalar_matrix` read by each expert: the output distribution, and image grounding.
EXPERTS: dict[str, tuple[int, ...]] = {"output": (0, 1, 2), "grounding": (3, 4, 5, 6, 7, 8)}


def feature_groups(claims: ClaimSet, layer: int | None, features: str = "scalar") -> dict[str, np.ndarray]:
    """The inputs of the detector's experts: ``output`` (p_emit, entropy, rank), ``grounding`` (image PMI,
    knockout effect, image attention and its ratio, internal confidence, p_present), each as per-model quantiles
    and raw values with the claim's kind; and ``residual`` (robust z-scores at ``layer``) with ``"all"`` /
    ``"resid"``.

    Returns
    -------
    dict of str -> numpy.ndarray [n_claims, n_features]
    """
    full = feature_matrix(claims, layer, features)
    n_scalar = len(EXPERTS["output"]) + len(EXPERTS["grounding"])
    out: dict[str, np.ndarray] = {}
    if features in ("all", "scalar"):
        q, raw, flags = full[:, :n_scalar], full[:, n_scalar:2 * n_scalar], full[:, 2 * n_scalar:2 * n_scalar + 5]
        for name, cols in EXPERTS.items():
            c = list(cols)
            out[name] = np.concatenate([q[:, c], raw[:, c], flags], axis=1)
    if features in ("all", "resid"):
        out["residual"] = full[:, (2 * n_scalar + 5) if features == "all" else 0:]
    return out


def _labels(claims: ClaimSet) -> np.ndarray:
    y = claims.table.misaligned.to_numpy(dtype=float)
    if np.isnan(y).any():
        raise InputError(f"{int(np.isnan(y).sum())} claim(s) have no label (no ground truth); fit and evaluate on "
                         "judged claims: claims.labelled()")
    if len(np.unique(y)) < 2:
        raise InputError(f"all {len(y)} claims are {'misaligned' if y.any() else 'correct'}; a detector needs both")
    return y.astype(int)


def _model_weights(claims: ClaimSet) -> np.ndarray:
    """Sample weights giving each model the same total weight (mean 1)."""
    g = claims.table.model.astype(str)
    w = 1.0 / g.map(g.value_counts()).to_numpy(dtype=float)
    return w * len(w) / w.sum()


class HallucinationDetector(ClassifierMixin, BaseEstimator):
    """Probability that a claim is misaligned, from internal states.

    Two experts, each a logistic regression, score every claim: one reads the output distribution (p_emit,
    entropy, rank), one the image grounding (image PMI, knockout effect, image attention, internal confidence, the
    presence probe); with the residual stream a third reads it. The detector's probability is the mean of theirs.
    One regression over all features leans on p_emit, which the training models' errors mostly expose, and misses
    a confident error its own image tokens contradict (a planted prior); the mean of experts keeps both signals.

    Parameters
    ----------
    layer : int or "best"
        LLM layer whose residual stream is read (``features`` "all" or "resid"); ``"best"`` picks the layer with
        the best cross-validated AUROC on the training claims (folds by item).
    features : {"scalar", "all", "resid"}
        Scalar features (the default: they transfer between models), residual stream and scalar features, or the
        residual stream alone (:func:`feature_matrix`).
    C : float
        Inverse L2 strength of the logistic regression.
    cv : int
        Folds for ``layer="best"``.

    Attributes
    ----------
    layer_ : int or None
    layer_scores_ : DataFrame
        ``layer, auroc`` of the selection (``layer="best"``).
    experts_ : dict of str -> LogisticRegression
        One per feature group (:func:`feature_groups`).
    """

    def __init__(self, layer: int | str = "best", features: str = "scalar", C: float = 0.1, cv: int = 5) -> None:
        self.layer, self.features, self.C, self.cv = layer, features, C, cv

    def _clf(self) -> LogisticRegression:
        return LogisticRegression(C=self.C, class_weight="balanced", max_iter=5000)

    def fit(self, X: ClaimSet, y: Any = None) -> HallucinationDetector:
        """Fit on judged claims (``X.table.misaligned``; ``y`` is ignored, the labels travel with the claims)."""
        labels = _labels(X)
        if self.features == "scalar":
            self.layer_ = None
        elif self.layer == "best":
            self.layer_scores_ = self._select_layer(X, labels)
            self.layer_ = int(self.layer_scores_.sort_values("auroc").layer.iloc[-1])
        else:
            self.layer_ = int(self.layer)
        w = _model_weights(X)
        self.experts_ = {name: self._clf().fit(F, labels, sample_weight=w)
                         for name, F in feature_groups(X, self.layer_, self.features).items()}
        self.classes_ = np.array([0, 1])
        return self

    def _select_layer(self, X: ClaimSet, y: np.ndarray) -> pd.DataFrame:
        items = X.table.model.astype(str) + "/" + X.table.item_id.astype(str)
        codes = pd.factorize(items)[0]
        fold = np.random.default_rng(0).permutation(codes.max() + 1)[codes] % self.cv
        rows = []
        for layer in range(X.resid.shape[1]):
            F = feature_matrix(X, layer, self.features)
            score = np.zeros(len(y))
            for k in range(self.cv):
                te = fold == k
                if len(np.unique(y[~te])) < 2:
                    continue
                w = _model_weights(X.subset(~te))
                score[te] = self._clf().fit(F[~te], y[~te], sample_weight=w).decision_function(F[te])
            rows.append({"layer": layer, "auroc": float(roc_auc_score(y, score))})
        return pd.DataFrame(rows)

    def predict_proba(self, X: ClaimSet) -> np.ndarray:
        """[n_claims, 2]: probabilities of correct and misaligned (the mean of the experts')."""
        groups = feature_groups(X, self.layer_, self.features)
        p = np.mean([self.experts_[name].predict_proba(F)[:, 1] for name, F in groups.items()], axis=0)
        return np.stack([1 - p, p], axis=1)

    def decision_function(self, X: ClaimSet) -> np.ndarray:
        """The log-odds of :meth:`predict_proba`."""
        p = np.clip(self.predict_proba(X)[:, 1], 1e-12, 1 - 1e-12)
        return np.log(p / (1 - p))

    def predict(self, X: ClaimSet) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def to_dict(self) -> dict:
        """The fitted detector as plain JSON types (settings, chosen layer, each expert's coefficients)."""
        if not hasattr(self, "experts_"):
            raise InputError("the detector is not fitted; call fit(claims) before saving it")
        return {"format": DETECTOR_FORMAT, "params": self.get_params(), "layer_": self.layer_,
                "experts": {name: {"coef": clf.coef_.tolist(), "intercept": clf.intercept_.tolist(),
                                   "classes": clf.classes_.tolist()} for name, clf in self.experts_.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> HallucinationDetector:
        """Rebuild a detector written by :meth:`to_dict`; it predicts exactly as the one saved."""
        if not isinstance(d, dict) or d.get("format") != DETECTOR_FORMAT:
            raise InputError(f"not a saved HallucinationDetector (format {DETECTOR_FORMAT!r} expected); write one with "
                             "HallucinationDetector.save(PATH)")
        det = cls(**d["params"])
        det.layer_ = d["layer_"]
        det.experts_ = {}
        for name, e in d["experts"].items():
            clf = det._clf()
            clf.coef_, clf.intercept_ = np.asarray(e["coef"], dtype=float), np.asarray(e["intercept"], dtype=float)
            clf.classes_ = np.asarray(e["classes"])
            det.experts_[name] = clf
        det.classes_ = np.array([0, 1])
        return det

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted detector as JSON (atomically; no pickle) for :meth:`load` and ``--detector``."""
        from lvlm_probe._atomic import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> HallucinationDetector:
        """A detector written by :meth:`save`; a missing or foreign file gets one line naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"detector file {str(path)!r} does not exist; write one with "
                             "HallucinationDetector.save(PATH)") from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(f"detector file {str(path)!r} is not readable JSON ({err}); write it again with "
                             "HallucinationDetector.save(PATH)") from None
        try:
            return cls.from_dict(data)
        except InputError as err:
            raise InputError(f"{str(path)!r}: {err}") from None


def bootstrap_auroc(y: np.ndarray, score: np.ndarray, *, n_boot: int = 500, seed: int = 0) -> tuple[float, float, float]:
    """AUROC and its 95% percentile bootstrap interval (resampling claims)."""
    auc = float(roc_auc_score(y, score))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if len(np.unique(y[i])) == 2:
            boots.append(roc_auc_score(y[i], score[i]))
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (np.nan, np.nan)
    return auc, float(lo), float(hi)


def baseline_scores(claims: ClaimSet) -> dict[str, np.ndarray]:
    """Output-only (and internal-confidence) scores: higher = more likely misaligned; NaN → the median."""
    out = {}
    for name, (col, sign) in BASELINES.items():
        v = sign * claims.table[col].to_numpy(dtype=float)
        out[name] = np.where(np.isnan(v), np.nanmedian(v) if np.isfinite(v).any() else 0.0, v)
    return out


def detection_sweep(train: ClaimSet, test: ClaimSet, *, layers: Sequence[int] | None = None, C: float = 0.1,
                    n_boot: int = 500, seed: int = 0) -> pd.DataFrame:
    """Held-out AUROC of the detector, of the detector with the residual stream of each layer, and of the
    baselines, with 95% bootstrap intervals.

    Returns
    -------
    DataFrame
        ``method, layer, auroc, ci_low, ci_high, n, n_misaligned``: ``"detector"`` (scalar features), one
        ``"detector + residual"`` row per layer, one row per baseline of :data:`BASELINES`.
    """
    y = _labels(test)
    layers = list(range(train.resid.shape[1])) if layers is None else list(layers)
    rows = []

    def add(method: str, layer: Any, score: np.ndarray) -> None:
        auc, lo, hi = bootstrap_auroc(y, score, n_boot=n_boot, seed=seed)
        rows.append({"method": method, "layer": layer, "auroc": auc, "ci_low": lo, "ci_high": hi, "n": len(y),
                     "n_misaligned": int(y.sum())})

    for layer in layers:
        det = HallucinationDetector(layer=layer, features="all", C=C).fit(train)
        add("detector + residual", layer, det.decision_function(test))
    add("detector", None, HallucinationDetector(features="scalar", C=C).fit(train).decision_function(test))
    for name, score in baseline_scores(test).items():
        add(name, None, score)
    return pd.DataFrame(rows)
