"""Calibrated confidence: the probability that the stage the cascade names is the right one.

The stage scores (``score_<stage>``) grade each rule's own evidence on scales that differ between rules, so they
are not probabilities. :class:`ConfidenceCalibrator` maps what the cascade saw for an error to the probability
that its named stage is right: a logistic regression on

- the chosen stage's score (as a logit, scores clipped to [0.01, 0.99]),
- the margin of that score over the best score of any other stage,
- how many rules held (``causes``; several causes that hold at once make the first one less certain);
- when the diagnosis was confirmed by intervention (:mod:`lvlm_probe.tracing.confirm`, ``diagnose(...,
  confirm=True)``): whether the confirming intervention removed the error (``confirmed`` True) or did not
  (False); an error whose stage has no confirming intervention is neither.

The features do not name the stage, so the calibrator carries over to a cause it was not fitted on (it is
evaluated leaving one organism, hence one planted cause, out: :func:`leave_one_out_confidence`). The same rule on
the same evidence always gets the same confidence; an undetermined error gets none (NaN). The shipped
coefficients (``confidence.json`` beside this module: one map without confirmation, one with it) were fitted on
the planted-cause benchmark's tuning seed.
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


def _row_features(chosen: np.ndarray, margin: np.ndarray, n_causes: np.ndarray,
                  confirmed: np.ndarray | None = None) -> np.ndarray:
    p = np.clip(chosen, 0.01, 0.99)
    cols = [np.log(p / (1 - p)), margin, n_causes]
    if confirmed is not None:  # True / False / None (not tested) -> two indicators
        cols += [np.array([c is True for c in confirmed], float), np.array([c is False for c in confirmed], float)]
    return np.stack(cols, axis=1)


def _confirmed_values(diagnoses: pd.DataFrame) -> np.ndarray:
    """``confirmed`` as True / False / None per row (absent column, NaN and None: not tested)."""
    if "confirmed" not in diagnoses:
        return np.array([None] * len(diagnoses), dtype=object)
    out = []
    for v in diagnoses.confirmed:
        if isinstance(v, str):
            v = {"true": True, "false": False}.get(v.strip().lower())
        out.append(bool(v) if isinstance(v, (bool, np.bool_)) else None)
    return np.array(out, dtype=object)


def confidence_features(diagnoses: pd.DataFrame, confirmation: bool = False) -> np.ndarray:
    """[n, 3]: logit of the chosen stage's score, its margin over the best other stage, number of causes;
    [n, 5] with ``confirmation``: also ``confirmed`` is True, ``confirmed`` is False (untested rows: 0, 0)."""
    scores = diagnoses[[score_column(s) for s in STAGES]].to_numpy(dtype=float)
    col = {s: k for k, s in enumerate(STAGES)}
    idx = np.array([col.get(s, -1) for s in diagnoses.stage])
    rows = np.arange(len(diagnoses))
    chosen = np.where(idx >= 0, scores[rows, np.maximum(idx, 0)], np.nan)
    others = scores.copy()
    others[rows[idx >= 0], idx[idx >= 0]] = -np.inf
    margin = chosen - others.max(axis=1)
    n_causes = diagnoses.causes.fillna("").map(lambda c: len([x for x in str(c).split("+") if x])).to_numpy(float)
    return _row_features(chosen, margin, n_causes, _confirmed_values(diagnoses) if confirmation else None)


@dataclass
class ConfidenceCalibrator:
    """Logistic map from :func:`confidence_features` to P(named stage is right).

    Attributes
    ----------
    coef : tuple of float
        One weight per feature: 3, or 5 for a map that reads the interventional confirmation
        (:attr:`confirmation`).
    intercept : float
    fitted_on : str
        Where the coefficients come from (benchmark, seed, n).
    """

    coef: tuple[float, ...] = (0.0, 0.0, 0.0)
    intercept: float = 0.0
    fitted_on: str = "unfitted"

    @property
    def confirmation(self) -> bool:
        """Whether this map reads ``confirmed`` (5 features) or not (3)."""
        return len(self.coef) == 5

    def fit(self, diagnoses: pd.DataFrame, correct: Any, *, C: float = 0.01,
            confirmation: bool = False) -> ConfidenceCalibrator:
        """Fit on diagnosed errors (not undetermined) and whether each named stage was right.

        ``C`` (inverse L2 strength) is small: on the zoo, held-out organisms are calibrated best by a map close to
        the base rate (see docs/cascade.md, *Confidence*). ``confirmation``: also read ``confirmed``."""
        from sklearn.linear_model import LogisticRegression

        keep = (diagnoses.stage != UNDETERMINED).to_numpy()
        X, y = confidence_features(diagnoses[keep], confirmation), np.asarray(correct, dtype=int)[keep]
        if len(np.unique(y)) < 2:  # all right (or all wrong): the base rate, with a pseudo-count each way
            rate = (y.sum() + 1) / (len(y) + 2)
            self.coef, self.intercept = (0.0,) * X.shape[1], float(np.log(rate / (1 - rate)))
            return self
        m = LogisticRegression(C=C, max_iter=2000).fit(X, y)
        self.coef, self.intercept = tuple(float(c) for c in m.coef_[0]), float(m.intercept_[0])
        return self

    def predict(self, diagnoses: pd.DataFrame) -> np.ndarray:
        """P(right) per row; NaN for undetermined errors."""
        if not len(diagnoses):
            return np.zeros(0)
        z = confidence_features(diagnoses, self.confirmation) @ np.asarray(self.coef) + self.intercept
        p = 1.0 / (1.0 + np.exp(-z))
        return np.where((diagnoses.stage == UNDETERMINED).to_numpy(), np.nan, p)

    def probability(self, stage: str, scores: dict[str, float], n_causes: int,
                    confirmed: bool | None = None) -> float:
        """P(right) of one diagnosis: its stage, the stage scores, how many rules held and (a map with
        :attr:`confirmation` only) whether the confirming intervention removed the error (NaN if undetermined)."""
        if stage == UNDETERMINED or stage not in scores:
            return float("nan")
        others = [v for s, v in scores.items() if s != stage]
        x = _row_features(np.array([scores[stage]]), np.array([scores[stage] - max(others, default=0.0)]),
                          np.array([float(n_causes)]),
                          np.array([confirmed], dtype=object) if self.confirmation else None)
        return float(1.0 / (1.0 + np.exp(-(x[0] @ np.asarray(self.coef) + self.intercept))))

    def to_dict(self) -> dict:
        return {"coef": list(self.coef), "intercept": self.intercept, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, d: dict) -> ConfidenceCalibrator:
        return cls(tuple(float(c) for c in d["coef"]), float(d["intercept"]), str(d.get("fitted_on", "")))

    def to_json(self, path: str | Path) -> None:
        """Write this map into ``path`` under its key (``plain`` or ``confirmation``), keeping the other key's
        map when the file already holds one."""
        from lvlm_probe._atomic import atomic_write_text

        path = Path(path)
        try:
            both = _read_maps(path) if path.exists() else {}
        except (ValueError, KeyError, TypeError):
            both = {}
        both[_key(self.confirmation)] = self.to_dict()
        atomic_write_text(path, json.dumps(both, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path, confirmation: bool = False) -> ConfidenceCalibrator:
        """The map of ``path`` without (default) or with the interventional confirmation."""
        maps = _read_maps(Path(path))
        if _key(confirmation) not in maps:
            raise KeyError(f"{path} holds no {_key(confirmation)!r} calibrator; fit one with benchmarks/"
                           f"planted_causes.py --fit-calibrator {path}{' --confirm' if confirmation else ''}")
        return cls.from_dict(maps[_key(confirmation)])


def _key(confirmation: bool) -> str:
    return "confirmation" if confirmation else "plain"


def _read_maps(path: Path) -> dict:
    d = json.loads(path.read_text(encoding="utf-8"))
    return {"plain": d} if "coef" in d else d  # a single map: the plain one


_SHIPPED: dict[bool, ConfidenceCalibrator] = {}


def shipped_calibrator(confirmation: bool = False) -> ConfidenceCalibrator:
    """The calibrator fitted on the zoo (``confidence.json``), read once; ``confirmation``: the map that also reads
    ``confirmed`` (used after ``diagnose(..., confirm=True)``)."""
    if confirmation not in _SHIPPED:
        _SHIPPED[confirmation] = ConfidenceCalibrator.from_json(SHIPPED, confirmation)
    return _SHIPPED[confirmation]


def leave_one_out_confidence(errors: pd.DataFrame, group: str = "organism", *, C: float = 0.01,
                             confirmation: bool = False) -> np.ndarray:
    """Held-out confidence of every error: a calibrator fitted on the other groups' errors predicts each group
    (``confirmation``: the map also reads ``confirmed``). With a single group nothing is held out of it, so every
    confidence is NaN."""
    correct = (errors.stage == errors.planted_stage).to_numpy()
    out = np.full(len(errors), np.nan)
    for g in errors[group].unique():
        m = (errors[group] == g).to_numpy()
        if m.all():
            break
        cal = ConfidenceCalibrator().fit(errors[~m], correct[~m], C=C, confirmation=confirmation)
        out[m] = cal.predict(errors[m])
    return out


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Reliability table (equal-width bins) and the expected calibration error.

    Returns
    -------
    table : DataFrame
        ``bin_low, bin_high, n, mean_confidence, accuracy`` per non-empty bin.
    ece : float
        ``sum_b n_b / n * |accuracy_b - mean_confidence_b|`` over bins (errors without a confidence left out; NaN
        when none has one).
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
    ece = float((table.n * (table.accuracy - table.mean_confidence).abs()).sum() / len(conf)) if len(conf) else np.nan
    return table, ece
