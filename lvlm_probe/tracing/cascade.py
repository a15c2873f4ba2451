"""The cause cascade: evidence per error → a :class:`Diagnosis` (level, stage, a score per cause).

Rules, tried in order; the first that holds names the stage (every rule that holds is listed in
``causes``, so co-occurring causes stay visible):

1. **decoding** (inference): under a sampled decoding, the emitted token was not the model's greedy choice
   (``rank > 1``), or an earlier sampled token already left the greedy path (``deviation_step <= step``; an
   omission counts when any token did). Greedy decoding would not have produced this text.
2. **encoder** (model): a probe on the encoder output does not recover the true value of this object
   (``enc_p_true < probe_threshold``). The fact never reached the rest of the model.
3. **projector** (model): the encoder probe recovers it but the projector-output probe does not (and falls at
   least ``probe_drop`` below it).
4. **prior** (data): the training statistics support the claim given its context
   (``prior_train >= prior_threshold`` and ``prior_lift >= lift_threshold``) and the claim survives removing
   the image (``p_noimg >= survive_ratio * p_emit``). Stage: co-occurrence (object), attribute prior or
   relation prior.
5. **long generation** (inference): the error sits at an object position beyond what the training captions
   reach (``pos_quantile >= drift_quantile``). An omitted object counts only when the caption stopped early:
   it names fewer objects than the scene holds (``n_mentions < n_scene_objects``).
6. **llm fusion** (model): the model does not use the image: replacing it by noise changes the emitted token's
   log-probability (``|pmi_img|``) and the median over all its generated tokens (``img_use``) by at most
   ``fusion_pmi`` nats (an omitted object, which has no token, needs only the latter).
7. **projector, fact not delivered** (model): the encoder decodes the true value, the model uses the image
   for its other words (``img_use > fusion_pmi``) but this word ignores it (``|pmi_img| <= fusion_pmi``) or the
   LLM is undecided between the claimed and the true value (``|log p_emit - log p_truth| <= undecided``), and no
   prior or position explains the claim: the fact did not reach the LLM in a usable form. This is the
   behavioural form of rule 3 for when a linear probe at the projector output still reads the fact (a
   nonlinear residue the LLM does not use).
8. otherwise **undetermined**: no rule holds; the error is not forced into a cause.

Why the order differs from "encoder → projector → usage → prior → inference" in the design notes: an error
driven by a training prior also ignores the image, so the usage test alone cannot tell P1/P2 from P6;
the prior rule needs positive evidence from the training statistics, so it runs first, and usage names
visual neglect only when no prior explains the claim. Decoding runs first because a non-greedy token is
decisive on its own. Omitted objects have no token: rules 1, 4 and 6 need a token and do not fire for them.

Each cause also gets a score in [0, 1] (``score_<stage>``) that grades its rule's evidence, independent of
the order, so several causes can be compared.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

LEVEL_OF: dict[str, str] = {
    "decoding": "inference", "long generation": "inference", "encoder": "model", "projector": "model",
    "llm fusion": "model", "cooccurrence": "data", "attribute prior": "data", "relation prior": "data",
    "undetermined": "undetermined",
}
STAGES: tuple[str, ...] = ("encoder", "projector", "llm fusion", "cooccurrence", "attribute prior",
                           "relation prior", "decoding", "long generation")
PRIOR_STAGE: dict[str, str] = {"object": "cooccurrence", "attribute": "attribute prior", "relation": "relation prior"}
#: Diagnosis frame columns (plus one ``score_<stage>`` column per stage, spaces as underscores).
DIAGNOSIS_COLUMNS: tuple[str, ...] = ("error_id", "item_id", "kind", "polarity", "claimed", "truth", "level",
                                      "stage", "confidence", "causes", "rule")


def score_column(stage: str) -> str:
    """``score_<stage>`` with spaces as underscores."""
    return "score_" + stage.replace(" ", "_")


@dataclass
class Thresholds:
    """Cascade thresholds (defaults set on the organism zoo; see docs/cascade.md).

    Attributes
    ----------
    probe_threshold : float
        A probe "recovers" the true value when it gives it at least this probability.
    object_probe_threshold : float
        The same for object errors, whose verdict is the least sure of the scene's objects (a harsher statistic).
    probe_drop : float
        The projector rule also needs the projector probe to fall this much below the encoder probe.
    prior_threshold, lift_threshold : float
        Minimum training probability of the claim in context and its lift over the no-context baseline.
    survive_ratio : float
        The claim survives removing the image when ``max(p_noimg, p_knock) >= survive_ratio * p_emit``.
    drift_quantile : float
        Positions at or beyond this quantile of training caption lengths count as beyond training.
    undecided : float
        The LLM is undecided between the claimed and the true value when their log-probabilities differ by at
        most this (nats).
    fusion_pmi : float
        ``|log p(y | image) - log p(y | no image)|`` at or below this (nats) means the image was not used.
    """

    probe_threshold: float = 0.8
    object_probe_threshold: float = 0.6
    probe_drop: float = 0.2
    prior_threshold: float = 0.5
    lift_threshold: float = 1.5
    survive_ratio: float = 0.5
    drift_quantile: float = 0.95
    fusion_pmi: float = 1.0
    undecided: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Diagnosis:
    """The diagnosis of one error.

    Attributes
    ----------
    level : {"data", "model", "inference", "undetermined"}
    stage : str
        One of :data:`STAGES` or ``"undetermined"``.
    confidence : float
        The score of the chosen stage (NaN when undetermined).
    scores : dict
        Stage → score in [0, 1].
    causes : list of str
        Every stage whose rule holds, in cascade order.
    rule : str
        The rule that decided, in words, with the numbers.
    evidence : dict
        The evidence row behind it.
    """

    level: str
    stage: str
    confidence: float
    scores: dict[str, float]
    causes: list[str]
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _f(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _ok(x: float) -> bool:
    return not math.isnan(x)


def diagnose_error(ev: dict[str, Any], th: Thresholds | None = None) -> Diagnosis:
    """Run the cascade on one evidence row (a dict with :data:`~lvlm_probe.tracing.evidence.EVIDENCE_COLUMNS`)."""
    th = th or Thresholds()
    kind = ev.get("kind")
    rank, enc, proj = _f(ev.get("rank")), _f(ev.get("enc_p_true")), _f(ev.get("proj_p_true"))
    p, p0, pmi = _f(ev.get("p_emit")), _f(ev.get("p_noimg")), _f(ev.get("pmi_img"))
    prior, lift, q = _f(ev.get("prior_train")), _f(ev.get("prior_lift")), _f(ev.get("pos_quantile"))
    sampled = bool(ev.get("sampled")) if ev.get("sampled") is not None else False
    prior_stage = PRIOR_STAGE.get(kind, "cooccurrence")

    dev, step = _f(ev.get("deviation_step")), _f(ev.get("step"))
    use = _f(ev.get("img_use"))
    pt = th.object_probe_threshold if kind == "object" else th.probe_threshold
    holds: dict[str, tuple[bool, str]] = {}
    derailed = _ok(dev) and dev >= 0 and (not _ok(step) or dev <= step)
    holds["decoding"] = (sampled and ((_ok(rank) and rank > 1) or derailed),
                         f"sampled token of greedy rank {rank:.0f} (greedy: {ev.get('greedy_token')!r})"
                         if _ok(rank) and rank > 1 else f"a sampled non-greedy token at step {dev:.0f} derailed the "
                         "text before this error")
    holds["encoder"] = (_ok(enc) and enc < pt, f"encoder probe gives the true value p={enc:.2f} < {pt}")
    holds["projector"] = (_ok(enc) and enc >= pt and _ok(proj) and proj < pt and enc - proj >= th.probe_drop,
                          f"encoder probe p={enc:.2f} but projector probe p={proj:.2f} < {pt}")
    pk, ptrue = _f(ev.get("p_knock")), _f(ev.get("p_truth"))
    p_free = max(x for x in (p0, pk, float("-inf")) if _ok(x))
    survives = _ok(p) and p_free > float("-inf") and p_free >= th.survive_ratio * p
    holds[prior_stage] = (_ok(prior) and prior >= th.prior_threshold and _ok(lift) and lift >= th.lift_threshold
                          and survives,
                          f"P_train={prior:.2f} (lift {lift:.1f}) given {ev.get('prior_context')!r}; image-free "
                          f"p={p_free:.2f} vs p={p:.2f}")
    ignores = _ok(pmi) and abs(pmi) <= th.fusion_pmi
    omitted = ev.get("polarity") == "omitted" and not _ok(p)
    # an omission is a length effect only when the caption stopped before it had named as many objects as the
    # scene holds; a caption as long as the scene that names other objects did not run out of length
    n_men, n_obj = _f(ev.get("n_mentions")), _f(ev.get("n_scene_objects"))
    covered = omitted and _ok(n_men) and _ok(n_obj) and n_men >= n_obj
    holds["long generation"] = (_ok(q) and q >= th.drift_quantile and not covered,
                                f"object position {ev.get('ordinal')} is beyond {q:.0%} of training captions")
    holds["llm fusion"] = ((ignores or omitted) and _ok(use) and use <= th.fusion_pmi,
                           f"the model ignores the image: a noise image changes log p of this token by {pmi:+.2f} "
                           f"and of its generated tokens by {use:.2f} nats (median |.|) <= {th.fusion_pmi}")
    undecided = _ok(p) and _ok(ptrue) and ptrue > 0 and abs(math.log(p) - math.log(ptrue)) <= th.undecided
    undelivered = ((ignores or undecided) and _ok(use) and use > th.fusion_pmi and _ok(enc) and enc >= pt)
    undelivered_rule = (f"the encoder decodes the true value (p={enc:.2f}) and the model uses the image for its "
                        f"other words ({use:.2f} nats) but not for this word (noise-image PMI {pmi:+.2f}; p={p:.2f} vs "
                        f"p(true)={ptrue:.2f}): the fact is not delivered to the LLM")

    def clip(x: float) -> float:
        return float(min(1.0, max(0.0, x))) if _ok(x) else 0.0

    scores = {
        "decoding": 1.0 if holds["decoding"][0] else 0.0,
        "encoder": clip(1.0 - enc) if _ok(enc) else 0.0,
        "projector": clip(enc * (1.0 - proj)) if _ok(enc) and _ok(proj) else 0.0,
        "cooccurrence": 0.0, "attribute prior": 0.0, "relation prior": 0.0,
        "long generation": clip((q - 0.5) / 0.5) if _ok(q) else 0.0,
        "llm fusion": clip(math.exp(-abs(pmi)) * math.exp(-use)) if _ok(pmi) and _ok(use) else 0.0,
    }
    if _ok(prior):
        scores[prior_stage] = clip(prior * (min(1.0, p0 / p) if _ok(p) and _ok(p0) and p > 0 else 0.5))
    order = ["decoding", "encoder", "projector", prior_stage, "long generation", "llm fusion"]
    causes = [s for s in order if holds[s][0]]
    if not causes and undelivered:
        causes = ["projector"]
        holds["projector"] = (True, undelivered_rule)
        scores["projector"] = max(scores["projector"], clip(enc * (1.0 - math.exp(-use))))
    if causes:
        stage = causes[0]
        rule = holds[stage][1]
        conf = scores[stage]
    else:
        stage, rule, conf = "undetermined", "no rule holds", float("nan")
    return Diagnosis(LEVEL_OF[stage], stage, conf, scores, causes, rule, dict(ev))


def cascade(evidence: pd.DataFrame, thresholds: Thresholds | None = None) -> pd.DataFrame:
    """Diagnose every error of an evidence frame.

    Parameters
    ----------
    evidence : DataFrame
        One row per error (:func:`~lvlm_probe.tracing.diagnose` builds it).
    thresholds : Thresholds, optional

    Returns
    -------
    DataFrame
        :data:`DIAGNOSIS_COLUMNS` plus ``score_<stage>`` per stage plus the evidence columns.
    """
    rows = []
    for rec in evidence.to_dict(orient="records"):
        d = diagnose_error(rec, thresholds)
        row = {"error_id": rec.get("error_id"), "item_id": rec.get("item_id", rec.get("item")),
               "kind": rec.get("kind"), "polarity": rec.get("polarity"), "claimed": rec.get("claimed"),
               "truth": rec.get("truth"), "level": d.level, "stage": d.stage, "confidence": d.confidence,
               "causes": "+".join(d.causes), "rule": d.rule}
        row.update({score_column(s): d.scores.get(s, 0.0) for s in STAGES})
        rows.append(row)
    cols = list(DIAGNOSIS_COLUMNS) + [score_column(s) for s in STAGES]
    out = pd.DataFrame(rows, columns=cols)
    extra = evidence.drop(columns=[c for c in evidence.columns if c in out.columns], errors="ignore")
    return pd.concat([out.reset_index(drop=True), extra.reset_index(drop=True)], axis=1)


def summarize(diagnoses: pd.DataFrame) -> pd.DataFrame:
    """Counts and shares of errors per (kind, level, stage)."""
    if not len(diagnoses):
        return pd.DataFrame(columns=["kind", "level", "stage", "n", "share"])
    g = diagnoses.groupby(["kind", "level", "stage"]).size().rename("n").reset_index()
    g["share"] = g.n / g.groupby("kind").n.transform("sum")
    return g.sort_values(["kind", "n"], ascending=[True, False]).reset_index(drop=True)


def balanced_accuracy(planted: np.ndarray, diagnosed: np.ndarray) -> float:
    """Mean recall over the planted classes."""
    planted, diagnosed = np.asarray(planted), np.asarray(diagnosed)
    recalls = [float(np.mean(diagnosed[planted == c] == c)) for c in np.unique(planted)]
    return float(np.mean(recalls)) if recalls else float("nan")
