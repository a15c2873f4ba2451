"""Calibrated confidence: the features, the calibrator, leave-one-organism-out, reliability and ECE."""

import numpy as np
import pandas as pd
import pytest

from lvlm_probe.schema import STAGES, UNDETERMINED, score_column
from lvlm_probe.tracing.calibration import (ConfidenceCalibrator, confidence_features, leave_one_out_confidence,
                                            reliability, shipped_calibrator)


def frame(n=400, seed=0):
    """Synthetic diagnoses: the chosen stage's score drives how often it is right."""
    rng = np.random.default_rng(seed)
    stages = rng.choice(["cooccurrence", "encoder", "llm fusion", UNDETERMINED], n, p=[0.4, 0.3, 0.2, 0.1])
    rows = []
    for k, st in enumerate(stages):
        sc = {score_column(s): rng.uniform(0, 0.3) for s in STAGES}
        chosen = rng.uniform(0.05, 0.99)
        if st != UNDETERMINED:
            sc[score_column(st)] = chosen
        rows.append({"stage": st, "causes": "" if st == UNDETERMINED else st, **sc,
                     "organism": f"org{k % 4}", "right": rng.random() < chosen})
    d = pd.DataFrame(rows)
    d["planted_stage"] = np.where(d.right, d.stage, "other")
    return d


def test_features_read_the_chosen_stage():
    d = frame(20)
    X = confidence_features(d)
    k = d.index[d.stage == "encoder"][0]
    s = d.loc[k, score_column("encoder")]
    assert np.isclose(X[k, 0], np.log(np.clip(s, .01, .99) / (1 - np.clip(s, .01, .99))))
    others = d.loc[k, [score_column(x) for x in STAGES if x != "encoder"]].max()
    assert np.isclose(X[k, 1], s - others) and X[k, 2] == 1


def test_calibrator_learns_a_probability_and_is_consistent():
    d = frame()
    cal = ConfidenceCalibrator().fit(d, d.right, C=1.0)
    p = cal.predict(d)
    assert np.isnan(p[(d.stage == UNDETERMINED).to_numpy()]).all()
    ok = ~np.isnan(p)
    assert cal.coef[0] > 0  # a higher score, a likelier right stage
    _, ece = reliability(p, d.right.to_numpy())
    assert ece < 0.08
    row = d[d.stage == "encoder"].iloc[0]
    scores = {s: row[score_column(s)] for s in STAGES}
    assert np.isclose(cal.probability("encoder", scores, 1), p[d.index.get_loc(row.name)])
    assert np.isnan(cal.probability(UNDETERMINED, scores, 0))
    assert (p[ok] > 0).all() and (p[ok] < 1).all()


def test_json_round_trip(tmp_path):
    cal = ConfidenceCalibrator((0.5, -1.0, 0.2), 0.3, "test")
    cal.to_json(tmp_path / "c.json")
    assert ConfidenceCalibrator.from_json(tmp_path / "c.json") == cal


def test_leave_one_out_and_reliability():
    d = frame(800, seed=1)
    p = leave_one_out_confidence(d, C=1.0)
    assert np.isnan(p[(d.stage == UNDETERMINED).to_numpy()]).all()
    table, ece = reliability(p, (d.stage == d.planted_stage).to_numpy())
    assert table.n.sum() == int((~np.isnan(p)).sum()) and ece < 0.08
    # a constant, wrong confidence is badly calibrated
    _, bad = reliability(np.full(len(d), 0.99), (d.stage == d.planted_stage).to_numpy())
    assert bad > 0.3


def test_one_organism_has_no_held_out_confidence():
    """Leaving the only organism out leaves nothing to fit on: every confidence is NaN and so is the ECE (not a
    perfect 0.0, which is what an empty sum used to report)."""
    d = frame(200, seed=2)
    d["organism"] = "only"
    p = leave_one_out_confidence(d)
    assert np.isnan(p).all()
    table, ece = reliability(p, (d.stage == d.planted_stage).to_numpy())
    assert table.empty and np.isnan(ece)


def test_reliability_of_perfect_and_degenerate_inputs():
    conf = np.repeat([0.15, 0.55, 0.95], 100)
    right = np.concatenate([np.arange(100) < 15, np.arange(100) < 55, np.arange(100) < 95])
    table, ece = reliability(conf, right)
    assert ece == pytest.approx(0.0, abs=1e-9) and list(table.n) == [100, 100, 100]
    cal = ConfidenceCalibrator().fit(frame(50), np.ones(50, bool))  # all right: the smoothed base rate
    assert cal.coef == (0.0, 0.0, 0.0) and 0.9 < 1 / (1 + np.exp(-cal.intercept)) < 1


def test_shipped_calibrator_was_fitted_and_the_cascade_uses_it():
    from lvlm_probe.tracing.cascade import diagnose_error

    cal = shipped_calibrator()
    assert "planted_causes.py" in cal.fitted_on and any(c != 0 for c in cal.coef)
    ev = {"kind": "object", "polarity": "hallucinated", "enc_p_true": 0.1, "p_emit": 0.9}
    d = diagnose_error(ev)
    assert d.stage == "encoder" and 0 < d.confidence < 1
    assert d.confidence == cal.probability(d.stage, d.scores, len(d.causes))
    assert np.isnan(diagnose_error({"kind": "object", "polarity": "hallucinated"}).confidence)


def test_plot_reliability():
    from lvlm_probe.plotting import plot_reliability

    table, ece = reliability(np.repeat([0.15, 0.55, 0.95], 10), np.tile([True, False], 15))
    fig = plot_reliability(table, ece)
    ax = fig.axes[0]
    assert len(ax.containers[0]) == 3 and "ECE" in ax.get_title()


def test_confirmation_features_and_map(tmp_path):
    """With the interventional confirmation the map reads two more features, and learns from them: here errors
    whose confirming intervention removed them are right more often."""
    d = frame(600, seed=2)
    rng = np.random.default_rng(0)
    tested = rng.random(len(d)) < 0.7
    d["confirmed"] = [None if not t else bool(r if rng.random() < 0.8 else not r) for t, r in zip(tested, d.right)]
    X = confidence_features(d, confirmation=True)
    assert X.shape == (len(d), 5) and np.array_equal(X[:, :3], confidence_features(d), equal_nan=True)
    assert np.array_equal(X[:, 3], d.confirmed.map(lambda v: v is True).to_numpy(float))
    assert np.array_equal(X[:, 4], d.confirmed.map(lambda v: v is False).to_numpy(float))
    as_read = d.assign(confirmed=d.confirmed.map({True: "True", False: "False", None: np.nan}))  # a CSV read back
    assert np.array_equal(confidence_features(as_read, confirmation=True), X, equal_nan=True)
    cal = ConfidenceCalibrator().fit(d, d.right, C=1.0, confirmation=True)
    assert cal.confirmation and len(cal.coef) == 5 and cal.coef[3] > 0 > cal.coef[4]
    row = d[(d.stage != UNDETERMINED) & d.confirmed.eq(False)].iloc[0]
    scores = {s: row[score_column(s)] for s in STAGES}
    p = cal.predict(d)
    assert np.isclose(cal.probability(row.stage, scores, 1, confirmed=False), p[d.index.get_loc(row.name)])
    assert cal.probability(row.stage, scores, 1, confirmed=True) > cal.probability(row.stage, scores, 1, False)
    # one file holds both maps; writing one keeps the other; an old single-map file reads as the plain map
    plain = ConfidenceCalibrator((0.5, -1.0, 0.2), 0.3, "plain")
    plain.to_json(tmp_path / "c.json")
    cal.to_json(tmp_path / "c.json")
    assert ConfidenceCalibrator.from_json(tmp_path / "c.json") == plain
    assert ConfidenceCalibrator.from_json(tmp_path / "c.json", confirmation=True) == cal
    (tmp_path / "old.json").write_text('{"coef": [1, 2, 3], "intercept": 0.5}')
    assert ConfidenceCalibrator.from_json(tmp_path / "old.json").coef == (1.0, 2.0, 3.0)
    with pytest.raises(KeyError, match="--confirm"):
        ConfidenceCalibrator.from_json(tmp_path / "old.json", confirmation=True)
    assert not shipped_calibrator().confirmation and shipped_calibrator(confirmation=True).confirmation
