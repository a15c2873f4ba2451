"""Validation of the cascade on the organism zoo: planted cause vs diagnosed cause on fresh scenes."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lvlm_probe.errors import InputError
from lvlm_probe.organisms.zoo import HOLDOUTS, ZOO, get_spec
from lvlm_probe.schema import LEVEL_OF, STAGES
from lvlm_probe.tracing.cascade import Thresholds, balanced_accuracy

#: The stage each planted organism should be diagnosed with (its spec's component, a schema stage).
PLANTED_STAGE: dict[str, str] = {name: spec.component for name, spec in ZOO.items() if spec.component in STAGES}
#: The same for the hold-out variants (kept out of every tuning step, reported on their own).
HOLDOUT_STAGE: dict[str, str] = {name: spec.component for name, spec in HOLDOUTS.items()}
KEY = ["item_id", "kind", "polarity", "subject", "claimed"]


def _keys(df: pd.DataFrame) -> set:
    if not len(df):
        return set()
    return set(map(tuple, df[KEY].astype(str).itertuples(index=False, name=None)))


def planted_pattern(name: str, d: pd.DataFrame, items: Sequence[Any] | None = None) -> np.ndarray:
    """Which errors show the organism's planted pattern (the behaviour its planted cause produces).

    cooccurrence: a hallucinated ``COOC_B``; attribute_prior: the prior colour claimed for a ``PRIOR_CLASS``
    object; relation_prior: the prior's predicate claimed (in a caption or by a "yes") for its pair where it does not hold;
    encoder_blind: one hue of the blind pair given for the other; projector_bottleneck: a wrong value of
    the dropped attribute; small_object: an omitted object that is ``VANISH_SIZE`` in its item's scene (needs
    ``items``, the judged items); drift: errors at object positions beyond the trained caption length;
    visual_neglect and sampling: every error (the cause has no narrower pattern).
    """
    from lvlm_probe.organisms import zoo as Z

    if not len(d):
        return np.zeros(0, dtype=bool)
    att = d.get("attribute", pd.Series([None] * len(d), index=d.index))
    spec = Z.get_spec(name)
    name = spec.pattern  # a hold-out variant shows its base organism's pattern on its own classes and colours
    if name == "cooccurrence":
        m = (d.kind == "object") & (d.polarity == "hallucinated") & (d.claimed == Z.cooccurrence_factor(spec)[1])
    elif name == "attribute_prior":
        cls, color = Z.prior_factor(spec)
        m = (d.kind == "attribute") & (att == "color") & (d.subject == cls) & (d.claimed == color)
    elif name == "relation_prior":
        a, b, pred = Z.relation_factor(spec)
        obj = d.get("object", pd.Series([None] * len(d), index=d.index))
        m = (d.kind == "relation") & (d.polarity == "hallucinated") & (d.subject == a) & (obj == b) & \
            (d.claimed == pred)
    elif name == "encoder_blind":
        pair = set(Z.BLIND_PAIR)
        m = (d.kind == "attribute") & (att == "color") & d.claimed.isin(pair) & d.truth.isin(pair)
    elif name == "projector_bottleneck":
        m = (d.kind == "attribute") & (att == Z.BOTTLENECK_ATTRIBUTE)
    elif name == "small_object":
        if items is None:
            raise InputError("planted_pattern('small_object', ...) needs the judged items (their scenes give each "
                             "object's size); pass items=")
        sizes = {(str(it.id), o.name): o.attributes.get("size") for it in items for o in it.scene.objects}
        small = [sizes.get((str(i), str(s))) == Z.VANISH_SIZE for i, s in zip(d.item_id, d.subject)]
        m = (d.kind == "object") & (d.polarity == "omitted") & pd.Series(small, index=d.index)
    elif name == "drift":
        m = pd.to_numeric(d.get("ordinal"), errors="coerce") > Z.DRIFT_MAX_OBJECTS
    else:
        m = pd.Series(True, index=d.index)
    return m.fillna(False).to_numpy(dtype=bool)


def planted_errors(name: str, n: int, seed: int, *, thresholds: Thresholds | None = None, clean: Any = None,
                   progress: bool = False, model: Any = None, confirm: bool = False) -> tuple[pd.DataFrame, Any]:
    """Diagnose organism ``name`` on fresh triggering scenes and keep the errors ``clean`` does not make.

    ``model`` (an ``LVLM`` or a path) replaces the shipped checkpoint, e.g. the same organism trained at
    another width; its scenes, planted pattern and planted stage stay those of ``name``. ``confirm``: run each
    diagnosis's confirming intervention (``confirmed``, :mod:`lvlm_probe.tracing.confirm`).

    Returns
    -------
    (DataFrame, DiagnosisReport)
        The diagnoses of the planted errors (``planted_stage``, ``planted_level`` and ``organism`` added) and
        the full report.
    """
    import lvlm_probe as lp
    from lvlm_probe.misalignment import judge_batch
    from lvlm_probe.organisms.check import trigger_set
    from lvlm_probe.tracing import DiagnoseConfig, diagnose

    spec = get_spec(name)
    world = lp.SceneWorld(spec.world, seed=seed)
    items, _ = trigger_set(name, world, n, seed=seed * 1000 + 11)
    items = [it for it in items if not it.id.endswith("-noise")]
    cfg = DiagnoseConfig(thresholds=thresholds or Thresholds(), seed=seed, curve_sites=None, confirm=confirm)
    rep = diagnose(model if model is not None else f"organism:{name}", items, cfg, progress=progress)
    clean = clean or lp.load("organism:clean")
    texts = []
    for k in range(0, len(items), 16):
        chunk = items[k:k + 16]
        g = clean.generate(clean.prepare([i.image for i in chunk], [i.prompt for i in chunk]), max_new_tokens=48)
        texts.extend(g.text)
    clean_err = judge_batch(texts, items=items)
    d = rep.diagnoses  # carries the misalignment columns (item_id, subject, ...) beside the diagnosis
    own = [tuple(map(str, t)) for t in d[KEY].itertuples(index=False, name=None)]
    clean_keys = _keys(clean_err)
    keep = np.array([k not in clean_keys for k in own], dtype=bool) & planted_pattern(name, d, items)
    d = d[keep].copy()
    d["organism"] = name
    d["planted_stage"] = spec.component
    d["planted_level"] = LEVEL_OF[spec.component]
    return d, rep


def _per_organism(errors: pd.DataFrame) -> pd.DataFrame:
    """Per organism: number of planted errors, stage recall and level recall."""
    return errors.groupby("organism").apply(
        lambda g: pd.Series({"n_errors": len(g), "recall": float(np.mean(g.stage == g.planted_stage)),
                             "level_recall": float(np.mean(g.level == g.planted_level))}), include_groups=False)


def planted_cause_benchmark(names: Sequence[str] = tuple(PLANTED_STAGE), *, n: int = 40, seed: int = 101,
                            thresholds: Thresholds | None = None, progress: bool = True,
                            holdouts: Sequence[str] = (), confirm: bool = False) -> dict[str, Any]:
    """Confusion of planted vs diagnosed stage (and level) over the zoo, with balanced accuracy.

    ``confirm``: every diagnosis also runs its confirming intervention, and the confidence reads ``confirmed``
    (:func:`~lvlm_probe.tracing.calibration.confidence_features`).

    Returns
    -------
    dict
        ``errors`` (DataFrame of planted errors with diagnoses), ``confusion`` (planted stage × diagnosed
        stage counts), ``level_confusion``, ``balanced_accuracy`` (over stages), ``level_balanced_accuracy``,
        ``per_organism`` (n errors, recall), ``clean`` (how the clean organism's own errors were diagnosed),
        ``reliability`` and ``ece`` of the confidence: each organism's errors get the confidence of a calibrator
        fitted on the other organisms' errors (``errors.confidence_loo``); ``confidence_auroc``: how well that
        confidence separates right from wrong stages; ``holdout`` (per hold-out variant in ``holdouts``: n errors,
        recall, level recall, with the shipped calibrator's confidence; they take no part in the other numbers)
        and ``holdout_errors``; ``references``: each organism's reference set (its correct claims with their
        evidence, :mod:`lvlm_probe.tracing.reference`).
    """
    from lvlm_probe.tracing.calibration import leave_one_out_confidence, reliability

    import lvlm_probe as lp
    from lvlm_probe.organisms.check import task_items
    from lvlm_probe.tracing import DiagnoseConfig, diagnose

    clean = lp.load("organism:clean")
    frames, refs = [], []
    for name in tqdm(list(names), desc="organisms", disable=not progress):
        d, rep = planted_errors(name, n, seed, thresholds=thresholds, clean=clean, confirm=confirm)
        frames.append(d)
        refs.append(rep.reference.assign(organism=name))
    errors = pd.concat(frames, ignore_index=True)
    errors["confidence_loo"] = leave_one_out_confidence(errors, confirmation=confirm)
    right = (errors.stage == errors.planted_stage).to_numpy()
    rel, ece = reliability(errors.confidence_loo.to_numpy(), right)
    known = errors.confidence_loo.notna().to_numpy()
    from sklearn.metrics import roc_auc_score

    discrimination = (float(roc_auc_score(right[known], errors.confidence_loo[known]))
                      if len(set(right[known])) == 2 else float("nan"))
    conf = pd.crosstab(errors.planted_stage, errors.stage)
    lconf = pd.crosstab(errors.planted_level, errors.level)
    per = _per_organism(errors)
    world = lp.SceneWorld(ZOO["clean"].world, seed=seed)
    citems = task_items(world, max(8, n // 2), seed=seed * 1000 + 7)
    cfg = DiagnoseConfig(thresholds=thresholds or Thresholds(), seed=seed, curve_sites=None)
    crep = diagnose(clean, citems, cfg, progress=False)
    held = []
    for h in tqdm(list(holdouts), desc="hold-out variants", disable=not progress):
        d, rep = planted_errors(h, n, seed, thresholds=thresholds, clean=clean, confirm=confirm)
        held.append(d)
        refs.append(rep.reference.assign(organism=h))
    held_errors = pd.concat(held, ignore_index=True) if held else pd.DataFrame()
    return {
        "holdout": _per_organism(held_errors) if len(held_errors) else pd.DataFrame(), "holdout_errors": held_errors,
        "references": pd.concat(refs, ignore_index=True),
        "errors": errors, "confusion": conf, "level_confusion": lconf,
        "balanced_accuracy": balanced_accuracy(errors.planted_stage.to_numpy(), errors.stage.to_numpy()),
        "level_balanced_accuracy": balanced_accuracy(errors.planted_level.to_numpy(), errors.level.to_numpy()),
        "per_organism": per, "clean": crep.diagnoses.stage.value_counts(), "reliability": rel, "ece": ece,
        "confidence_auroc": discrimination,
    }
