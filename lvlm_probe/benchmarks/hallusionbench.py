"""HallusionBench (tianyi-lab/HallusionBench ``evaluation.py`` + ``utils.py``): question, pair and figure accuracy.

The original judges every prediction with GPT-4 ("incorrect" -> "0", "correct" -> "1", otherwise "2"). Here the
judgement comes either from a field of the result file holding those codes (``judge_key``, e.g. the original's
``gpt4v_output_gpt_check``) or from a rule-based yes/no parser compared with ``gt_answer`` (match -> "1",
mismatch -> "0", unparseable -> "2"); the latter is a documented substitute, not the GPT judge.

Aggregation reproduced: ``correct`` = judgement "1", except for VS questions with ``figure_id == "0"`` (no visual
supplement), where "2" (uncertain) also counts; aAcc = mean correct; qAcc groups by category, subcategory, set_id,
question_id and a group counts iff all its members are correct; fAcc groups by category, subcategory, set_id,
figure_id, skipping VS figure 0; easy / hard are the pair accuracy over ``figure_id == "0"`` / ``!= "0"``
(the code at the data's commit; older code used ``visual_input``); the leaderboard's overall = mean(aAcc, fAcc, qAcc).
All in percent, as the original prints them (it rounds to 4 decimals).
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

import pandas as pd

from lvlm_probe.benchmarks._io import PathLike, get_key, read_records, require_records
from lvlm_probe.benchmarks.parsers import NO, PROFILES, UNKNOWN, YES, parse_answer
from lvlm_probe.errors import InputError

_FIELDS = ("category", "subcategory", "set_id", "figure_id", "question_id")


def load_hallusionbench(path: PathLike, *, judge_key: Optional[str] = None, prediction_key: str = "model_prediction",
                        parser: str = "vlmevalkit") -> pd.DataFrame:
    """Load a HallusionBench result file and attach a judgement (``"0"``/``"1"``/``"2"``) and ``correct`` per row."""
    if judge_key is None and parser not in PROFILES:
        raise InputError(f"unknown parser profile {parser!r}; choose one of {', '.join(PROFILES)}")
    rows = []
    seen: Dict[str, int] = {}
    for line, obj in require_records(path, read_records(path), "records"):
        r = {k: str(get_key(path, line, obj, k, (str, int))) for k in _FIELDS}
        r["visual_input"] = str(obj.get("visual_input", ""))
        if judge_key is not None:
            j = str(get_key(path, line, obj, judge_key, (str, int)))
            if j not in ("0", "1", "2"):
                raise InputError(f"{path}: line {line}: key '{judge_key}' should be 0, 1 or 2, found {j!r}")
        else:
            gt = str(get_key(path, line, obj, "gt_answer", (str, int)))
            if gt not in ("0", "1"):
                raise InputError(f"{path}: line {line}: key 'gt_answer' should be '0' or '1', found {gt!r}")
            gt_word = YES if gt == "1" else NO
            pred = parse_answer(get_key(path, line, obj, prediction_key, str), parser, label=gt_word)
            j = "2" if pred == UNKNOWN else ("1" if pred == gt_word else "0")
        r["judge"] = j
        if r["category"] == "VS" and r["figure_id"] == "0":
            r["correct"] = int(j in ("1", "2"))
        else:
            r["correct"] = int(j == "1")
        name = "_".join(r[k] for k in _FIELDS)
        if name in seen:
            raise InputError(f"{path}: line {line}: duplicate question {name} (first at line {seen[name]})")
        seen[name] = line
        r["line"] = line
        rows.append(r)
    return pd.DataFrame(rows)


def _pct(c: int, t: int, what: str) -> float:
    if t == 0:
        warnings.warn(f"HallusionBench: {what} has no items (the original divides by zero); reporting NaN",
                      RuntimeWarning, stacklevel=3)
        return math.nan
    return round(100 * c / t, 4)


def _groups_all_correct(df: pd.DataFrame, keys: List[str]) -> tuple:
    if len(df) == 0:
        return 0, 0
    g = df.groupby(keys, sort=False)["correct"].agg(["sum", "count"])
    return int((g["sum"] == g["count"]).sum()), len(g)


def hallusionbench_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Rows ``Overall``, ``VD``, ``VS`` with ``aAcc, fAcc, qAcc, easy, hard, overall`` (percent) and counts."""
    out = []
    for name, sub in (("Overall", df), ("VD", df[df["category"] == "VD"]), ("VS", df[df["category"] == "VS"])):
        q_keys = ["category", "subcategory", "set_id", "question_id"]
        f_keys = ["category", "subcategory", "set_id", "figure_id"]
        a_acc = _pct(int(sub["correct"].sum()), len(sub), f"{name} aAcc")
        qc, qt = _groups_all_correct(sub, q_keys)
        figs = sub[~((sub["category"] == "VS") & (sub["figure_id"] == "0"))]
        fc, ft = _groups_all_correct(figs, f_keys)
        ec, et = _groups_all_correct(sub[sub["figure_id"] == "0"], q_keys)
        hc, ht = _groups_all_correct(sub[sub["figure_id"] != "0"], q_keys)
        q_acc, f_acc = _pct(qc, qt, f"{name} qAcc"), _pct(fc, ft, f"{name} fAcc")
        out.append({"split": name, "aAcc": a_acc, "fAcc": f_acc, "qAcc": q_acc, "easy": _pct(ec, et, f"{name} easy"),
                    "hard": _pct(hc, ht, f"{name} hard"), "overall": (a_acc + f_acc + q_acc) / 3,
                    "n_questions": len(sub), "n_pairs": qt, "n_figures": ft})
    return pd.DataFrame(out)


def evaluate_hallusionbench(path: PathLike, *, judge_key: Optional[str] = None, prediction_key: str = "model_prediction",
                            parser: str = "vlmevalkit") -> pd.DataFrame:
    """Load a result file and score it; see :func:`load_hallusionbench` and :func:`hallusionbench_scores`."""
    return hallusionbench_scores(load_hallusionbench(path, judge_key=judge_key, prediction_key=prediction_key, parser=parser))
