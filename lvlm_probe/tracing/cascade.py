"""The cause cascade: evidence per error → a :class:`Diagnosis` (level, stage, a score per cause).

Rules, tried in order; the first that holds names the stage (every rule that holds is listed in
``causes``, so co-occurring causes stay visible):

1. **decoding** (inference): under a sampled decoding, the emitted token was not the model's greedy choice
   (``rank > 1``), or an earlier sampled token already left the greedy path (``deviation_step <= step``; an
   omission counts when any token did). Greedy decoding would not have produced this text.
2. **encoder** (model): a probe on the encoder output does not recover the true value of this object
   (``enc_p_true < probe_threshold``). The fact never reached the rest of the model. Rules 2, 3 and 7 never fire
   on a false relation the model gets right when asked the direct question about the same image (``qa_truth == 1``
   and ``qa_claim == 0``, :mod:`lvlm_probe.tracing.ask`): then the relation did reach the LLM.
3. **projector** (model): the encoder probe recovers it but the projector-output probe does not (and falls at
   least ``probe_drop`` below it).
4. **prior** (data): the training statistics support the claim given its context
   (``prior_train >= prior_threshold`` and ``prior_lift >= lift_threshold``) and either the claim survives
   removing the image (``max(p_noimg, p_knock) >= survive_ratio * p_emit``: a language prior) or its context is
   in the image (``context_in_image``: the co-occurring class, the object whose attribute it is, the related
   pair), so the image itself elicits the prior (a visual co-occurrence or a class-conditioned colour). Stage:
   co-occurrence (object), attribute prior or relation prior.
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
8. **displaced** (after the others, across an item's errors, :func:`displaced`): an omitted object no other rule
   explains, whose caption still names as many objects as the scene holds beside hallucinated objects that all got
   one stage, gets that stage: the hallucination took its place.
9. otherwise **undetermined**: no rule holds; the error is not forced into a cause.

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
from typing import Any, Callable

import numpy as np
import pandas as pd

from lvlm_probe.schema import DIAGNOSIS_COLUMNS, LEVEL_OF, PRIOR_STAGE, STAGES, UNDETERMINED, score_column

# the shared names (one spelling per stage) live in lvlm_probe.schema and are re-exported here
__all__ = ["DIAGNOSIS_COLUMNS", "LEVEL_OF", "PRIOR_STAGE", "RULES", "STAGES", "Diagnosis", "Rule", "Thresholds",
           "balanced_accuracy", "cascade", "diagnose_error", "displaced", "rule_holds", "score_column", "summarize"]


@dataclass(frozen=True)
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
        The model does not use the image when the median ``|log p(y | image) - log p(y | no image)|`` of its
        correct claims (``ref_pmi``, nats) is at or below this; without a reference set, the same bound on the
        token's own ``|pmi_img|`` and on the item's ``img_use``.
    pmi_quantile : float
        With a reference set: a token ignores the image when its ``|pmi_img|`` is at or below this quantile of
        the model's correct claims of its attribute or kind (``q_pmi``); an item ignores it when its ``img_use`` is
        at or below this quantile of the items with a correct claim (``q_use``).
    probe_quantile : float
        A relation claim's encoder probe verdict also needs ``q_enc`` (its quantile among the correct relation
        claims) at or below this: the pair probe reads many correct relations below ``probe_threshold`` too.
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
    pmi_quantile: float = 0.1
    probe_quantile: float = 0.1

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
        The probability that the chosen stage is right (:mod:`lvlm_probe.tracing.calibration`; NaN when
        undetermined).
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


@dataclass(frozen=True)
class Rule:
    """One cascade rule: the stage it names, the evidence it needs, its test and its sentence.

    A rule is tried only when every feature in ``needs`` is measured (not NaN): a missing feature is no
    evidence, so e.g. the token rules never fire for an omitted object, which has no token.
    """

    stage: str
    needs: tuple[str, ...]
    test: Callable[[dict, Thresholds], bool]
    text: Callable[[dict, Thresholds], str]


def _features(ev: dict[str, Any], th: Thresholds) -> dict[str, Any]:
    """The numbers the rules read, as floats (NaN when missing), plus derived quantities."""
    f: dict[str, Any] = {k: _f(ev.get(k)) for k in (
        "rank", "enc_p_true", "proj_p_true", "p_emit", "p_noimg", "pmi_img", "prior_train", "prior_lift",
        "pos_quantile", "deviation_step", "step", "img_use", "p_knock", "p_truth", "n_mentions", "n_scene_objects",
        "q_pmi", "q_use", "q_enc", "ref_pmi", "context_in_image", "qa_truth", "qa_claim")}
    f["sampled"] = bool(ev.get("sampled")) if ev.get("sampled") is not None else False
    f["kind"], f["polarity"] = ev.get("kind"), ev.get("polarity")
    f["pt"] = th.object_probe_threshold if f["kind"] == "object" else th.probe_threshold
    free = [x for x in (f["p_noimg"], f["p_knock"]) if _ok(x)]
    f["p_free"] = max(free) if free else float("nan")
    f["omitted_no_token"] = f["polarity"] == "omitted" and not _ok(f["p_emit"])
    for k in ("greedy_token", "prior_context", "ordinal"):
        f[k] = ev.get(k)
    return f


def _answers_right(f: dict) -> bool:
    """Asked directly about the same image, the model says "yes" to every true relation and "no" to the claimed
    one (``qa_truth == 1``, ``qa_claim == 0``; :mod:`lvlm_probe.tracing.ask`): the fact reached the LLM."""
    return f["qa_truth"] == 1.0 and f["qa_claim"] == 0.0


def _encoder_lost(f: dict, th: Thresholds) -> bool:
    """The encoder probe does not recover the true value: ``enc_p_true < pt``; for a relation claim with a
    reference set, also ``q_enc <= probe_quantile`` (the pair probe reads many correct relations below ``pt``).
    Never when the model answers the direct question right (:func:`_answers_right`)."""
    if _answers_right(f) or not f["enc_p_true"] < f["pt"]:
        return False
    if f["kind"] == "relation" and _ok(f["q_enc"]):
        return f["q_enc"] <= th.probe_quantile
    return True


def _derailed(f: dict) -> bool:
    """An earlier sampled token left the greedy path (an omission, with no step, counts for any deviation)."""
    dev, step = f["deviation_step"], f["step"]
    return dev >= 0 and (not _ok(step) or dev <= step)


def _survives(f: dict, th: Thresholds) -> bool:
    """The claim survives without the image: ``max(p_noimg, p_knock) >= survive_ratio * p_emit``."""
    return f["p_free"] >= th.survive_ratio * f["p_emit"]


def _context_seen(f: dict) -> bool:
    """The claim's training context (``prior_context``: the co-occurring class, the object of an attribute, the
    pair of a relation) is in the image."""
    return _ok(f["context_in_image"]) and f["context_in_image"] == 1.0


def _token_ignores(f: dict, th: Thresholds) -> bool:
    """This token barely depends on the image: its ``|pmi_img|`` is at or below the ``pmi_quantile`` of the
    model's correct claims (``q_pmi``), or the model ignores the image on its correct claims (``ref_pmi``) and this
    token as much (both at most ``fusion_pmi`` nats); without a reference set, ``|pmi_img| <= fusion_pmi``."""
    small = abs(f["pmi_img"]) <= th.fusion_pmi
    if _ok(f["q_pmi"]):
        return f["q_pmi"] <= th.pmi_quantile or (small and _ok(f["ref_pmi"]) and f["ref_pmi"] <= th.fusion_pmi)
    return small


def _item_ignores(f: dict, th: Thresholds) -> bool:
    """The item's generation barely depends on the image: the model ignores it on its correct claims too
    (``ref_pmi <= fusion_pmi``) or this item's ``img_use`` is at or below the ``pmi_quantile`` of the items with a
    correct claim (``q_use``); without a reference set, ``img_use <= fusion_pmi``."""
    if _ok(f["ref_pmi"]):
        return f["ref_pmi"] <= th.fusion_pmi or (_ok(f["q_use"]) and f["q_use"] <= th.pmi_quantile)
    return f["img_use"] <= th.fusion_pmi


def _usage_text(f: dict, th: Thresholds) -> str:
    """The numbers behind the usage tests, in words (a missing number is not quoted)."""
    parts = []
    if _ok(f["pmi_img"]):
        q = f" (quantile {f['q_pmi']:.2f} of the correct claims')" if _ok(f["q_pmi"]) else ""
        parts.append(f"of this token by {f['pmi_img']:+.2f}{q}")
    if _ok(f["ref_pmi"]):
        parts.append(f"of the model's correct claims by {f['ref_pmi']:.2f} nats (median |.|)")
    parts.append(f"of the item's generated tokens by {f['img_use']:.2f} nats (median |.|)"
                 + ("" if _ok(f["ref_pmi"]) else f" <= {th.fusion_pmi}"))
    return "a noise image changes log p " + ", ".join(parts)


def _covered(f: dict) -> bool:
    """An omission in a caption that named as many objects as the scene holds did not run out of length."""
    return (f["omitted_no_token"] and _ok(f["n_mentions"]) and _ok(f["n_scene_objects"])
            and f["n_mentions"] >= f["n_scene_objects"])


#: The cascade's rules in the order they are tried; ``"prior"`` names the kind's prior stage (``PRIOR_STAGE``).
RULES: tuple[Rule, ...] = (
    Rule("decoding", ("rank",), lambda f, th: f["sampled"] and f["rank"] > 1,
         lambda f, th: f"sampled token of greedy rank {f['rank']:.0f} (greedy: {f['greedy_token']!r})"),
    Rule("decoding", ("deviation_step",), lambda f, th: f["sampled"] and _derailed(f),
         lambda f, th: f"a sampled non-greedy token at step {f['deviation_step']:.0f} derailed the text before this "
                       "error"),
    Rule("encoder", ("enc_p_true",), lambda f, th: _encoder_lost(f, th),
         lambda f, th: f"encoder probe gives the true value p={f['enc_p_true']:.2f} < {f['pt']}"
                       + (f" (quantile {f['q_enc']:.2f} of the correct relations')"
                          if f["kind"] == "relation" and _ok(f["q_enc"]) else "")),
    Rule("projector", ("enc_p_true", "proj_p_true"),
         lambda f, th: (f["enc_p_true"] >= f["pt"] and f["proj_p_true"] < f["pt"]
                        and f["enc_p_true"] - f["proj_p_true"] >= th.probe_drop and not _answers_right(f)),
         lambda f, th: f"encoder probe p={f['enc_p_true']:.2f} but projector probe p={f['proj_p_true']:.2f} "
                       f"< {f['pt']}"),
    Rule("prior", ("prior_train", "prior_lift", "p_emit", "p_free"),
         lambda f, th: (f["prior_train"] >= th.prior_threshold and f["prior_lift"] >= th.lift_threshold
                        and (_survives(f, th) or _context_seen(f))),
         lambda f, th: f"P_train={f['prior_train']:.2f} (lift {f['prior_lift']:.1f}) given {f['prior_context']!r}; "
                       f"image-free p={f['p_free']:.2f} vs p={f['p_emit']:.2f}"
                       + ("" if _survives(f, th) else f"; the image shows its context "
                                                        f"{f['prior_context']!r}")),
    Rule("long generation", ("pos_quantile",),
         lambda f, th: f["pos_quantile"] >= th.drift_quantile and not _covered(f),
         lambda f, th: f"object position {f['ordinal']} is beyond {f['pos_quantile']:.0%} of training captions"),
    Rule("llm fusion", ("pmi_img", "img_use"), lambda f, th: _token_ignores(f, th) and _item_ignores(f, th),
         lambda f, th: f"the model ignores the image: {_usage_text(f, th)}"),
    Rule("llm fusion", ("img_use",), lambda f, th: f["omitted_no_token"] and _item_ignores(f, th),
         lambda f, th: f"the model ignores the image: {_usage_text(f, th)}; the omitted object has no token"),
)


def rule_stage(rule: Rule, kind: Any) -> str:
    """The stage a rule names for an error of ``kind`` (the prior rule names the kind's prior stage)."""
    return PRIOR_STAGE.get(kind, "cooccurrence") if rule.stage == "prior" else rule.stage


def rule_holds(rule: Rule, f: dict[str, Any], th: Thresholds) -> bool:
    """Whether ``rule`` fires on features ``f``: every needed feature measured, and its test true."""
    return all(_ok(f[k]) for k in rule.needs) and bool(rule.test(f, th))


def _undelivered(f: dict, th: Thresholds) -> tuple[bool, str]:
    """Rule 7 (projector, fact not delivered); tried only when no other rule holds."""
    enc, use, pmi, p, ptrue = f["enc_p_true"], f["img_use"], f["pmi_img"], f["p_emit"], f["p_truth"]
    ignores = _ok(pmi) and _token_ignores(f, th)
    undecided = _ok(p) and _ok(ptrue) and ptrue > 0 and p > 0 and abs(math.log(p) - math.log(ptrue)) <= th.undecided
    holds = ((ignores or undecided) and _ok(use) and not _item_ignores(f, th) and _ok(enc) and enc >= f["pt"]
             and not _answers_right(f))
    pmi_txt = f"noise-image PMI {pmi:+.2f}; " if _ok(pmi) else ""
    truth_txt = f"p={p:.2f} vs p(true)={ptrue:.2f}" if undecided else f"p={p:.2f}"
    return holds, (f"the encoder decodes the true value (p={enc:.2f}) and the model uses the image for its other "
                   f"words ({use:.2f} nats) but not for this word ({pmi_txt}{truth_txt}): the fact is not delivered "
                   "to the LLM")


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x))) if _ok(x) else 0.0


def _scores(f: dict, prior_stage: str, decoding: bool) -> dict[str, float]:
    """A score in [0, 1] per stage that grades its rule's evidence independently of the cascade order."""
    enc, proj, q, pmi, use, p, p_free = (f["enc_p_true"], f["proj_p_true"], f["pos_quantile"], f["pmi_img"],
                                         f["img_use"], f["p_emit"], f["p_free"])
    front = 0.0 if _answers_right(f) else 1.0  # the fact reached the LLM: no front-end loss
    scores = {
        "decoding": 1.0 if decoding else 0.0,
        "encoder": front * _clip(1.0 - enc) if _ok(enc) else 0.0,
        "projector": front * _clip(enc * (1.0 - proj)) if _ok(enc) and _ok(proj) else 0.0,
        "cooccurrence": 0.0, "attribute prior": 0.0, "relation prior": 0.0,
        "long generation": _clip((q - 0.5) / 0.5) if _ok(q) else 0.0,
        "llm fusion": _clip(math.exp(-abs(pmi)) * math.exp(-use)) if _ok(pmi) and _ok(use) else 0.0,
    }
    if _ok(f["prior_train"]):  # the same image-free estimate as the rule: max(p_noimg, p_knock)
        free = min(1.0, p_free / p) if _ok(p) and _ok(p_free) and p > 0 else 0.5
        scores[prior_stage] = _clip(f["prior_train"] * (1.0 if _context_seen(f) else free))
    return scores


def diagnose_error(ev: dict[str, Any], th: Thresholds | None = None) -> Diagnosis:
    """Run the cascade on one evidence row (a dict with :data:`~lvlm_probe.schema.EVIDENCE_COLUMNS`)."""
    th = th or Thresholds()
    f = _features(ev, th)
    prior_stage = PRIOR_STAGE.get(f["kind"], "cooccurrence")
    fired: dict[str, str] = {}  # stage -> the sentence of the first of its rules that holds, in cascade order
    for rule in RULES:
        stage = rule_stage(rule, f["kind"])
        if stage not in fired and rule_holds(rule, f, th):
            fired[stage] = rule.text(f, th)
    scores = _scores(f, prior_stage, "decoding" in fired)
    if not fired:
        holds, text = _undelivered(f, th)
        if holds:
            fired["projector"] = text
            scores["projector"] = max(scores["projector"], _clip(f["enc_p_true"] * (1.0 - math.exp(-f["img_use"]))))
    causes = list(fired)
    if causes:
        stage, rule = causes[0], fired[causes[0]]
    else:
        stage, rule = UNDETERMINED, "no rule holds"
    if _answers_right(f):
        rule += "; asked directly, the model answers the true relation, so encoder and projector did not lose it"
    from lvlm_probe.tracing.calibration import shipped_calibrator

    conf = shipped_calibrator().probability(stage, scores, len(causes))
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
        row = {"error_id": rec.get("error_id"), "item_id": rec.get("item_id"),
               "kind": rec.get("kind"), "polarity": rec.get("polarity"), "claimed": rec.get("claimed"),
               "truth": rec.get("truth"), "level": d.level, "stage": d.stage, "confidence": d.confidence,
               "causes": "+".join(d.causes), "rule": d.rule}
        row.update({score_column(s): d.scores.get(s, 0.0) for s in STAGES})
        rows.append(row)
    cols = list(DIAGNOSIS_COLUMNS) + [score_column(s) for s in STAGES]
    out = pd.DataFrame(rows, columns=cols)
    extra = evidence.drop(columns=[c for c in evidence.columns if c in out.columns], errors="ignore")
    return displaced(pd.concat([out.reset_index(drop=True), extra.reset_index(drop=True)], axis=1))


def displaced(diagnoses: pd.DataFrame) -> pd.DataFrame:
    """Rule 8: an undetermined omission that a hallucination took the place of gets the hallucination's stage.

    An object a caption leaves out is *displaced* when the caption still names as many objects as the scene holds
    (``n_mentions >= n_scene_objects``), the same caption names at least as many hallucinated objects as it omits,
    and every one of them has the same determined stage: the model filled the object's slot with the
    hallucination (``"a small orange square"`` where the scene holds a small orange cross), so one cause made
    both errors. Only rows no other rule explained change; the stage's score is the hallucination's, and the
    confidence is computed from it as for any diagnosis. Needs the item's other errors, so :func:`cascade` runs it
    and :func:`diagnose_error` (one row) does not.
    """
    if not len(diagnoses) or not {"n_mentions", "n_scene_objects"} <= set(diagnoses.columns):
        return diagnoses
    from lvlm_probe.tracing.calibration import shipped_calibrator

    out = diagnoses.copy()
    objects = out[out.kind.eq("object")]
    for _, g in objects.groupby(objects.item_id.astype(str), sort=False):
        hal, omi = g[g.polarity.eq("hallucinated")], g[g.polarity.eq("omitted") & g.stage.eq(UNDETERMINED)]
        stages = set(hal.stage)
        n_m, n_s = _f(g.n_mentions.iloc[0]), _f(g.n_scene_objects.iloc[0])
        if not len(omi) or len(hal) < len(omi) or len(stages) != 1 or UNDETERMINED in stages or not n_m >= n_s:
            continue
        stage = stages.pop()
        col = score_column(stage)
        score, names = float(hal[col].min()), ", ".join(f"{c!r}" for c in dict.fromkeys(hal.claimed.astype(str)))
        for i in omi.index:
            scores = {s: float(out.at[i, score_column(s)]) for s in STAGES}
            scores[stage] = score
            out.loc[i, [col, "stage", "level", "causes"]] = [score, stage, LEVEL_OF[stage], stage]
            out.at[i, "rule"] = (f"displaced: the caption names {n_m:.0f} objects for the scene's {n_s:.0f}; the "
                                 f"hallucinated {names} ({stage}) took this object's place")
            out.at[i, "confidence"] = shipped_calibrator().probability(stage, scores, 1)
    return out


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
