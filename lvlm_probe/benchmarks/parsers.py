"""Named yes/no answer parsers and the POPE-style metrics of each codebase, quirks included.

Each profile reproduces one codebase's parsing *and* its way of turning predictions into numbers:

========== ==========================================================================================
profile    original code
========== ==========================================================================================
pope       AoiDragon/POPE ``evaluate.py`` = LLaVA ``llava/eval/eval_pope.py`` (also R-Bench's parser)
opera      shikiw/OPERA ``pope_eval.py`` (``recorder`` + ``print_acc``)
vcd        DAMO-NLP-SG/VCD ``experiments/eval/eval_pope.py``
lmms_eval  EvolvingLMMs-Lab/lmms-eval ``tasks/pope/utils.py``
vlmevalkit open-compass/VLMEvalKit ``YOrN_Extraction`` + ``POPE_rating`` (rule-based, no LLM judge)
========== ==========================================================================================

All code here is written from the documented behaviour (see docs/benchmarks.md for the quirk lists).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Callable, Dict, List, Optional, Sequence

from lvlm_probe.errors import InputError

YES, NO, UNKNOWN = "yes", "no", "unknown"

PROFILES = ("pope", "opera", "vcd", "lmms_eval", "vlmevalkit")


# ----------------------------------------------------------------------------------------------- parsing
def parse_pope(text: str) -> str:
    """POPE / LLaVA rule: first '.'-sentence, commas dropped, split on single spaces; 'No'/'not'/'no' -> no."""
    if "." in text:
        text = text.split(".")[0]
    tokens = text.replace(",", "").split(" ")
    return NO if any(t in ("No", "not", "no") for t in tokens) else YES


def parse_opera(text: str) -> str:
    """OPERA rule: whole text, '.' and ',' deleted, split on single spaces; No/not/no/NO or a token ending "n't" -> no."""
    tokens = text.replace(".", "").replace(",", "").split(" ")
    if any(t in ("No", "not", "no", "NO") for t in tokens) or any(t.endswith("n't") for t in tokens):
        return NO
    return YES


def parse_vcd(text: str, label: str) -> str:
    """VCD rule, which depends on the label: gt yes -> yes iff 'yes' is a substring; gt no -> no iff 'no' is.

    A label other than yes/no (after lower/strip) gives ``"unknown"`` (VCD counts such rows only in the totals).
    """
    ans = text.lower().strip()
    gt = label.lower().strip()
    if gt == YES:
        return YES if "yes" in ans else NO
    if gt == NO:
        return NO if "no" in ans else YES
    return UNKNOWN


def parse_lmms_eval(text: str) -> str:
    """lmms-eval rule: ``text.lower().strip()`` must be exactly 'yes' or 'no'; anything else is neither."""
    pred = text.lower().strip()
    return pred if pred in (YES, NO) else UNKNOWN


# VQA-style punctuation handling used by VLMEvalKit's YOrN_Extraction (facts of that code, re-implemented).
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The original pattern is "(?!<=\d)(\.)(?!\d)": its first group is a (mistyped) look-ahead that always holds at a
# '.', so it removes every '.' not followed by a digit -- and re.UNICODE (=32) is passed as *count*, so only the
# first 32 such periods are removed.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_VQA_PERIOD_COUNT = 32


def vqa_process_punctuation(text: str) -> str:
    """Punctuation normalisation of the VQA evaluation code as used by VLMEvalKit (quirks included)."""
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _VQA_PUNCT:
        # decided on the *input* text for every symbol: stripped when it touches a space (or any d,d occurs)
        if (p + " ") in text or (" " + p) in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_VQA_PERIOD_COUNT)


def parse_vlmevalkit(text: str) -> str:
    """VLMEvalKit ``YOrN_Extraction``: yes iff the word 'yes' occurs and 'no' does not; no iff the reverse."""
    words = vqa_process_punctuation(text.lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return YES
    if has_no and not has_yes:
        return NO
    return UNKNOWN


def parse_answer(text: str, profile: str = "pope", label: Optional[str] = None) -> str:
    """Parse one free-text answer with a named profile.

    Parameters
    ----------
    text
        The model's answer.
    profile
        One of :data:`PROFILES`.
    label
        The ground-truth label; needed by ``vcd`` only (its parsing depends on the label).

    Returns
    -------
    str
        ``"yes"``, ``"no"`` or ``"unknown"`` (only ``vcd``, ``lmms_eval`` and ``vlmevalkit`` return unknown).
    """
    if not isinstance(text, str):
        raise InputError(f"answer should be a string, found {type(text).__name__} ({text!r})")
    if profile == "pope":
        return parse_pope(text)
    if profile == "opera":
        return parse_opera(text)
    if profile == "vcd":
        if label is None:
            raise InputError("the 'vcd' parser depends on the ground-truth label; pass label=")
        return parse_vcd(text, label)
    if profile == "lmms_eval":
        return parse_lmms_eval(text)
    if profile == "vlmevalkit":
        return parse_vlmevalkit(text)
    raise InputError(f"unknown parser profile {profile!r}; choose one of {', '.join(PROFILES)}")


# ----------------------------------------------------------------------------------------------- metrics
def _div(num: float, den: float, what: str, profile: str) -> float:
    """num/den; where the original would raise ZeroDivisionError, warn and return NaN."""
    if den == 0:
        warnings.warn(f"{profile}: {what} has a zero denominator (the original code would raise ZeroDivisionError); "
                      "reporting NaN", RuntimeWarning, stacklevel=3)
        return math.nan
    return num / den


def _f1(p: float, r: float, profile: str) -> float:
    if math.isnan(p) or math.isnan(r):
        return math.nan
    return _div(2 * p * r, p + r, "F1", profile)


def _guarded(num: float, den: float) -> float:
    """lmms-eval / VLMEvalKit style: 0 when the denominator is 0 (no error in the original)."""
    return num / den if den != 0 else 0.0


def pope_metrics(answers: Sequence[str], labels: Sequence[str], profile: str = "pope") -> Dict[str, float]:
    """Score paired answers against labels exactly as the profile's original code does.

    Parameters
    ----------
    answers
        Raw answer texts.
    labels
        Ground-truth labels as written in the benchmark file (``"yes"``/``"no"``; other spellings are handled as
        each original handles them, e.g. ``pope`` scores anything but exactly ``"no"`` as yes).
    profile
        One of :data:`PROFILES`.

    Returns
    -------
    dict
        ``n, tp, fp, tn, fn, unknown, accuracy, precision, recall, f1, yes_ratio`` (fractions in [0, 1];
        NaN where the original would divide by zero).
    """
    if len(answers) != len(labels):
        raise InputError(f"{len(answers)} answers but {len(labels)} labels")
    if profile not in PROFILES:
        raise InputError(f"unknown parser profile {profile!r}; choose one of {', '.join(PROFILES)}")
    score = {"pope": _pope_counts, "opera": _pope_counts, "vcd": _vcd_counts, "lmms_eval": _lmms_eval_counts,
             "vlmevalkit": _vlmevalkit_counts}[profile]
    m = score(list(answers), list(labels), profile)
    return {"n": len(answers), **{k: int(m[k]) for k in ("tp", "fp", "tn", "fn", "unknown")},
            **{k: m[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}}


def _pope_counts(answers: list[str], labels: list[str], profile: str) -> dict:
    """POPE's and OPERA's scoring: anything but the label "no" is a yes label."""
    parse: Callable[[str], str] = parse_pope if profile == "pope" else parse_opera
    tp = fp = tn = fn = n_pred_yes = 0
    for a, lab in zip(answers, labels):
        pred_yes = parse(a) == YES
        gt_yes = lab != "no"  # the originals test label == 'no' only
        n_pred_yes += pred_yes
        tp += pred_yes and gt_yes
        fp += pred_yes and not gt_yes
        tn += (not pred_yes) and (not gt_yes)
        fn += (not pred_yes) and gt_yes
    precision, recall = _div(tp, tp + fp, "precision", profile), _div(tp, tp + fn, "recall", profile)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "unknown": 0, "precision": precision, "recall": recall,
            "f1": _f1(precision, recall, profile), "accuracy": _div(tp + tn, len(answers), "accuracy", profile),
            "yes_ratio": _div(n_pred_yes, len(answers), "yes ratio", profile)}


def _vcd_counts(answers: list[str], labels: list[str], profile: str) -> dict:
    """VCD's scoring: labels that are neither yes nor no count only in the totals."""
    tp = fp = tn = fn = unknown = 0
    for a, lab in zip(answers, labels):
        pred = parse_vcd(a, lab)
        gt = lab.lower().strip()
        if gt == YES:
            tp += pred == YES
            fn += pred == NO
        elif gt == NO:
            tn += pred == NO
            fp += pred == YES
        else:
            unknown += 1
    if unknown:
        warnings.warn(f"vcd: {unknown} labels are neither yes nor no; counted only in the totals, as VCD does",
                      RuntimeWarning, stacklevel=3)
    precision, recall = _div(tp, tp + fp, "precision", profile), _div(tp, tp + fn, "recall", profile)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "unknown": unknown, "precision": precision, "recall": recall,
            "f1": _f1(precision, recall, profile),
            "accuracy": _div(tp + tn, len(answers), "accuracy", profile),  # total includes unknown-label rows
            "yes_ratio": _div(tp + fp, len(answers), "yes ratio", profile)}


def _lmms_eval_counts(answers: list[str], labels: list[str], profile: str) -> dict:
    """lmms-eval's scoring: exact answers, and the yes ratio of the ground truth."""
    tp = fp = tn = fn = unknown = n_gt_yes = n_gt_no = correct = 0
    for a, lab in zip(answers, labels):
        gt = lab.lower().strip()
        if gt not in (YES, NO):
            raise InputError(f"lmms_eval: label {lab!r} is neither yes nor no (lmms-eval asserts this)")
        pred = a.lower().strip()
        correct += pred == gt
        unknown += pred not in (YES, NO)
        n_gt_yes += gt == YES
        n_gt_no += gt == NO
        tp += gt == YES and pred == YES
        fp += gt == NO and pred == YES
        fn += gt == YES and pred == NO
        tn += gt == NO and pred == NO
    precision, recall = _guarded(tp, tp + fp), _guarded(tp, tp + fn)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "unknown": unknown, "precision": precision, "recall": recall,
            "f1": _guarded(2 * precision * recall, precision + recall),
            "accuracy": _div(correct, len(answers), "accuracy", profile),
            "yes_ratio": _guarded(n_gt_yes, n_gt_yes + n_gt_no)}  # sic: from the ground truth


def _vlmevalkit_counts(answers: list[str], labels: list[str], profile: str) -> dict:
    """VLMEvalKit's scoring: an Unknown answer counts as a negative prediction."""
    tp = fp = tn = fn = unknown = n_pred_yes = correct = 0
    for a, lab in zip(answers, labels):
        pred = parse_vlmevalkit(a)
        gt_yes = lab.strip().lower() == YES
        gt = YES if gt_yes else (NO if lab.strip().lower() == NO else lab)
        correct += pred == gt
        unknown += pred == UNKNOWN
        pred_yes = pred == YES
        n_pred_yes += pred_yes
        tp += gt_yes and pred_yes
        fp += (not gt_yes) and pred_yes
        fn += gt_yes and not pred_yes
        tn += (not gt_yes) and not pred_yes
    precision, recall = _guarded(tp, tp + fp), _guarded(tp, tp + fn)
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "unknown": unknown, "precision": precision, "recall": recall,
            "f1": _guarded(2 * precision * recall, precision + recall),
            "accuracy": _div(correct, len(answers), "accuracy", profile),
            "yes_ratio": _div(n_pred_yes, len(answers), "yes ratio", profile)}  # not reported by VLMEvalKit


def predictions(answers: Sequence[str], labels: Sequence[str], profile: str = "pope") -> List[str]:
    """Per-item parsed prediction (``yes``/``no``/``unknown``) under a profile."""
    return [parse_answer(a, profile, label=lab) for a, lab in zip(answers, labels)]
