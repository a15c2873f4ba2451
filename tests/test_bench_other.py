"""R-Bench and HallusionBench aggregation, checked by hand and by independent recounts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lvlm_probe.benchmarks.hallusionbench import evaluate_hallusionbench, hallusionbench_scores, load_hallusionbench
from lvlm_probe.benchmarks.rbench import evaluate_rbench
from lvlm_probe.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared"
HB = SHARED / "bench_samples" / "hallusionbench"


# ------------------------------------------------------------------------------------------------ R-Bench
def _rbench_files(tmp_path: Path) -> tuple:
    qs = [{"question_id": i, "image": f"{i}.jpg", "text": "Is the cat on the mat?", "label": lab}
          for i, lab in enumerate(["yes", "yes", "no", "No", "none", "yes"], start=1)]
    q = tmp_path / "image-level_filterd.json"
    q.write_text(json.dumps(qs))
    a = tmp_path / "out.jsonl"
    # answers: 1 yes (TP), 2 "No. But yes" (FN: first sentence), 3 "Yes, it is." (FP), 4 "not really" (TN),
    # 5 "Yes" with label "none" -> 'no' in "none" -> FP; 6 unanswered (skipped)
    answers = {1: "Yes", 2: "No. But yes", 3: "Yes, it is.", 4: "not really", 5: "Yes"}
    a.write_text("".join(json.dumps({"question_id": k, "text": v}) + "\n" for k, v in answers.items()))
    return q, a


def test_rbench_single(tmp_path: Path) -> None:
    q, a = _rbench_files(tmp_path)
    row = evaluate_rbench(q, a).iloc[0]
    assert (row["n"], row["tp"], row["fn"], row["fp"], row["tn"]) == (5, 1, 1, 2, 1)
    p, r = 1 / (3 + 1e-5), 1 / (2 + 1e-5)
    assert row["precision"] == pytest.approx(p, abs=1e-15) and row["recall"] == pytest.approx(r, abs=1e-15)
    assert row["f1"] == pytest.approx(2 * p * r / (p + r + 1e-5), abs=1e-15)
    assert row["accuracy"] == 2 / 5 and row["yes_ratio"] == 3 / 5


def test_rbench_subsets_average(tmp_path: Path) -> None:
    q, a = _rbench_files(tmp_path)
    ids = [tmp_path / f"ids_{k}.json" for k in (1, 2)]
    ids[0].write_text(json.dumps([1, 2, 3, 4, 5, 6]))
    ids[1].write_text(json.dumps([1, 4]))  # TP + TN: acc 1, P = 1/(1+1e-5), R = 1/(1+1e-5), yes 0.5
    df = evaluate_rbench(q, a, ids)
    assert list(df["n"]) == [5, 2]
    p2 = 1 / (1 + 1e-5)
    f2 = 2 * p2 * p2 / (2 * p2 + 1e-5)
    p1, r1 = 1 / (3 + 1e-5), 1 / (2 + 1e-5)
    f1 = 2 * p1 * r1 / (p1 + r1 + 1e-5)
    exp = {"accuracy": (0.4 + 1) / 2 * 100, "precision": (p1 + p2) / 2 * 100, "recall": (r1 + p2) / 2 * 100,
           "f1": (f1 + f2) / 2 * 100, "yes_ratio": (0.6 + 0.5) / 2 * 100}
    assert df.attrs["average"] == {k: round(v, 2) for k, v in exp.items()}
    assert df.attrs["average"]["accuracy"] == 70.0 and df.attrs["average"]["precision"] == 66.67


def test_rbench_errors(tmp_path: Path) -> None:
    q, a = _rbench_files(tmp_path)
    a.write_text(json.dumps({"question_id": 99, "text": "Yes"}) + "\n")
    with pytest.raises(InputError, match="match no question"):
        evaluate_rbench(q, a)
    a.write_text(json.dumps({"question_id": 1}) + "\n")
    with pytest.raises(InputError, match=r"out\.jsonl: line 1: missing key 'text'"):
        evaluate_rbench(q, a)


def test_rbench_web_types(tmp_path: Path) -> None:
    qs = [{"question_id": 1, "image": "a", "text": "q", "label": "yes", "type": "counterfactual"},
          {"question_id": 2, "image": "b", "text": "q", "label": "no", "type": "illusion"},
          {"question_id": 3, "image": "c", "text": "q", "label": "no", "type": "illusion"}]
    q = tmp_path / "web.json"
    q.write_text(json.dumps(qs))
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in [(1, "Yes"), (2, "Yes"), (3, "No")]))
    df = evaluate_rbench(q, a, by_type=True).set_index("subset")
    assert df.loc["counterfactual", "accuracy"] == 1.0 and df.loc["illusion", "accuracy"] == 0.5
    assert df.loc["total", "accuracy"] == 2 / 3


# ------------------------------------------------------------------------------------------------ HallusionBench
def test_hallusionbench_rules_by_hand(tmp_path: Path) -> None:
    def rec(cat, sub, s, f, qid, vi, judge):
        return {"category": cat, "subcategory": sub, "set_id": s, "figure_id": f, "question_id": qid, "visual_input": vi,
                "judge": judge}
    rows = [
        rec("VD", "illusion", "0", "0", "0", "1", "1"),  # pair (VD,0,q0): correct + correct -> pair correct
        rec("VD", "illusion", "0", "1", "0", "2", "1"),
        rec("VD", "illusion", "0", "0", "1", "1", "1"),  # pair (VD,0,q1): correct + wrong -> pair wrong
        rec("VD", "illusion", "0", "1", "1", "2", "0"),
        rec("VS", "chart", "0", "0", "0", "0", "2"),     # VS figure 0: uncertain counts as correct; no figure group
        rec("VS", "chart", "0", "1", "0", "1", "1"),
        rec("VS", "chart", "0", "2", "0", "2", "2"),     # VS figure 2: uncertain is wrong
    ]
    p = tmp_path / "res.json"
    p.write_text(json.dumps(rows))
    df = load_hallusionbench(p, judge_key="judge")
    assert list(df["correct"]) == [1, 1, 1, 0, 1, 1, 0]
    s = hallusionbench_scores(df).set_index("split")
    # aAcc 5/7; pairs: VD q0 ok, VD q1 no, VS q0 no -> 1/3; figures: VD f0 (ok, ok) ok, VD f1 (ok, wrong) no,
    # VS f1 ok, VS f2 no (VS f0 excluded) -> 2/4; easy (figure 0): VD q0, VD q1, VS q0 all ok -> 3/3;
    # hard (figure != 0): VD q0 ok, VD q1 no, VS q0 (f1 ok, f2 no) no -> 1/3
    o = s.loc["Overall"]
    assert o["aAcc"] == round(100 * 5 / 7, 4) and o["qAcc"] == round(100 / 3, 4) and o["fAcc"] == 50.0
    assert o["easy"] == 100.0 and o["hard"] == round(100 / 3, 4)
    assert o["overall"] == pytest.approx((o["aAcc"] + o["fAcc"] + o["qAcc"]) / 3)
    assert (o["n_questions"], o["n_pairs"], o["n_figures"]) == (7, 3, 4)
    assert s.loc["VS", "fAcc"] == 50.0 and s.loc["VD", "aAcc"] == 75.0


def test_hallusionbench_sample_rule_based(tmp_path: Path) -> None:
    if not HB.is_dir():
        pytest.skip("shared bench samples not present")
    data = json.loads((HB / "HallusionBench.json").read_text())
    # a model that answers "Yes." to everything, judged by the VLMEvalKit yes/no rule against gt_answer
    f = tmp_path / "res.json"
    f.write_text(json.dumps([dict(r, model_prediction="Yes.") for r in data]))
    s = evaluate_hallusionbench(f).set_index("split")
    # independent recount
    corr = {}
    for r in data:
        corr[(r["category"], r["subcategory"], r["set_id"], r["figure_id"], r["question_id"])] = int(r["gt_answer"] == "1")
    n = len(corr)
    pairs, figs = {}, {}
    for (c, sc, st, fg, q), v in corr.items():
        pairs.setdefault((c, sc, st, q), []).append(v)
        if not (c == "VS" and fg == "0"):
            figs.setdefault((c, sc, st, fg), []).append(v)
    o = s.loc["Overall"]
    assert o["n_questions"] == n == 146
    assert o["aAcc"] == round(100 * sum(corr.values()) / n, 4)
    assert o["qAcc"] == round(100 * sum(all(v) for v in pairs.values()) / len(pairs), 4)
    assert o["fAcc"] == round(100 * sum(all(v) for v in figs.values()) / len(figs), 4)


def test_hallusionbench_errors(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    p.write_text(json.dumps([{"category": "VD", "subcategory": "x", "set_id": "0", "figure_id": "0", "question_id": "0",
                              "model_prediction": "Yes"}]))
    with pytest.raises(InputError, match=r"r\.json: line 1: missing key 'gt_answer'"):
        evaluate_hallusionbench(p)
    with pytest.raises(InputError, match="missing key 'judge'"):
        evaluate_hallusionbench(p, judge_key="judge")
