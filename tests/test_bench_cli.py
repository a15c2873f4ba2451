"""``lvlm-probe eval``: JSON contract of each sub-command and error reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from lvlm_probe.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared"
S = SHARED / "bench_samples"


def _need() -> None:
    if not S.is_dir():
        pytest.skip("shared bench samples not present")


def _run(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_pope_llava_contract(capsys) -> None:
    _need()
    out = _run(capsys, "eval", "pope", "--questions", str(S / "pope/llava15/llava_pope_test.jsonl"),
               "--answers", str(S / "pope/llava15/answers/llava-v1.5-13b.jsonl"),
               "--labels", str(S / "pope/coco_llava15_pinned_e3e39262"), "--json")
    assert set(out["splits"]) == {"adversarial", "random", "popular"}
    for m in out["splits"].values():
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio", "n"} <= set(m)
        assert all(0 <= m[k] <= 1 for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"))
    assert out["splits"]["random"]["f1"] == pytest.approx(54 / 62, abs=1e-15)
    assert out["splits"]["adversarial"]["accuracy"] == pytest.approx(52 / 66, abs=1e-15)
    assert out["splits"]["popular"]["yes_ratio"] == pytest.approx(28 / 66, abs=1e-15)
    assert out["mean_f1"] == pytest.approx(float((Fraction(26, 33) + Fraction(54, 62) + Fraction(52, 61)) / 3), abs=1e-15)


def test_eval_pope_single_file_and_parser(capsys, tmp_path: Path) -> None:
    q = tmp_path / "coco_pope_random.json"
    q.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}\n'
                 '{"question_id": 2, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "no"}\n')
    a = tmp_path / "a.jsonl"
    a.write_text('{"question_id": 1, "text": "Yes, there is."}\n{"question_id": 2, "text": "There isn\'t."}\n')
    pope = _run(capsys, "eval", "pope", "--questions", str(q), "--answers", str(a), "--json")
    opera = _run(capsys, "eval", "pope", "--questions", str(q), "--answers", str(a), "--parser", "opera", "--json")
    assert pope["splits"]["random"]["accuracy"] == 0.5 and opera["splits"]["random"]["accuracy"] == 1.0
    # zero denominators are NaN -> JSON null, with a warning instead of a crash
    a.write_text('{"question_id": 1, "text": "No"}\n{"question_id": 2, "text": "No"}\n')
    with pytest.warns(RuntimeWarning):
        out = _run(capsys, "eval", "pope", "--questions", str(q), "--answers", str(a), "--json")
    assert out["splits"]["random"]["precision"] is None and out["mean_f1"] is None


def test_eval_amber_contract(capsys, tmp_path: Path) -> None:
    _need()
    ann = json.loads((S / "amber/data/annotations.json").read_text())
    resp = [{"id": r["id"], "response": "No" if r["truth"] == "no" else "Yes"} for r in ann if r["type"] != "generative"]
    resp[0]["response"] = "Yes" if resp[0]["response"] == "No" else "No"  # one wrong answer
    p = tmp_path / "resp.json"
    p.write_text(json.dumps(resp))
    out = _run(capsys, "eval", "amber", "--annotations", str(S / "amber/data/annotations.json"), "--responses", str(p),
               "--type", "d", "--json")
    assert list(out) == ["overall", "existence", "attribute", "state", "number", "action", "relation"]
    assert set(out["overall"]) == {"accuracy", "precision", "recall", "f1"}
    # first discriminative item is id 1005 (state, truth per file): 107 of 108 right -> 107/108.001 = 99.07 -> 99.1
    assert out["overall"]["accuracy"] == 99.1
    out = _run(capsys, "eval", "amber", "--annotations", str(S / "amber/data/annotations.json"), "--responses", str(p),
               "--type", "de", "--json")
    assert out == {"existence": {"accuracy": 100.0, "precision": 100.0, "recall": 100.0, "f1": 100.0}}


def test_eval_errors_name_file_and_line(capsys, tmp_path: Path) -> None:
    q = tmp_path / "coco_pope_random.json"
    q.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}\n{"question_id": 2,\n')
    a = tmp_path / "a.jsonl"
    a.write_text('{"question_id": 1, "text": "Yes"}\n')
    assert main(["eval", "pope", "--questions", str(q), "--answers", str(a), "--json"]) == 2
    err = capsys.readouterr().err
    assert "coco_pope_random.json: line 2: invalid JSON" in err
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"id": 1, "type": "discriminative-hallucination"}], indent=4))
    assert main(["eval", "amber", "--annotations", str(ann), "--responses", str(a), "--json"]) == 2
    assert "ann.json: line 2: missing key 'truth'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:HallusionBench")
def test_eval_rbench_and_hallusionbench(capsys, tmp_path: Path) -> None:
    q = tmp_path / "q.json"
    q.write_text(json.dumps([{"question_id": 1, "image": "a", "text": "t", "label": "yes"},
                             {"question_id": 2, "image": "a", "text": "t", "label": "no"}]))
    a = tmp_path / "a.jsonl"
    a.write_text('{"question_id": 1, "text": "Yes"}\n{"question_id": 2, "text": "Yes"}\n')
    out = _run(capsys, "eval", "rbench", "--questions", str(q), "--answers", str(a), "--json")
    assert out["subsets"]["all"]["accuracy"] == 0.5 and out["average"]["accuracy"] == 50.0
    h = tmp_path / "h.json"
    h.write_text(json.dumps([{"category": "VD", "subcategory": "x", "set_id": "0", "figure_id": "0", "question_id": "0",
                              "visual_input": "1", "gt_answer": "1", "model_prediction": "Yes, it is."}]))
    out = _run(capsys, "eval", "hallusionbench", "--results", str(h), "--json")
    assert out["Overall"]["aAcc"] == 100.0 and out["VS"]["aAcc"] is None


def test_console_entry_point(tmp_path: Path) -> None:
    _need()
    cmd = [sys.executable, "-m", "lvlm_probe.cli", "eval", "pope", "--questions",
           str(S / "pope/coco_llava15_pinned_e3e39262/coco_pope_adversarial.json"),
           "--answers", str(S / "pope/llava15/answers/llava-v1.5-13b.jsonl"), "--json"]
    # the answers file holds all three splits: ids 10000001.. match no adversarial question -> clear error, rc 2
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "key 'question_id' = 10000001 matches no question" in r.stderr
