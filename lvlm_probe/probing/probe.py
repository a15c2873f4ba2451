"""`LinearProbe`: a scikit-learn estimator (standardise, then logistic regression or ridge)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from lvlm_probe.errors import InputError


def as_features(X: Any) -> np.ndarray:
    """Features as a 2-D float32 numpy array (torch tensors are moved to CPU; bfloat16 widened)."""
    try:
        import torch

        if isinstance(X, torch.Tensor):
            X = X.detach().cpu()
            X = (X.float() if X.dtype in (torch.bfloat16, torch.float16) else X).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"probe features must be 2-D [n_samples, n_features], got shape {X.shape}; "
                         "select one site and one selection (e.g. store.get('llm.resid_post.3', 'image_mean'))")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    elif X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise InputError(f"probe features hold NaN/inf (first in sample {bad}); an item without image tokens has a "
                         "NaN image_mean: drop such items from the labels")
    return X


def infer_task(y: Any) -> str:
    """``"regression"`` for real-valued targets (non-integers, or more than 20 distinct numbers), else classification."""
    arr = np.asarray(y)
    if arr.dtype.kind == "f" or (arr.dtype.kind in "iu" and len(np.unique(arr)) > 20):
        if arr.dtype.kind == "f" and np.all(arr == np.round(arr)) and len(np.unique(arr)) <= 20:
            return "classification"
        return "regression"
    return "classification"


class LinearProbe(BaseEstimator):
    """Linear probe: standardise the features, then fit a logistic regression (classes) or a ridge (numbers).

    Parameters
    ----------
    task : {"auto", "classification", "regression"}
        ``"auto"`` picks regression for real-valued targets (see :func:`infer_task`).
    C : float
        Inverse L2 strength of the logistic regression (on standardised features).
    alpha : float
        L2 strength of the ridge.
    standardize : bool
        Standardise features with the training mean and standard deviation.
    max_iter : int
        lbfgs iterations of the logistic regression.
    tol : float
        lbfgs tolerance.
    class_weight : dict, "balanced" or None
        Passed to the logistic regression.

    Attributes
    ----------
    task_ : str
    classes_ : ndarray [n_classes]
        Class labels (classification).
    scaler_ : StandardScaler or None
    model_ : LogisticRegression or Ridge
    n_features_in_ : int
    coef_ : ndarray [n_classes or 1, n_features]
        Weights in the *raw* feature space (standardisation folded in); binary problems have one
        row pointing towards ``classes_[1]``.
    intercept_ : ndarray [n_classes or 1]
        Intercepts in the raw feature space.

    Examples
    --------
    >>> probe = LinearProbe().fit(X_train, y_train)      # doctest: +SKIP
    >>> probe.score(X_test, y_test)                      # accuracy, or R^2 for regression  # doctest: +SKIP
    """

    def __init__(self, task: str = "auto", C: float = 1.0, alpha: float = 1.0, standardize: bool = True,
                 max_iter: int = 200, tol: float = 1e-4, class_weight: Any = None) -> None:
        self.task = task
        self.C = C
        self.alpha = alpha
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.class_weight = class_weight

    def fit(self, X: Any, y: Any) -> LinearProbe:
        """Fit on features X [n_samples, n_features] and targets y [n_samples]."""
        X = as_features(X)
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise InputError(f"probe targets must be 1-D with one entry per sample: X has {len(X)} rows, y shape {y.shape}")
        if self.task not in ("auto", "classification", "regression"):
            raise InputError(f"LinearProbe(task={self.task!r}): use 'auto', 'classification' or 'regression'")
        self.task_ = infer_task(y) if self.task == "auto" else self.task
        self.n_features_in_ = X.shape[1]
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        Z = self.scaler_.transform(X) if self.scaler_ is not None else X
        if self.task_ == "classification":
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise InputError(f"a classification probe needs at least two classes; y has only {self.classes_.tolist()}")
            self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol,
                                             class_weight=self.class_weight).fit(Z, y)
        else:
            self.model_ = Ridge(alpha=self.alpha).fit(Z, y.astype(np.float64))
        w = np.atleast_2d(self.model_.coef_)
        b = np.atleast_1d(self.model_.intercept_)
        if self.scaler_ is not None:
            scale = self.scaler_.scale_
            w = w / scale
            b = b - w @ self.scaler_.mean_
        self.coef_, self.intercept_ = w, b
        return self

    def _z(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = as_features(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"probe was fitted on {self.n_features_in_} features, got {X.shape[1]}")
        return self.scaler_.transform(X) if self.scaler_ is not None else X

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class (or value) per sample, [n_samples]."""
        return self.model_.predict(self._z(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities [n_samples, n_classes] (columns follow ``classes_``)."""
        if getattr(self, "task_", None) != "classification":
            raise InputError("predict_proba is for classification probes; this probe does regression")
        return self.model_.predict_proba(self._z(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """Raw scores: logits [n_samples] (binary) or [n_samples, n_classes], or predicted values (regression)."""
        Z = self._z(X)
        return self.model_.decision_function(Z) if self.task_ == "classification" else self.model_.predict(Z)

    def score(self, X: Any, y: Any) -> float:
        """Accuracy (classification) or R^2 (regression)."""
        pred = self.predict(X)
        return float(accuracy_score(y, pred) if self.task_ == "classification" else r2_score(y, pred))
