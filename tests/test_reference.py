"""Self-calibrated evidence: the reference set of correct claims, quantiles against it, and the rules that read them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lvlm_probe as lp
from lvlm_probe.tracing import DiagnoseConfig
from lvlm_probe.tracing.cascade import Thresholds, diagnose_error
from lvlm_probe.tracing.reference import CALIBRATED_COLUMNS, MIN_REFERENCE, calibrate, midrank_quantile


def test_midrank_quantile_counts_ties_half_and_ignores_nan():
    ref = np.array([1.0, 2.0, 2.0, 3.0, np.nan])
    q = midrank_quantile(np.array([0.5, 2.0, 3.0, 9.0, np.nan]), ref)
    assert q[:4].tolist() == [0.0, 0.5, 0.875, 1.0] and np.isnan(q[4])
    assert np.isnan(midrank_quantile(np.array([1.0]), np.array([np.nan]))).all()


def _frame(rng, n, kind="attribute", attribute="color", scale=1.0):
    return pd.DataFrame({"item_id": [f"i{k % 7}" for k in range(n)], "kind": kind, "attribute": attribute,
                         "pmi_img": scale * rng.normal(3, 2, n), "img_use": scale * rng.gamma(2, 0.2, n),
                         "p_emit": rng.uniform(0.2, 1, n), "enc_p_true": rng.uniform(0.5, 1, n),
                         "proj_p_true": rng.uniform(0.5, 1, n)})


def test_quantiles_do_not_depend_on_the_models_scale():
    """Any increasing map of a feature (here the PMI and image use of a model 5x as confident) leaves the calibrated
    values unchanged, while the absolute ones move."""
    rng = np.random.default_rng(0)
    ref, err = _frame(rng, 60), _frame(rng, 12)
    a = calibrate(err, ref)
    big_ref, big_err = ref.assign(pmi_img=5 * ref.pmi_img, img_use=5 * ref.img_use), \
        err.assign(pmi_img=5 * err.pmi_img, img_use=5 * err.img_use)
    b = calibrate(big_err, big_ref)
    for c in ("q_pmi", "q_use", "q_p_emit", "q_enc", "q_proj"):
        np.testing.assert_array_equal(a[c], b[c])
        assert a[c].between(0, 1).all()
    assert b.ref_pmi.iloc[0] == pytest.approx(5 * a.ref_pmi.iloc[0])
    assert set(CALIBRATED_COLUMNS) <= set(a.columns) and (a.n_reference == 60).all()


def test_reference_is_the_narrowest_with_enough_claims():
    rng = np.random.default_rng(1)
    colour = _frame(rng, MIN_REFERENCE, attribute="color")
    size = _frame(rng, MIN_REFERENCE - 1, attribute="size", scale=100.0)
    objects = _frame(rng, 5, kind="object", attribute=None)
    ref = pd.concat([colour, size, objects], ignore_index=True)
    err = pd.concat([_frame(rng, 2, attribute="color"), _frame(rng, 2, attribute="size"),
                     _frame(rng, 2, kind="object", attribute=None)], ignore_index=True)
    out = calibrate(err, ref)
    # colour has enough of its own; size falls back to every attribute claim; objects (5) to all claims
    assert out.n_reference.tolist() == [MIN_REFERENCE] * 2 + [2 * MIN_REFERENCE - 1] * 2 + [len(ref)] * 2
    own = midrank_quantile(err.pmi_img.abs().to_numpy()[:2], colour.pmi_img.abs().to_numpy())
    np.testing.assert_array_equal(out.q_pmi.to_numpy()[:2], own)
    empty = calibrate(err, ref.iloc[:0])
    assert (empty.n_reference == 0).all() and empty.q_pmi.isna().all()


def test_fusion_reads_the_quantile_when_a_reference_exists():
    """A token with |PMI| of 3 nats is 'image-free' for a model whose correct claims move by 20 nats (quantile
    0.05), and not for one whose correct claims move by 2; without a reference the absolute bound decides."""
    base = dict(kind="attribute", polarity="wrong", claimed="red", truth="blue", pmi_img=3.0, img_use=0.2,
                enc_p_true=0.95, proj_p_true=0.95, p_emit=0.9)
    th = Thresholds()
    cal = diagnose_error({**base, "q_pmi": 0.05, "q_use": 0.05, "ref_pmi": 20.0}, th)
    assert cal.stage == "llm fusion" and "quantile 0.05" in cal.rule, cal.rule
    assert diagnose_error({**base, "q_pmi": 0.6, "q_use": 0.5, "ref_pmi": 2.0}, th).stage != "llm fusion"
    assert diagnose_error(base, th).stage != "llm fusion"  # |3| > 1 nat
    assert diagnose_error({**base, "pmi_img": 0.5}, th).stage == "llm fusion"
    # a model that ignores the image on its correct claims too: the token test needs only its own small PMI
    neglect = diagnose_error({**base, "pmi_img": 0.05, "q_pmi": 0.5, "q_use": 0.5, "ref_pmi": 0.1}, th)
    assert neglect.stage == "llm fusion" and "correct claims by 0.10" in neglect.rule


def test_relation_encoder_verdict_reads_the_correct_relations():
    """The pair probe reads correct relations below 0.8 too: a relation error is the encoder's only when its probe
    verdict is also low among the correct relations (q_enc); without a reference, and for other kinds, the
    absolute bound decides."""
    th = Thresholds()
    rel = dict(kind="relation", polarity="wrong", claimed="above", truth="below", enc_p_true=0.6, proj_p_true=0.9,
               p_emit=0.99, pmi_img=3.0, img_use=2.0, q_pmi=0.5, q_use=0.5, ref_pmi=3.0)
    low = diagnose_error({**rel, "q_enc": 0.05}, th)
    assert low.stage == "encoder" and "quantile 0.05 of the correct relations'" in low.rule, low.rule
    assert diagnose_error({**rel, "q_enc": 0.3}, th).stage != "encoder"
    assert diagnose_error({**rel, "q_enc": 0.3}, Thresholds(probe_quantile=0.5)).stage == "encoder"
    assert diagnose_error({**rel, "enc_p_true": 0.9, "q_enc": 0.01}, th).stage != "encoder"  # above 0.8
    assert diagnose_error(rel, th).stage == "encoder"  # no reference: the absolute bound
    colour = {**rel, "kind": "attribute", "claimed": "red", "truth": "blue", "q_enc": 0.3}
    assert diagnose_error(colour, th).stage == "encoder"  # other kinds keep the probability


@pytest.fixture(scope="module")
def organism_report():
    from lvlm_probe.organisms.check import default_items

    items = default_items("organism:cooccurrence", n=8, seed=3)
    cfg = DiagnoseConfig(curve_sites=None, n_probe_items=40, batch_size=8)
    return lp.diagnose("organism:cooccurrence", items, cfg, progress=False)


def test_diagnose_measures_the_reference_set(organism_report, tmp_path):
    rep = organism_report
    ref = rep.reference
    assert len(ref) and set(ref.polarity) == {"correct"} and set(ref.kind) <= {"object", "attribute", "relation"}
    # a reference claim is never one of the errors: no error shares its item, kind and first token
    err_keys = set(zip(rep.errors.item_id, rep.errors.kind, rep.errors.first_token.astype(float)))
    assert not err_keys & set(zip(ref.item_id, ref.kind, ref.first_token.astype(float)))
    # same evidence as an error: token features and probe verdicts
    assert ref.p_emit.notna().all() and ref.pmi_img.notna().all() and ref.enc_p_true.notna().any()
    ev = rep.evidence
    # an omitted object has no token, so no PMI to place; every error with a token gets its quantile
    assert (ev.q_pmi.isna() == ev.pmi_img.isna()).all() and ev.q_pmi.dropna().between(0, 1).all()
    assert ev.pmi_img.notna().any() and (ev.n_reference > 0).all()
    assert ev.ref_pmi.iloc[0] == pytest.approx(float(np.median(ref.pmi_img.abs())))
    # the co-occurrence organism's invented square barely depends on the image, unlike its correct words
    assert ev[ev.claimed == "square"].q_pmi.max() <= 0.25
    rep.write(tmp_path / "r")
    back = lp.DiagnosisReport.read(tmp_path / "r")
    assert len(back.reference) == len(ref) and back.evidence.q_pmi.tolist() == pytest.approx(ev.q_pmi.tolist(), nan_ok=True)
