"""``diagnose`` on items without ground truth: they go through a fitted detector (saved as JSON, no pickle), the
flagged claims are traced with truth-free evidence, and the result is a resumable step of the run, in the report
and on the command line."""

import json

import numpy as np
import pytest

import lvlm_probe as lp
from lvlm_probe.detection import ClaimSet, HallucinationDetector, collect_claims
from lvlm_probe.organisms import default_items
from lvlm_probe.tracing import DiagnoseConfig, diagnose
from lvlm_probe.tracing.diagnose import DiagnosisReport

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = DiagnoseConfig(n_probe_items=40, curve_sites=None)


@pytest.fixture(scope="module")
def cooc():
    return lp.load("organism:cooccurrence", device="cpu")


@pytest.fixture(scope="module")
def detector(cooc, tmp_path_factory):
    """A detector fitted on judged claims of two organisms, written and read back as JSON."""
    other = lp.load("organism:attribute_prior", device="cpu")
    train = ClaimSet.concat([
        collect_claims(cooc, default_items("organism:cooccurrence", 16, 3), progress=False).labelled(),
        collect_claims(other, default_items("organism:attribute_prior", 16, 3), progress=False).labelled()])
    det = HallucinationDetector().fit(train)
    path = det.save(tmp_path_factory.mktemp("det") / "detector.json")
    back = HallucinationDetector.load(path)
    np.testing.assert_array_equal(back.predict_proba(train), det.predict_proba(train))  # exact round trip
    return path


def _mixed(n=8):
    """Half the items keep their scene graph; the other half lose it (their trigger scenes come first)."""
    items = default_items("organism:cooccurrence", n, 4)
    strip = [lp.Item(id=it.id, image=it.image, prompt=it.prompt, task=it.task, meta=it.meta) for it in items[:n // 2]]
    return strip + items[n // 2:]


def test_items_without_ground_truth_go_through_the_detector(cooc, detector, tmp_path):
    items = _mixed()
    rep = diagnose(cooc, items, CFG, out=tmp_path / "run", detector=HallucinationDetector.load(detector),
                   progress=False)
    judged = {it.id for it in items if it.scene is not None}
    assert set(rep.generations.item_id) == judged  # the judge saw only items with a scene
    d = rep.detected
    assert set(d.item_id) == {it.id for it in items if it.scene is None} and d.misaligned.isna().all()
    assert d.p_misaligned.between(0, 1).all() and (d.flagged == (d.p_misaligned >= CFG.detect_threshold)).all()
    fl = rep.flagged()
    assert len(fl) and fl.stage.notna().all() and d[~d.flagged].stage.isna().all()
    assert (fl.needs_ground_truth == "encoder, projector").all()
    # the unjudged half are co-occurrence trigger scenes: the invented squares are named as the prior's doing
    squares = fl[(fl.kind == "object") & (fl.subject == "square")]
    assert len(squares) and (squares.stage == "cooccurrence").mean() >= 0.5
    m = rep.manifest
    assert (m["n_judged"], m["n_unjudged"], m["n_flagged"]) == (len(judged), len(items) - len(judged), len(fl))
    assert "without ground truth" in repr(rep) and "without ground truth" in rep._repr_html_()
    # resumable: the rerun reads every step back; the written run reads back with its detected claims
    again = diagnose(cooc, items, CFG, out=tmp_path / "run", detector=HallucinationDetector.load(detector),
                     progress=False)
    assert set(again.manifest["timings"].values()) == {"resumed"}
    read = DiagnosisReport.read(tmp_path / "run")
    assert len(read.detected) == len(d) and read.flagged().claim_id.tolist() == fl.claim_id.tolist()
    html = lp.render_diagnosis(rep, tmp_path / "run").read_text()
    assert "Claims without ground truth" in html and "Flagged claims per kind, level and stage" in html


def test_only_items_without_ground_truth(cooc, detector, tmp_path):
    items = [it for it in _mixed() if it.scene is None]
    rep = diagnose(cooc, items, CFG, out=tmp_path / "run", detector=HallucinationDetector.load(detector),
                   progress=False)
    assert len(rep.generations) == 0 and len(rep.diagnoses) == 0 and len(rep.detected) > 0
    assert len(DiagnosisReport.read(tmp_path / "run").detected) == len(rep.detected)
    lp.render_diagnosis(rep, tmp_path / "run")


def test_without_a_detector_scene_less_items_are_refused_with_the_fix(cooc):
    with pytest.raises(lp.InputError, match=r"no scene graph.*--detector PATH"):
        diagnose(cooc, _mixed(), CFG, progress=False)
    with pytest.raises(lp.InputError, match="detect_threshold must be a probability"):
        DiagnoseConfig(detect_threshold=1.5)


def test_detector_files_bad_input(tmp_path):
    with pytest.raises(lp.InputError, match="does not exist"):
        HallucinationDetector.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(lp.InputError, match="not readable JSON"):
        HallucinationDetector.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(lp.InputError, match="not a saved HallucinationDetector"):
        HallucinationDetector.load(tmp_path / "other.json")
    with pytest.raises(lp.InputError, match="not fitted"):
        HallucinationDetector().save(tmp_path / "x.json")


def test_cli_diagnose_with_a_detector(detector, tmp_path, capsys):
    from lvlm_probe.cli import main

    lines = []
    (tmp_path / "img").mkdir()
    for k, it in enumerate(_mixed(6)):
        p = tmp_path / "img" / f"{k}.png"
        it.image.save(p)
        rec = {"id": it.id, "image": str(p), "prompt": it.prompt, "task": it.task}
        if it.scene is not None:
            rec["scene"] = it.scene.to_dict()
        lines.append(json.dumps(rec))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    args = ["diagnose", "--model", "organism:cooccurrence", "--items", str(tmp_path / "items.jsonl"), "--out",
            str(tmp_path / "out"), "--probe-items", "40", "--curve-sites", "none"]
    assert main(args) == 2
    assert "--detector PATH" in capsys.readouterr().err
    assert main([*args, "--detector", str(detector), "--detect-threshold", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "without ground truth: 3 items" in out and "flagged by the detector" in out
    assert (tmp_path / "out" / "detected.csv").is_file()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["detect_threshold"] == 0.4
