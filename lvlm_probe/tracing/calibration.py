"""Calibrated confidence: the probability that the stage the cascade names is the right one.

The stage scores (``score_<stage>``) grade each rule's own evidence on scales that differ between rules, so they
are not probabilities. :class:`ConfidenceCalibrator` maps what the cascade saw for an error to the probability
that its named stage is right: a logistic regression on

- the chosen stage's score (as a logit, scores clipped to [0.01, 0.99]),
- the margin of that score over the best score of any other stage,
- how many rules held (``causes``; several causes that hold at once make the first one less certain).

The features do not name the stage, so the calibrator carries over to a cause it was not fitted on (it is
evaluated leaving one organism, hence one planted cause, out: :func:`leave_one_out_confidence`). The same rule on
the same evidence always gets the same confidence; an undetermined error gets none (NaN). The shipped
coefficients (``confidence.json`` beside this module) were fitted on the planted-cause benchmark's tuning seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lvlm_probe.schema import STAGES, UNDETERMINED, score_column

SHIPPED = Path(__file__).with_name("confidence.json")


def _row_features(chosen: np.ndarray, margin: np.ndarray, n_causes: np.ndarray) -> np.ndarray:
    p = np.clip(chosen, 0.01, 0.99)
    return np.stack([np.log(p / (1 - p)), margin, n_causes], axis=1)


def confidence_features(diagnoses: pd.DataFrame) -> np.ndarray:
    """[n, 3]: logit of the chosen stage's score, its margin over the best other stage, number of causes."""
    scores = diagnoses[[score_column(s) for s in STAGES]].to_numpy(dtype=float)
    col = {s: k for k, s in enumerate(STAGES)}
    idx = np.array([col.get(s, -1) for s in diagnoses.stage])
    rows = np.arange(len(diagnoses))
    chosen = np.where(idx >= 0, scores[rows, np.maximum(idx, 0)], np.nan)
    others = scores.copy()
    others[rows[idx >= 0], idx[idx >= 0]] = -np.inf
    margin = chosen - others.max(axis=1)
    n_causes = diagnoses.causes.fillna("").map(lambda c: len([x for x in str(c).split("+") if x])).to_numpy(float)
    return _row_features(chosen, margin, n_causes)


@dataclass
class ConfidenceCalibrator:
    """Logistic map from :func:`confidence_features` to P(named stage is right).

    Attributes
    ----------
    coef : list of float
        One weight per feature.
    intercept : float
    fitted_on : str
        Where the coefficients come from (benchmark, seed, n).
    """

    coef: tuple[float, ...] = (0.0, 0.0, 0.0)
    intercept: float = 0.0
    fitted_on: str = "unfitted"

    def fit(self, diagnoses: pd.DataFrame, correct: Any, *, C: float = 0.01) -> ConfidenceCalibrator:
        """Fit on diagnosed errors (not undetermined) and whether each named stage was right.

        ``C`` (inverse L2 strength) is small: on the zoo, held-out organisms are calibrated best by a map close to
        the base rate (see docs/cascade.md, *Confidence*)."""
        from sklearn.linear_model import LogisticRegression

        keep = (diagnoses.stage != UNDETERMINED).to_numpy()
        X, y = confidence_features(diagnoses[keep]), np.asarray(correct, dtype=int)[keep]
        if len(np.unique(y)) < 2:  # all right (or all wrong): the base rate, with a pseudo-count each way
            rate = (y.sum() + 1) / (len(y) + 2)
            self.coef, self.intercept = (0.0, 0.0, 0.0), float(np.log(rate / (1 - rate)))
            return self
        m = LogisticRegression(C=C, max_iter=2000).fit(X, y)
        self.coef, self.intercept = tuple(float(c) for c in m.coef_[0]), float(m.intercept_[0])
        return self

    def predict(self, diagnoses: pd.DataFrame) -> np.ndarray:
        """P(right) per row; NaN for undetermined errors."""
        if not len(diagnoses):
            return np.zeros(0)
        z = confidence_features(diagnoses) @ np.asarray(self.coef) + self.intercept
        p = 1.0 / (1.0 + np.exp(-z))
        return np.where((diagnoses.stage == UNDETERMINED).to_numpy(), np.nan, p)

    def probability(self, stage: str, scores: dict[str, float], n_causes: int) -> float:
        """P(right) of one diagnosis: its stage, the stage scores and how many rules held (NaN if undetermined)."""
        if stage == UNDETERMINED or stage not in scores:
            return float("nan")
        others = [v for s, v in scores.items() if s != stage]
        x = _row_features(np.array([scores[stage]]), np.array([scores[stage] - max(others, default=0.0)]),
                          np.array([float(n_causes)]))
        return float(1.0 / (1.0 + np.exp(-(x[0] @ np.asarray(self.coef) + self.intercept))))

    def to_json(self, path: str | Path) -> None:
        from lvlm_probe._atomic import atomic_write_text

        atomic_write_text(path, json.dumps({"coef": list(self.coef), "intercept": self.intercept,
                                            "fitted_on": self.fitted_on}, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ConfidenceCalibrator:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(tuple(float(c) for c in d["coef"]), float(d["intercept"]), str(d.get("fitted_on", "")))


_SHIPPED: list[ConfidenceCalibrator] = []


def shipped_calibrator() -> ConfidenceCalibrator:
    """The calibrator fitted on the zoo (``confidence.json``), read once."""
    if not _SHIPPED:
        _SHIPPED.append(ConfidenceCalibrator.from_json(SHIPPED))
    return _SHIPPED[0]


def leave_one_out_confidence(errors: pd.DataFrame, group: str = "organism", *, C: float = 0.01) -> np.ndarray:
    """Held-out confidence of every error: a calibrator fitted on the other groups' errors predicts each group."""
    correct = (errors.stage == errors.planted_stage).to_numpy()
    out = np.full(len(errors), np.nan)
    for g in errors[group].unique():
        m = (errors[group] == g).to_numpy()
        cal = ConfidenceCalibrator().fit(errors[~m], correct[~m], C=C)
        out[m] = cal.predict(errors[m])
    return out


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Reliability table (equal-width bins) and the expected calibration error.

    Returns
    -------
    table : DataFrame
        ``bin_low, bin_high, n, mean_confidence, accuracy`` per non-empty bin.
    ece : float
        ``sum_b n_b / n * |accuracy_b - mean_confidence_b|`` over bins (errors without a confidence left out).
    """
    conf = np.asarray(confidence, dtype=float)
    ok = ~np.isnan(conf)
    conf, corr = conf[ok], np.asarray(correct, dtype=float)[ok]
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append({"bin_low": edges[b], "bin_high": edges[b + 1], "n": int(m.sum()),
                         "mean_confidence": float(conf[m].mean()), "accuracy": float(corr[m].mean())})
    table = pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_confidence", "accuracy"])
    ece = float((table.n * (table.accuracy - table.mean_confidence).abs()).sum() / max(1, len(conf)))
    return table, ece
