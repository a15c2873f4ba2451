"""POPE: loaders for every published file shape, answer pairing, and per-split scoring.

Shapes read by :func:`load_pope_questions`:

* POPE COCO files (JSON lines, LF or CRLF; both the HEAD and LLaVA's pinned ``e3e39262`` versions),
* POPE SEEM files (A-OKVQA / GQA, JSON arrays with ``indent=4``),
* POPEv2 ``annotations.json`` (``query`` / ``image_name`` / capitalised ``label``),
* LLaVA's combined ``llava_pope_test.jsonl`` (``category`` names the split, no labels; question ids of the
  random / popular splits are offset by 10,000,000 / 20,000,000).

Answers (:func:`load_pope_answers`) are LLaVA JSON lines (``question_id`` + ``text``) or POPE answer files
(``answer``, optionally ``question``), in any of the shapes above.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.benchmarks._io import PathLike, first_key, get_key, read_records, require_dict, require_records
from lvlm_probe.benchmarks.parsers import PROFILES, pope_metrics, predictions
from lvlm_probe.errors import InputError

_SPLIT_RE = re.compile(r"(random|popular|adversarial)")
_ANSWER_KEYS = ("text", "answer", "response", "prediction")
METRIC_COLUMNS = ["split", "n", "tp", "fp", "tn", "fn", "unknown", "accuracy", "precision", "recall", "f1", "yes_ratio"]


def split_name(path: PathLike) -> str:
    """Split named after a POPE file: ``coco_pope_random.json`` -> ``random``; otherwise the file stem."""
    stem = Path(path).stem
    m = _SPLIT_RE.search(stem)
    return m.group(1) if m else stem


def load_pope_questions(path: PathLike, split: Optional[str] = None) -> pd.DataFrame:
    """Load a POPE question file of any published shape.

    Parameters
    ----------
    path
        POPE COCO / SEEM / POPEv2 file, or LLaVA's combined ``llava_pope_test.jsonl``.
    split
        Split name for files that carry no ``category`` (default: from the file name, see :func:`split_name`).

    Returns
    -------
    pandas.DataFrame
        One row per question, in file order: ``split, question_id, image, question, label, line, file``.
        ``label`` is None for LLaVA's combined file; ``question_id`` is None for POPEv2 (no ids).
        POPEv2's capitalised labels are lower-cased (it has no scorer of its own; POPE's ``== 'no'`` test
        would read every ``"No"`` as yes).
    """
    recs = require_records(path, read_records(path), "questions")
    default_split = split or split_name(path)
    rows: List[Dict[str, Any]] = []
    for line, obj in recs:
        d = require_dict(path, line, obj)
        if "query" in d and "text" not in d:  # POPEv2
            label = get_key(path, line, d, "label", str)
            rows.append({"split": default_split, "question_id": None,
                         "image": get_key(path, line, d, "image_name", str),
                         "question": get_key(path, line, d, "query", str), "label": label.strip().lower(),
                         "line": line})
            continue
        qid = get_key(path, line, d, "question_id", (int, str))
        text = get_key(path, line, d, "text", str)
        image = get_key(path, line, d, "image", str)
        if "label" not in d and "category" not in d:
            raise InputError(f"{path}: line {line}: missing key 'label' (a POPE file labels every question; LLaVA's "
                             "combined file has 'category' instead)")
        if "label" in d:
            label = get_key(path, line, d, "label", str)
            cat = d.get("category", default_split) if split is None else split
        else:
            cat = get_key(path, line, d, "category", str)
            label = None
        rows.append({"split": cat, "question_id": qid, "image": image, "question": text, "label": label, "line": line})
    df = pd.DataFrame(rows, columns=["split", "question_id", "image", "question", "label", "line"])
    df["file"] = str(path)
    has_label = df["label"].notna()
    if has_label.any() and not has_label.all():
        first = int(df.loc[~has_label, "line"].iloc[0])
        raise InputError(f"{path}: line {first}: missing key 'label' (other records of the file have one)")
    ids = df["question_id"].dropna()
    dup = ids[ids.duplicated()]
    if len(dup):
        line = int(df.loc[dup.index[0], "line"])
        raise InputError(f"{path}: line {line}: duplicate question_id {_py(dup.iloc[0])!r}")
    return df


def load_pope_answers(path: PathLike) -> pd.DataFrame:
    """Load model answers: ``question_id`` (optional) + ``text`` (LLaVA) or ``answer`` (POPE).

    Returns
    -------
    pandas.DataFrame
        ``question_id, answer, question, line, file`` in file order (``question`` when the file echoes it).
    """
    rows = []
    for line, obj in require_records(path, read_records(path), "answers"):
        d = require_dict(path, line, obj)
        _, ans = first_key(path, line, d, _ANSWER_KEYS, str)
        qid = get_key(path, line, d, "question_id", (int, str)) if "question_id" in d else None
        q = d.get("question") if isinstance(d.get("question"), str) else None
        rows.append({"question_id": qid, "answer": ans, "question": q, "line": line})
    df = pd.DataFrame(rows, columns=["question_id", "answer", "question", "line"])
    df["file"] = str(path)
    ids = df["question_id"]
    if ids.notna().any() and ids.isna().any():
        line = int(df.loc[ids.isna(), "line"].iloc[0])
        raise InputError(f"{path}: line {line}: missing key 'question_id' (other records of the file have one)")
    dup = ids.dropna()[ids.dropna().duplicated()]
    if len(dup):
        raise InputError(f"{path}: line {int(df.loc[dup.index[0], 'line'])}: duplicate question_id {_py(dup.iloc[0])!r}")
    return df


def _label_files(labels_dir: PathLike) -> Dict[str, Path]:
    d = Path(labels_dir)
    if not d.is_dir():
        raise InputError(f"{d}: labels directory not found")
    files = {p.stem[len("coco_pope_"):]: p for p in sorted(d.glob("coco_pope_*.json"))}
    if not files:
        raise InputError(f"{d}: no coco_pope_<split>.json label files (as LLaVA's eval_pope reads them)")
    return files


def _missing(n_missing: int, first: str, allow_missing: bool, where: str) -> None:
    if not n_missing:
        return
    msg = f"{where}: {n_missing} question(s) have no answer (first: {first})"
    if not allow_missing:
        raise InputError(msg + "; pass allow_missing=True (--allow-missing) to score only the answered ones")
    warnings.warn(msg + "; scoring only the answered questions", RuntimeWarning, stacklevel=3)


def pope_items(questions: PathLike, answers: PathLike, labels: Optional[PathLike] = None, *, split: Optional[str] = None,
               parser: str = "pope", allow_missing: bool = False) -> pd.DataFrame:
    """Pair answers with questions and labels; one row per scored question.

    Parameters
    ----------
    questions
        A POPE file that carries labels, or LLaVA's combined ``llava_pope_test.jsonl`` (then ``labels`` is needed).
    answers
        The answer file.
    labels
        Directory with the per-split ``coco_pope_<split>.json`` label files, as LLaVA's ``eval_pope`` reads them.
        The k-th question of a split in the combined file is paired with the k-th line of that split's label file
        (the original's order), and the image of each pair is checked.
    split
        Keep only this split (LLaVA combined file), or name the split of a single POPE file.
    parser
        Parser profile used for the ``pred`` column (see :mod:`lvlm_probe.benchmarks.parsers`).
    allow_missing
        Score only answered questions instead of raising when some have no answer.

    Returns
    -------
    pandas.DataFrame
        ``split, question_id, image, question, answer, label, pred`` in question order.
    """
    if parser not in PROFILES:
        raise InputError(f"unknown parser profile {parser!r}; choose one of {', '.join(PROFILES)}")
    q = load_pope_questions(questions, split=split if labels is None else None)
    a = load_pope_answers(answers)
    if q["label"].isna().all():
        if labels is None:
            raise InputError(f"{questions}: questions carry no 'label' (LLaVA combined file?); pass the label directory "
                             "(--labels DIR with coco_pope_<split>.json)")
        items = _pair_llava(q, a, questions, answers, labels, split, allow_missing)
    else:
        if labels is not None:
            warnings.warn(f"{questions} carries its own labels; ignoring the labels directory {labels}", stacklevel=2)
        items = _pair_single(q, a, questions, answers, allow_missing)
    items["pred"] = predictions(items["answer"].tolist(), items["label"].tolist(), parser) if len(items) else []
    return items.reset_index(drop=True)


def _pair_single(q: pd.DataFrame, a: pd.DataFrame, qpath: PathLike, apath: PathLike, allow_missing: bool) -> pd.DataFrame:
    cols = ["split", "question_id", "image", "question", "label"]
    if a["question_id"].notna().all() and q["question_id"].notna().all() and len(a):
        pos = {qid: i for i, qid in enumerate(q["question_id"])}
        ans_by_q: Dict[int, str] = {}
        for qid, ans, line in zip(a["question_id"], a["answer"], a["line"]):
            if qid not in pos:
                raise InputError(f"{apath}: line {line}: key 'question_id' = {_py(qid)!r} matches no question of {qpath}")
            ans_by_q[pos[qid]] = ans
        missing = [i for i in range(len(q)) if i not in ans_by_q]
        _missing(len(missing), f"question_id {_py(q['question_id'].iloc[missing[0]])!r}" if missing else "", allow_missing,
                 str(apath))
        keep = sorted(ans_by_q)
        out = q.iloc[keep][cols].copy()
        out["answer"] = [ans_by_q[i] for i in keep]
        return out
    # positional pairing, as POPE's evaluate.py does -- but lengths must agree (no silent zip truncation)
    if len(a) != len(q):
        raise InputError(f"{apath} has {len(a)} answers but {qpath} has {len(q)} questions; answers without "
                         "question_id are paired by position, so the counts must match")
    for (qtext, line, aq) in zip(q["question"], a["line"], a["question"]):
        if aq is not None and aq.strip().lower() != qtext.strip().lower():
            raise InputError(f"{apath}: line {line}: key 'question' = {aq!r} does not match the question at the same "
                             f"position in {qpath} ({qtext!r})")
    out = q[cols].copy()
    out["answer"] = a["answer"].tolist()
    return out


def _pair_llava(q: pd.DataFrame, a: pd.DataFrame, qpath: PathLike, apath: PathLike, labels_dir: PathLike,
                split: Optional[str], allow_missing: bool) -> pd.DataFrame:
    files = _label_files(labels_dir)
    if a["question_id"].isna().any():
        line = int(a.loc[a["question_id"].isna(), "line"].iloc[0])
        raise InputError(f"{apath}: line {line}: missing key 'question_id' (needed to pair with {qpath})")
    q = q.copy()
    q["k"] = q.groupby("split").cumcount()
    by_id = {qid: i for i, qid in enumerate(q["question_id"])}
    answer_of: Dict[int, str] = {}
    for qid, ans, line in zip(a["question_id"], a["answer"], a["line"]):
        if qid not in by_id:
            raise InputError(f"{apath}: line {line}: key 'question_id' = {_py(qid)!r} matches no question of {qpath}")
        answer_of[by_id[qid]] = ans
    splits = list(dict.fromkeys(q["split"]))  # order of first appearance (adversarial, random, popular)
    if split is not None:
        if split not in splits:
            raise InputError(f"{qpath}: no question has category {split!r} (categories: {', '.join(splits)})")
        splits = [split]
    unlabeled = [s for s in splits if s not in files]
    if unlabeled:
        n = sum(1 for i in answer_of if q["split"].iloc[i] in unlabeled)
        warnings.warn(f"{labels_dir}: no label file for categor{'y' if len(unlabeled) == 1 else 'ies'} "
                      f"{', '.join(unlabeled)}; their {n} answers are not scored (LLaVA's eval_pope does the same)",
                      RuntimeWarning, stacklevel=3)
    parts = []
    for s in splits:
        if s not in files:
            continue
        lab_recs = read_records(files[s])
        sub = q[q["split"] == s]
        missing = [i for i in sub.index if i not in answer_of]
        _missing(len(missing), f"question_id {_py(q['question_id'].iloc[missing[0]])!r}" if missing else "", allow_missing,
                 f"{apath} ({s})")
        if len(sub) > len(lab_recs):
            raise InputError(f"{files[s]} has {len(lab_recs)} labels but {qpath} has {len(sub)} '{s}' questions")
        rows = []
        for i in sub.index:
            if i not in answer_of:
                continue
            k = int(q["k"].iloc[i])
            line, rec = lab_recs[k]
            image = get_key(files[s], line, rec, "image", str)
            label = get_key(files[s], line, rec, "label", str)
            if image != q["image"].iloc[i]:
                raise InputError(f"{files[s]}: line {line}: image {image!r} does not match question_id "
                                 f"{_py(q['question_id'].iloc[i])!r} of {qpath} ({q['image'].iloc[i]!r}); "
                                 "is this the label file version the questions were made from (POPE e3e39262 for LLaVA)?")
            ltext = rec.get("text") if isinstance(rec, dict) else None
            qtext = q["question"].iloc[i].split("\n")[0]
            if isinstance(ltext, str) and ltext != qtext:
                warnings.warn(f"{files[s]}: line {line}: question text {ltext!r} differs from {qtext!r}", stacklevel=3)
            rows.append({"split": s, "question_id": q["question_id"].iloc[i], "image": image, "question": qtext,
                         "label": label, "answer": answer_of[i]})
        parts.append(pd.DataFrame(rows, columns=["split", "question_id", "image", "question", "label", "answer"]))
    if not parts:
        raise InputError(f"{labels_dir}: none of the categories of {qpath} ({', '.join(splits)}) has a label file")
    return pd.concat(parts, ignore_index=True)


def score_pope(items: pd.DataFrame, parser: str = "pope") -> pd.DataFrame:
    """Per-split metrics of paired items (see :func:`pope_items`) under a parser profile.

    Returns
    -------
    pandas.DataFrame
        One row per split (in order of appearance) with ``split, n, tp, fp, tn, fn, unknown, accuracy, precision,
        recall, f1, yes_ratio`` (fractions). ``attrs["mean_f1"]`` holds LLaVA's headline (mean of per-split F1) and
        ``attrs["pooled"]`` the metrics over all rows pooled (VLMEvalKit's ``Overall``).
    """
    rows = []
    for s in dict.fromkeys(items["split"]):
        sub = items[items["split"] == s]
        rows.append({"split": s, **pope_metrics(sub["answer"].tolist(), sub["label"].tolist(), parser)})
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    df.attrs["parser"] = parser
    df.attrs["mean_f1"] = mean_f1(df)
    df.attrs["pooled"] = pope_metrics(items["answer"].tolist(), items["label"].tolist(), parser) if len(items) > 0 else {}
    return df


def mean_f1(scores: pd.DataFrame) -> float:
    """LLaVA's POPE headline: the plain mean of the per-split F1 (NaN if any split's F1 is NaN)."""
    vals = [float(v) for v in scores["f1"]]
    if not vals or any(math.isnan(v) for v in vals):
        return math.nan
    return sum(vals) / len(vals)


def evaluate_pope(questions: PathLike, answers: PathLike, labels: Optional[PathLike] = None, *, parser: str = "pope",
                  split: Optional[str] = None, allow_missing: bool = False) -> pd.DataFrame:
    """Load, pair and score a POPE run; see :func:`pope_items` and :func:`score_pope`."""
    items = pope_items(questions, answers, labels, split=split, parser=parser, allow_missing=allow_missing)
    return score_pope(items, parser)


def pope_summary(scores: pd.DataFrame, keys: Sequence[str] = ("accuracy", "precision", "recall", "f1", "yes_ratio", "n",
                                                               "tp", "fp", "tn", "fn", "unknown")) -> Dict[str, Any]:
    """JSON-ready summary ``{"splits": {NAME: {...}}, "mean_f1": float, "pooled": {...}, "parser": str}``."""
    splits = {str(r["split"]): {k: _num(r[k]) for k in keys} for _, r in scores.iterrows()}
    pooled = {k: _num(v) for k, v in scores.attrs.get("pooled", {}).items() if k in keys}
    return {"splits": splits, "mean_f1": _num(scores.attrs.get("mean_f1", mean_f1(scores))), "pooled": pooled,
            "parser": scores.attrs.get("parser")}


def _py(v: Any) -> Any:
    """A numpy scalar as the plain Python value (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _num(v: Any) -> Any:
    """numpy scalars -> plain Python numbers (NaN stays a float; the CLI writes it as null)."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v
