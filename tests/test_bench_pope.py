"""POPE loaders, pairing and the five parser profiles, checked against hand-derived numbers."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from lvlm_probe.benchmarks.parsers import parse_answer, pope_metrics, vqa_process_punctuation
from lvlm_probe.benchmarks.pope import evaluate_pope, load_pope_answers, load_pope_questions, pope_items, split_name
from lvlm_probe.errors import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared"
POPE = SHARED / "bench_samples" / "pope"


def _need_samples() -> None:
    if not POPE.is_dir():
        pytest.skip("shared bench samples not present")


# ------------------------------------------------------------------------------------------ real LLaVA run
# Derived by hand from the files: the 198 answers are only "Yes"/"No"; the k-th answer of a category pairs with the
# k-th line of the pinned e3e39262 label file (66 per split). Counting label x answer gives:
EXPECTED_COUNTS = {  # split: (TP, FP, TN, FN)
    "adversarial": (26, 7, 26, 7),
    "random": (27, 0, 31, 8),
    "popular": (26, 2, 31, 7),
}


def _fractions(tp: int, fp: int, tn: int, fn: int) -> dict:
    n = tp + fp + tn + fn
    p, r = Fraction(tp, tp + fp), Fraction(tp, tp + fn)
    return {"accuracy": Fraction(tp + tn, n), "precision": p, "recall": r, "f1": 2 * p * r / (p + r),
            "yes_ratio": Fraction(tp + fp, n)}


def test_llava15_13b_sample_per_split() -> None:
    _need_samples()
    df = evaluate_pope(POPE / "llava15" / "llava_pope_test.jsonl", POPE / "llava15" / "answers" / "llava-v1.5-13b.jsonl",
                       POPE / "coco_llava15_pinned_e3e39262")
    assert list(df["split"]) == ["adversarial", "random", "popular"]
    f1s = []
    for _, row in df.iterrows():
        tp, fp, tn, fn = EXPECTED_COUNTS[row["split"]]
        assert (row["tp"], row["fp"], row["tn"], row["fn"], row["n"]) == (tp, fp, tn, fn, 66)
        for k, v in _fractions(tp, fp, tn, fn).items():
            assert row[k] == pytest.approx(float(v), abs=1e-15), (row["split"], k)
        f1s.append(_fractions(tp, fp, tn, fn)["f1"])
    # hand values: adversarial F1 = 26/33, random F1 = 54/62, popular F1 = 52/61
    assert f1s == [Fraction(26, 33), Fraction(54, 62), Fraction(52, 61)]
    assert df.attrs["mean_f1"] == pytest.approx(float(sum(f1s) / 3), abs=1e-15)
    assert df.attrs["mean_f1"] == pytest.approx(0.8371018487359048, abs=1e-12)


def test_llava15_sample_independent_recount() -> None:
    """Recount TP/FP/TN/FN straight from the files with a few lines of independent code."""
    _need_samples()
    qs = [json.loads(x) for x in open(POPE / "llava15" / "llava_pope_test.jsonl")]
    ans = {json.loads(x)["question_id"]: json.loads(x)["text"] for x in open(POPE / "llava15" / "answers" / "llava-v1.5-13b.jsonl")}
    df = evaluate_pope(POPE / "llava15" / "llava_pope_test.jsonl", POPE / "llava15" / "answers" / "llava-v1.5-13b.jsonl",
                       POPE / "coco_llava15_pinned_e3e39262").set_index("split")
    for split in ("adversarial", "random", "popular"):
        labels = [json.loads(x)["label"] for x in open(POPE / "coco_llava15_pinned_e3e39262" / f"coco_pope_{split}.json")]
        preds = [ans[q["question_id"]] != "No" for q in qs if q["category"] == split]
        gts = [lab != "no" for lab in labels[: len(preds)]]
        tp = sum(p and g for p, g in zip(preds, gts))
        tn = sum(not p and not g for p, g in zip(preds, gts))
        assert (df.loc[split, "tp"], df.loc[split, "tn"]) == (tp, tn)
        assert df.loc[split, "yes_ratio"] == sum(preds) / len(preds)


def test_llava_split_filter_and_subset_pairing(tmp_path: Path) -> None:
    _need_samples()
    # keep only random-split answers 3..10 in shuffled order: pairing is by question position, not answer order
    lines = [json.loads(x) for x in open(POPE / "llava15" / "answers" / "llava-v1.5-13b.jsonl")]
    rnd = [a for a in lines if 10_000_003 <= a["question_id"] <= 10_000_010][::-1]
    p = tmp_path / "a.jsonl"
    p.write_text("".join(json.dumps(a) + "\n" for a in rnd))
    with pytest.raises(InputError, match="have no answer"):
        pope_items(POPE / "llava15" / "llava_pope_test.jsonl", p, POPE / "coco_llava15_pinned_e3e39262", split="random")
    with pytest.warns(RuntimeWarning, match="scoring only the answered"):
        items = pope_items(POPE / "llava15" / "llava_pope_test.jsonl", p, POPE / "coco_llava15_pinned_e3e39262",
                           split="random", allow_missing=True)
    labels = [json.loads(x) for x in open(POPE / "coco_llava15_pinned_e3e39262" / "coco_pope_random.json")]
    assert list(items["question_id"]) == list(range(10_000_003, 10_000_011))
    assert list(items["label"]) == [labels[k]["label"] for k in range(2, 10)]
    assert list(items["image"]) == [labels[k]["image"] for k in range(2, 10)]


def test_wrong_label_version_is_caught() -> None:
    _need_samples()
    # HEAD label files (08d957b): adversarial only had its "imange" typos fixed (text warnings), but random was
    # re-sampled, so the image at the same position differs -> error instead of silently wrong pairs
    with pytest.raises(InputError, match=r"coco_pope_random\.json: line \d+: image .* does not match question_id"), \
            pytest.warns(UserWarning, match="imange"):
        evaluate_pope(POPE / "llava15" / "llava_pope_test.jsonl", POPE / "llava15" / "answers" / "llava-v1.5-13b.jsonl",
                      POPE / "coco")


# ------------------------------------------------------------------------------------------ file shapes
def test_file_shapes() -> None:
    _need_samples()
    lf = POPE / "coco" / "coco_pope_random.json"
    crlf = POPE / "coco" / "coco_pope_popular.json"
    assert b"\r\n" in crlf.read_bytes() and b"\r\n" not in lf.read_bytes()
    for path, n, split in [(lf, 198, "random"), (crlf, 198, "popular"),
                           (POPE / "seem" / "aokvqa" / "aokvqa_pope_seem_adversarial.json", 60, "adversarial"),
                           (POPE / "seem" / "gqa" / "gqa_pope_seem_random.json", 60, "random")]:
        q = load_pope_questions(path)
        assert len(q) == n and set(q["split"]) == {split} and split_name(path) == split
        assert set(q["label"]) == {"yes", "no"}
        assert not any(t.endswith("\r") for t in q["question"])
    v2 = load_pope_questions(POPE / "POPEv2" / "annotations.json")
    assert len(v2) == 200 and set(v2["label"]) == {"yes", "no"}  # capitalised labels lower-cased
    assert v2["question_id"].isna().all()
    # POPE's own answer example
    a = load_pope_answers(POPE / "answer" / "example.json")
    assert list(a["answer"]) == ["yes"] and a["question_id"].isna().all()


def test_seem_positional_answers(tmp_path: Path) -> None:
    _need_samples()
    q = POPE / "seem" / "gqa" / "gqa_pope_seem_random.json"
    recs = json.loads(q.read_text())
    # POPE answer format (no question_id): every answer "Yes" -> TP = #yes labels, yes ratio 1
    p = tmp_path / "ans.json"
    p.write_text("".join(json.dumps({"question": r["text"].lower(), "answer": "Yes"}) + "\n" for r in recs))
    df = evaluate_pope(q, p)
    n_yes = sum(r["label"] == "yes" for r in recs)
    row = df.iloc[0]
    assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (n_yes, 60 - n_yes, 0, 0)
    assert row["yes_ratio"] == 1.0 and row["recall"] == 1.0
    # a count mismatch is an error, not a silent zip truncation
    p.write_text("".join(json.dumps({"answer": "Yes"}) + "\n" for _ in recs[:-1]))
    with pytest.raises(InputError, match="59 answers but .* 60 questions"):
        evaluate_pope(q, p)
    # an answer echoing a different question at its position is a misalignment
    p.write_text("".join(json.dumps({"question": "is there a unicorn?", "answer": "Yes"}) + "\n" for _ in recs))
    with pytest.raises(InputError, match="line 1: key 'question'"):
        evaluate_pope(q, p)


def test_question_id_pairing_and_errors(tmp_path: Path) -> None:
    q = tmp_path / "coco_pope_adversarial.json"
    q.write_text('{"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}\r\n'
                 '{"question_id": 2, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "no"}\r\n')
    a = tmp_path / "ans.jsonl"
    a.write_text('{"question_id": 2, "text": "No, there is not."}\n{"question_id": 1, "text": "Yes."}\n')
    df = evaluate_pope(q, a)
    assert df.iloc[0]["split"] == "adversarial"
    assert (df.iloc[0]["tp"], df.iloc[0]["tn"]) == (1, 1)
    a.write_text('{"question_id": 1, "text": "Yes."}\n{"question_id": 7, "text": "No"}\n')
    with pytest.raises(InputError, match=r"ans\.jsonl: line 2: key 'question_id' = 7"):
        evaluate_pope(q, a)
    a.write_text('{"question_id": 1, "text": "Yes."}\n{"question_id": 2, "txt": "No"}\n')
    with pytest.raises(InputError, match=r"ans\.jsonl: line 2: missing key 'text'"):
        evaluate_pope(q, a)
    a.write_text('{"question_id": 1, "text": "Yes."}\n{"question_id": 2, "text": "No"\n')
    with pytest.raises(InputError, match=r"ans\.jsonl: line 2: invalid JSON"):
        evaluate_pope(q, a)
    a.write_text('{"question_id": 1, "text": "Yes."}\n{"question_id": 1, "text": "No"}\n')
    with pytest.raises(InputError, match="line 2: duplicate question_id 1"):
        evaluate_pope(q, a)


# ------------------------------------------------------------------------------------------ parser profiles
EDGE = ["Yes, there is.", "NO", "Nope", "isn't", "", "I don't know", "Yes. There is no cat.", "There is no cat. Yes.",
        "Not sure", "yes\nno", "No.", "There isn't a dog in the image."]
EXPECTED = {
    # POPE/LLaVA: first '.'-sentence, single-space split, only No/not/no
    "pope": ["yes", "yes", "yes", "yes", "yes", "yes", "yes", "no", "yes", "yes", "no", "yes"],
    # OPERA: whole text, also NO and any token ending in n't
    "opera": ["yes", "no", "yes", "no", "yes", "no", "no", "no", "yes", "yes", "no", "no"],
    # lmms-eval: exact 'yes'/'no' after lower/strip only
    "lmms_eval": ["unknown", "no", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown",
                  "unknown", "unknown", "unknown"],
    # VLMEvalKit: word-level yes xor no after VQA punctuation handling
    "vlmevalkit": ["yes", "no", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown",
                   "no", "unknown"],
}
# VCD depends on the label: substring 'yes' when the label is yes, substring 'no' when it is no
EXPECTED_VCD_GT_YES = ["yes", "no", "no", "no", "no", "no", "yes", "yes", "no", "yes", "no", "no"]
EXPECTED_VCD_GT_NO = ["yes", "no", "no", "yes", "yes", "no", "no", "no", "no", "no", "no", "yes"]


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_edge_cases(profile: str) -> None:
    assert [parse_answer(t, profile) for t in EDGE] == EXPECTED[profile]


def test_edge_cases_vcd() -> None:
    assert [parse_answer(t, "vcd", label="yes") for t in EDGE] == EXPECTED_VCD_GT_YES
    assert [parse_answer(t, "vcd", label="no") for t in EDGE] == EXPECTED_VCD_GT_NO
    assert parse_answer("My eyes", "vcd", label="yes") == "yes"  # substring quirk
    with pytest.raises(InputError):
        parse_answer("Yes", "vcd")


def test_vlmevalkit_punctuation_quirks() -> None:
    assert parse_answer("yes/no", "vlmevalkit") == "unknown"  # '/' without spaces becomes a space
    assert parse_answer("Yes!", "vlmevalkit") == "yes"
    assert vqa_process_punctuation("a, b") == "a b"  # ', ' present -> stripped
    assert vqa_process_punctuation("3.5 a.b") == "3.5 ab"  # period before a digit kept
    # re.UNICODE passed as `count`: only the first 32 periods are removed
    assert parse_answer("no" + "." * 30, "vlmevalkit") == "no"
    assert parse_answer("no" + "." * 40, "vlmevalkit") == "unknown"


def test_metric_quirks() -> None:
    labels = ["yes", "yes", "no", "no"]
    # pope: all "No" -> TP + FP = 0 -> the original raises ZeroDivisionError; here NaN + warning
    with pytest.warns(RuntimeWarning, match="zero denominator"):
        m = pope_metrics(["No"] * 4, labels, "pope")
    assert math.isnan(m["precision"]) and math.isnan(m["f1"]) and m["recall"] == 0 and m["accuracy"] == 0.5
    # pope label rule: only exactly 'no' is negative ("No" counts as yes)
    m = pope_metrics(["Yes", "Yes"], ["No", "no"], "pope")
    assert (m["tp"], m["fp"]) == (1, 1)
    # lmms_eval: guarded zero -> 0 (no warning), yes_ratio from ground truth (bug reproduced)
    m = pope_metrics(["No", "No", "Yes.", "no"], labels, "lmms_eval")
    assert m["precision"] == 0 and m["f1"] == 0 and m["yes_ratio"] == 0.5
    assert m["accuracy"] == 0.25 and m["unknown"] == 1 and (m["fn"], m["tn"]) == (2, 1)
    # vcd: "I don't know" on a no-label counts as TN ('no' in 'know'); yes ratio = (TP + FP) / total
    m = pope_metrics(["yes", "nope", "I don't know", "sure"], labels, "vcd")
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (1, 1, 1, 1) and m["yes_ratio"] == 0.5
    # vcd: an unknown label is only in the totals
    with pytest.warns(RuntimeWarning, match="neither yes nor no"):
        m = pope_metrics(["yes", "no"], ["yes", "maybe"], "vcd")
    assert m["accuracy"] == 0.5 and m["n"] == 2 and m["unknown"] == 1
    # vlmevalkit: Unknown is a wrong answer and a negative prediction
    m = pope_metrics(["Nope", "Nope", "Yes, it is.", "No"], labels, "vlmevalkit")
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (0, 2, 1, 1) and m["accuracy"] == 0.25 and m["unknown"] == 2
    assert m["precision"] == 0 and m["f1"] == 0
    # opera: "isn't" is a no
    m = pope_metrics(["It isn't", "Yes"], ["no", "yes"], "opera")
    assert m["accuracy"] == 1.0


def test_unknown_profile() -> None:
    with pytest.raises(InputError, match="unknown parser profile"):
        pope_metrics(["Yes"], ["yes"], "llava")
