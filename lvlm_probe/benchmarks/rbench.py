"""R-Bench (mrwu-mac/R-Bench ``eval.py``): relation hallucination, POPE-style scoring with its own quirks.

Quirks reproduced: answers are parsed with POPE's first-sentence rule; a label is "no" iff ``'no'`` is a substring
of ``label.lower()`` (so "none" or "not sure" are no); questions without an answer are skipped; precision, recall
and F1 carry ``+1e-5`` in their denominators; the reported number is ``np.round(np.mean(100 * [acc, P, R, F1, yes]
over the five id subsets), 2)``. Web data is scored per ``type`` (counterfactual, illusion) and in total.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from lvlm_probe.benchmarks._io import PathLike, get_key, read_json, read_records, require_records
from lvlm_probe.benchmarks.parsers import NO, parse_pope
from lvlm_probe.errors import InputError

QID = Union[int, str]
_EPS = 0.00001
COLUMNS = ["subset", "n", "tp", "fp", "tn", "fn", "accuracy", "precision", "recall", "f1", "yes_ratio"]


def load_rbench_questions(path: PathLike) -> pd.DataFrame:
    """R-Bench question file (JSON array of ``question_id, image, text, label`` [+ ``type``, boxes])."""
    rows = []
    for line, obj in require_records(path, read_records(path), "questions"):
        qid = get_key(path, line, obj, "question_id", (int, str))
        lab = obj.get("label")
        if lab is not None and not isinstance(lab, str):
            raise InputError(f"{path}: line {line}: key 'label' should be str, found {type(lab).__name__}")
        if "label" not in obj:
            raise InputError(f"{path}: line {line}: missing key 'label'")
        rows.append({"question_id": qid, "label": lab, "type": obj.get("type"), "line": line})
    return pd.DataFrame(rows, columns=["question_id", "label", "type", "line"])


def load_rbench_answers(path: PathLike) -> Dict[QID, str]:
    """Answers (JSON lines ``question_id, text``) as ``{question_id: text}``; a repeated id keeps the last, as R-Bench."""
    out: Dict[QID, str] = {}
    for line, obj in read_records(path):
        out[get_key(path, line, obj, "question_id", (int, str))] = get_key(path, line, obj, "text", str)
    return out


def rbench_metrics(answers: Mapping[QID, str], labels: Mapping[QID, Optional[str]],
                   question_ids: Sequence[QID]) -> Dict[str, float]:
    """R-Bench's ``eval_pope`` on one list of question ids (fractions; yes ratio NaN + warning when nothing answered)."""
    tp = fp = tn = fn = 0
    n_yes = n = 0
    for qid in question_ids:
        if qid not in answers:
            continue
        if qid not in labels:
            raise InputError(f"question_id {qid!r} of the id list has no question (R-Bench would raise KeyError)")
        pred_yes = parse_pope(answers[qid]) != NO
        lab = labels[qid]
        gt_yes = not (lab and "no" in lab.lower())
        n += 1
        n_yes += pred_yes
        tp += pred_yes and gt_yes
        fp += pred_yes and not gt_yes
        tn += (not pred_yes) and (not gt_yes)
        fn += (not pred_yes) and gt_yes
    if n == 0:
        warnings.warn("R-Bench: no question of the id list has an answer (the original divides by zero); reporting NaN",
                      RuntimeWarning, stacklevel=2)
        nan = math.nan
        return {"n": 0, "tp": 0, "fp": 0, "tn": 0, "fn": 0, "accuracy": nan, "precision": nan, "recall": nan, "f1": nan,
                "yes_ratio": nan}
    p = tp / (tp + fp + _EPS)
    r = tp / (tp + fn + _EPS)
    return {"n": n, "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn), "accuracy": (tp + tn) / n, "precision": p,
            "recall": r, "f1": 2 * p * r / (p + r + _EPS), "yes_ratio": n_yes / n}


def evaluate_rbench(questions: PathLike, answers: PathLike, subsets: Optional[Sequence[PathLike]] = None,
                    by_type: bool = False) -> pd.DataFrame:
    """Score an R-Bench run.

    Parameters
    ----------
    questions
        The question file (image-level, instance-level, POPE-object or web).
    answers
        JSON lines with ``question_id`` and ``text``.
    subsets
        The id files (``*_ids_1.json`` ... ``*_ids_5.json``); each is scored, and ``attrs["average"]`` holds
        R-Bench's reported numbers (percent, rounded to 2 decimals). Without them all questions form one subset.
    by_type
        Web data: score each ``type`` (counterfactual, illusion) and the total, as ``--eval_web`` does.

    Returns
    -------
    pandas.DataFrame
        One row per subset (or type): ``subset, n, tp, fp, tn, fn, accuracy, precision, recall, f1, yes_ratio``.
    """
    q = load_rbench_questions(questions)
    labels = dict(zip(q["question_id"], q["label"]))
    ans = load_rbench_answers(answers)
    known = set(labels)
    unknown = [k for k in ans if k not in known]
    if unknown:
        raise InputError(f"{answers}: {len(unknown)} answer(s) match no question of {questions} "
                         f"(first: question_id {unknown[0]!r})")
    rows: List[dict] = []
    if by_type:
        for t in ("counterfactual", "illusion"):
            rows.append({"subset": t, **rbench_metrics(ans, labels, q.loc[q["type"] == t, "question_id"].tolist())})
        rows.append({"subset": "total", **rbench_metrics(ans, labels, q["question_id"].tolist())})
    elif subsets:
        for path in subsets:
            ids = read_json(path)
            if not isinstance(ids, list):
                raise InputError(f"{path}: expected a JSON list of question ids, found {type(ids).__name__}")
            unknown = [i for i in ids if isinstance(i, (dict, list)) or i not in known]
            if unknown:
                raise InputError(f"{path}: {len(unknown)} id(s) match no question of {questions} "
                                 f"(first: question_id {unknown[0]!r}); is this the id file of that question file?")
            rows.append({"subset": str(path), **rbench_metrics(ans, labels, ids)})
    else:
        rows.append({"subset": "all", **rbench_metrics(ans, labels, q["question_id"].tolist())})
    df = pd.DataFrame(rows, columns=COLUMNS)
    keys = ["accuracy", "precision", "recall", "f1", "yes_ratio"]
    mean = np.round(np.mean(np.multiply(df[keys].to_numpy(dtype=float), 100), axis=0), decimals=2)
    df.attrs["average"] = {k: float(v) for k, v in zip(keys, mean)}
    return df
