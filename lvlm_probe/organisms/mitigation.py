"""Cause x intervention matrix on the zoo: which intervention fixes which planted cause's errors.

For each organism: generate and judge its default items (:func:`~lvlm_probe.tracing.generate_and_judge`), keep
the **planted errors** (the organism's planted pattern, :func:`~lvlm_probe.organisms.validate.planted_pattern`,
that the clean organism does not make on the same items), re-decode every item under each intervention and
re-judge with the same judge. A planted error is *fixed* when the same claim (item, kind, polarity, subject,
attribute) is no longer misaligned and is still made where it has to be (a question answered, an attribute's
true value stated: :func:`~lvlm_probe.misalignment.claims_kept`); what the intervention breaks elsewhere (new
errors with the planted pattern) counts against it in ``reduction``, and ``effect`` is the reduction beyond the
best control of the row (:func:`matrix_cells`). Methods decode with the organism's own run settings (greedy for
all but ``sampling``); :class:`~lvlm_probe.interventions.Greedy` re-decodes greedily (the "greedy re-decoding" fix).

Items are decoded in groups of one prompt (equal lengths, no padding), so two-branch arithmetic is exact.
Expected pattern: methods.md §9.2 ("Expected mitigation effects"); :data:`INTENDED` names, per cause with one,
the intervention expected to fix it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lvlm_probe.misalignment import claims_kept
from lvlm_probe.organisms.validate import KEY, planted_pattern
from lvlm_probe.organisms.zoo import get_spec
from lvlm_probe.tracing.confirm import CONFIRMING

#: Planted organisms of the matrix (rows).
CAUSES: tuple[str, ...] = ("cooccurrence", "attribute_prior", "relation_prior", "encoder_blind",
                           "projector_bottleneck", "small_object", "visual_neglect", "drift", "sampling")
#: Cause -> the intervention expected to fix it: the confirming intervention of its planted stage
#: (:data:`lvlm_probe.tracing.confirm.CONFIRMING`, one map for both), so the matrix measures what confirmation
#: assumes. Encoder and projector causes have the swap of that part for ``clean``'s (their organisms share
#: ``clean``'s LLM; :func:`swap_interventions`).
INTENDED: dict[str, str] = {c: CONFIRMING[get_spec(c).component] for c in CAUSES
                            if CONFIRMING.get(get_spec(c).component)}
#: Columns of :func:`cause_intervention_matrix`'s ``table``.
MATRIX_COLUMNS = ["cause", "intervention", "n_errors", "n_fixed", "fixed_fraction", "introduced", "reduction",
                  "length_ratio", "seconds"]


def default_interventions() -> dict[str, Any]:
    """The matrix's methods at their paper defaults (tiny-model layer choices resolved per model); the controls
    are :func:`control_interventions`.

    ``project_away`` is a template: its ``words`` are filled per item with the claimed words of its planted errors
    (detect-then-erase, as Jiang et al. use it).
    """
    from lvlm_probe.interventions import ImageFreeContrast, ProjectAway
    from lvlm_probe.tracing.confirm import confirming_interventions

    # the confirming interventions are the same objects confirmation runs (VCD and PAI with the knobs set once on
    # seed 0 for the whole zoo); the rest at the papers' defaults.
    room = confirming_interventions()
    return {"greedy": room["greedy"], "vcd": room["vcd"], "image_free": ImageFreeContrast(), "pai": room["pai"],
            "project_away": ProjectAway(words=("_",)), "early_readout": room["early_readout"],
            "region_restart": room["region_restart"], "verify_objects": room["verify_objects"],
            "verify_relations": room["verify_relations"]}


def swap_interventions(model: Any, clean: Any) -> dict[str, Any]:
    """``swap_encoder`` / ``swap_projector`` with ``clean`` as the reference, for an organism that names ``clean``
    as sharing its LLM (``run_defaults["reference"]``); ``{}`` for every other organism, whose LLM is its own (a
    swap there would feed its LLM a front end it never read: those cells stay empty)."""
    from lvlm_probe.tracing.confirm import confirming_interventions

    if (getattr(model, "run_defaults", None) or {}).get("reference") != "organism:clean":
        return {}
    room = confirming_interventions(clean)
    return {k: room[k] for k in ("swap_encoder", "swap_projector")}


def _by_prompt(items: Sequence[Any]) -> list[list[Any]]:
    groups: dict[str, list[Any]] = {}
    for it in items:
        groups.setdefault(it.prompt, []).append(it)
    return list(groups.values())


def _key_list(errors: pd.DataFrame, cols: Sequence[str] = tuple(KEY)) -> list[tuple[str, ...]]:
    """The claim key of each error (missing values -> "", so None and NaN agree)."""
    if not len(errors):
        return []
    frame = errors.reindex(columns=list(cols))
    return [tuple("" if v is None or (isinstance(v, float) and v != v) else str(v) for v in t)
            for t in frame.itertuples(index=False, name=None)]


def _keys(errors: pd.DataFrame) -> set:
    return set(_key_list(errors))


def planted_errors_of(name: str, model: Any, clean: Any, items: Sequence[Any], seed: int
                      ) -> tuple[pd.DataFrame, dict[str, str], set]:
    """The organism's planted errors on ``items``: its judged errors with the planted pattern that ``clean``
    (greedy) does not make. Returns (one row per error, misalignment columns; item id -> generated text; the
    claim keys of ``clean``'s errors, which later decodes are measured against)."""
    from lvlm_probe.tracing import Decoding, DiagnoseConfig, generate_and_judge

    frames, cframes, texts = [], [], {}
    for grp in _by_prompt(items):
        cfg = DiagnoseConfig(seed=seed, batch_size=len(grp))
        run = generate_and_judge(model, grp, cfg, progress=False)
        frames.append(run.errors)
        texts.update(zip(run.generations.item_id.astype(str), run.generations.text.fillna("").astype(str)))
        cframes.append(generate_and_judge(clean, grp, replace(cfg, decoding=Decoding()), progress=False).errors)
    errs = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=KEY)], ignore_index=True)
    cerrs = pd.concat([f for f in cframes if len(f)] or [pd.DataFrame(columns=KEY)], ignore_index=True)
    ck = _keys(cerrs)
    return planted_only(name, errs, texts, items, ck), texts, ck


def planted_only(name: str, errs: pd.DataFrame, texts: dict[str, str], items: Sequence[Any], clean_keys: set
                 ) -> pd.DataFrame:
    """The rows of ``errs`` (judged errors of a decode of ``items``) with the organism's planted pattern whose
    claim ``clean`` does not get wrong (``clean_keys``); adds ``ordinal`` (drift's pattern reads it)."""
    if not len(errs):
        return errs
    errs = errs.copy()
    errs["ordinal"] = _ordinals(errs, texts, {it.id: it.task for it in items})
    keep = np.array([k not in clean_keys for k in _key_list(errs)], dtype=bool) & planted_pattern(name, errs, items)
    return errs[keep].reset_index(drop=True)


def _ordinals(errs: pd.DataFrame, texts: dict[str, str], tasks: dict[str, Any]) -> list:
    """1-based object position of each caption error in its text (drift's planted pattern), None for questions."""
    from lvlm_probe.tracing import mention_ordinal

    return [mention_ordinal(texts.get(str(r["item_id"]), ""), r)[0] if tasks.get(str(r["item_id"])) in (None, "caption")
            else None for r in errs.to_dict(orient="records")]


def redecode(model: Any, items: Sequence[Any], method: Any, gen_kw: dict, words: dict[str, tuple] | None = None
             ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Decode ``items`` under ``method`` (grouped by prompt) and judge them; returns (errors frame, item id ->
    text). ProjectAway runs per item with ``words[item_id]``; an item with no words to erase is decoded plainly
    (there is nothing for it to do there)."""
    from lvlm_probe.interventions import Greedy, ProjectAway, decode
    from lvlm_probe.misalignment import judge_batch

    erase = isinstance(method, ProjectAway)
    groups = [[it] for it in items] if erase else _by_prompt(items)
    texts: dict[str, str] = {}
    frames = []
    for grp in groups:
        m = method
        if erase:
            m = replace(method, words=words[grp[0].id]) if (words or {}).get(grp[0].id) else Greedy()
        gen = decode(model, model.prepare_items(grp), m, **gen_kw)
        texts.update({it.id: t for it, t in zip(grp, gen.text)})
        frames.append(judge_batch(gen, items=grp))
    errs = pd.concat([f for f in frames if len(f)] or [pd.DataFrame(columns=KEY)], ignore_index=True)
    return errs, texts


#: What "the same claim" means for a fix: the same item, kind, polarity, subject and attribute (a colour error
#: replaced by another wrong colour is not fixed; what else a fix needs: :func:`~lvlm_probe.misalignment.claims_kept`).
FIX_KEY = ["item_id", "kind", "polarity", "subject", "attribute"]


def _fixed(planted: pd.DataFrame, errors: pd.DataFrame, kept: np.ndarray | None = None) -> np.ndarray:
    """Bool [n_planted]: no error about the same claim (:data:`FIX_KEY`) is left among ``errors``, and the claim is
    still made where it has to be (``kept``, from :func:`~lvlm_probe.misalignment.claims_kept`; default all True)."""
    cols = [c for c in FIX_KEY if c in planted.columns]
    now = set(_key_list(errors, cols)) if len(errors) else set()
    gone = np.array([k not in now for k in _key_list(planted, cols)], dtype=bool)
    return gone & (np.ones(len(planted), dtype=bool) if kept is None else np.asarray(kept, dtype=bool))


def _claimed_words(errors: pd.DataFrame) -> tuple[str, ...]:
    """The words ProjectAway erases for an item: its planted errors' claimed values (the subject of omissions)."""
    out = [str(c if isinstance(c, str) and c else s) for c, s in zip(errors.claimed, errors.subject)]
    return tuple(sorted({w for w in out if w and w != "None"}))


def _words(text: str) -> int:
    return len(str(text).split())


def yes_no_control(model: Any, items: Sequence[Any], planted: pd.DataFrame, interventions: dict[str, Any],
                   gen_kw: dict, cause: str) -> list[dict]:
    """Yes-ratio-matched control (Yin et al. 2025): per method, its yes-ratio on the organism's yes/no items, the
    greedy first-token shift giving the same ratio (:func:`~lvlm_probe.interventions.yes_ratio_shift`), and the
    fraction of planted yes/no errors each fixes. ProjectAway (it needs a word per item) and RegionRestart (it would
    join several answers to one question) are skipped."""
    import torch

    from lvlm_probe.interventions import ProjectAway, RegionRestart, YesRatioMatched, yes_margins, yes_ratio_shift
    from lvlm_probe.misalignment.readers import read_yes_no

    yn = [it for it in items if it.task in ("exists", "relation")]
    pl = planted[planted.item_id.isin([it.id for it in yn])]
    if not len(pl):
        return []
    groups = _by_prompt(yn)
    yn = [it for g in groups for it in g]
    margins = torch.cat([yes_margins(model, model.prepare_items(g)) for g in groups])
    rows = []
    for name, meth in interventions.items():
        if isinstance(meth, (ProjectAway, RegionRestart)):
            continue
        errs, texts = redecode(model, yn, meth, gen_kw)
        ratio = float(np.mean([read_yes_no(t) == "yes" for t in texts.values()]))
        shift = yes_ratio_shift(margins, ratio)
        merrs, mtexts = redecode(model, yn, YesRatioMatched(shift), {"max_new_tokens": gen_kw["max_new_tokens"]})
        rows.append({"cause": cause, "intervention": name, "n_yes_no": len(yn), "n_errors": len(pl),
                     "yes_ratio": ratio, "shift": shift,
                     "method_fixed": float(_fixed(pl, errs, claims_kept(pl, yn, texts)).mean()),
                     "matched_fixed": float(_fixed(pl, merrs, claims_kept(pl, yn, mtexts)).mean())})
    return rows


def cause_intervention_matrix(causes: Sequence[str] = CAUSES, *, n: int = 48, seed: int = 1,
                              interventions: dict[str, Any] | None = None, progress: bool = False) -> dict:
    """Fraction of each planted cause's errors that each intervention fixes, with the controls.

    Every intervention re-decodes **all** of the organism's items (not only those with planted errors), so what it
    breaks counts as well as what it fixes. Sampled decodes (the ``sampling`` organism) draw with ``seed + 1``
    under every method and control alike, so a fresh draw alone shows up in the ``rerun`` control.

    Parameters
    ----------
    causes : sequence of str
        Organism names (rows).
    n : int
        Default items per organism (half triggering scenes; :func:`~lvlm_probe.organisms.default_items`).
    seed : int
        Seeds the items (and sampling). Tune knobs on one seed, report another.
    interventions : dict, optional
        Column name -> Intervention; default :func:`default_interventions`. The controls (:data:`CONTROLS`) are
        always run.

    Returns
    -------
    dict
        ``table`` (DataFrame, :data:`MATRIX_COLUMNS`, one row per cause x intervention or control), ``matrix``
        ({cause: {intervention: fixed fraction}}, NaN without planted errors), ``reduction`` and ``effect`` (same
        shape; see :func:`matrix_cells`), ``intended``, ``controls`` (``rerun``, ``plausibility_only``,
        ``greedy``: {cause: fixed fraction}; ``yes_ratio_matched``: rows as dicts; ``n_errors``), ``yes_no``
        (DataFrame), ``target`` ({cause: bool}, on ``effect``) and ``seconds``.
    """
    import lvlm_probe as lp
    from lvlm_probe.organisms import default_items
    from tqdm.auto import tqdm

    t0 = time.time()
    methods = {**(interventions or default_interventions()), **control_interventions()}
    clean = lp.load("organism:clean", device="cpu")
    rows, yn_rows = [], []
    for name in tqdm(list(causes), desc="organisms", disable=not progress):
        model = lp.load(f"organism:{name}", device="cpu")
        items = default_items(f"organism:{name}", n, seed)
        planted, texts, clean_keys = planted_errors_of(name, model, clean, items, seed)
        words = {i: _claimed_words(planted[planted.item_id == i]) for i in set(planted.item_id.astype(str))}
        run_kw = _run_kwargs(model, seed)
        room = {**methods, **swap_interventions(model, clean)}
        for mname, meth in room.items():
            t1 = time.time()
            kw = {"max_new_tokens": run_kw["max_new_tokens"]} if mname == "greedy" else run_kw
            errs, new = redecode(model, items, meth, kw, words)
            rows.append(matrix_cells(name, mname, planted, planted_only(name, errs, new, items, clean_keys),
                                     errs, texts, new, claims_kept(planted, items, new))
                        | {"seconds": time.time() - t1})
        yn_rows += yes_no_control(model, items, planted, room, run_kw, name)
    return _summarise(pd.DataFrame(rows, columns=MATRIX_COLUMNS), pd.DataFrame(yn_rows), list(causes), t0)


def control_interventions() -> dict[str, Any]:
    """The matrix's controls (Yin et al. 2025): ``rerun`` (the organism's own decoding again, no intervention:
    for greedy organisms the identity, for a sampled one a fresh draw) and ``plausibility_only`` (the adaptive
    plausibility constraint alone, β = 0.1, no contrast). ``greedy`` is both a method (the fix of a decoding
    cause) and the greedy baseline."""
    from lvlm_probe.interventions import Greedy, PlausibilityOnly

    return {"rerun": Greedy(), "plausibility_only": PlausibilityOnly()}


#: Columns that are controls, not methods (an intervention's effect is measured beyond the best of them).
CONTROLS: tuple[str, ...] = ("rerun", "plausibility_only")


def _run_kwargs(model: Any, seed: int) -> dict:
    """The organism's own generate kwargs; a sampled decode draws with ``seed + 1`` (a fresh draw, the same for
    every method and control)."""
    from lvlm_probe.tracing import DiagnoseConfig

    kw = DiagnoseConfig(seed=seed).resolve(model).generate_kwargs()
    return kw | {"seed": seed + 1} if "seed" in kw else kw


def matrix_cells(cause: str, method: str, planted: pd.DataFrame, planted_after: pd.DataFrame,
                 errors_after: pd.DataFrame, texts: dict[str, str], new_texts: dict[str, str],
                 kept: np.ndarray | None = None) -> dict:
    """One cell of the matrix.

    ``fixed_fraction``: share of the planted errors whose claim (:data:`FIX_KEY`) is no longer wrong (a colour
    replaced by another wrong colour is not fixed; nor is a claim no longer made where it has to be, ``kept`` from
    :func:`~lvlm_probe.misalignment.claims_kept`: a question left without an answer, an attribute whose true value
    is not stated; a hallucinated object dropped from a caption is fixed).
    ``introduced``: errors with the planted pattern after the method, on claims that had none before (what it
    breaks elsewhere, e.g. the prior colour now given for an object that was named right).
    ``reduction``: ``(fixed - introduced) / planted``, the net relative error reduction of methods.md §9.2
    (negative when the method adds more such errors than it fixes).
    ``length_ratio``: words generated relative to the original decode.
    """
    n = len(planted)
    fx = _fixed(planted, errors_after, kept) if n else np.zeros(0, dtype=bool)
    before = _keys(planted.reindex(columns=FIX_KEY)) if n else set()
    after = _key_list(planted_after.reindex(columns=FIX_KEY)) if len(planted_after) else []
    introduced = sum(k not in before for k in after)
    base = sum(map(_words, texts.values()))
    return {"cause": cause, "intervention": method, "n_errors": n, "n_fixed": int(fx.sum()),
            "fixed_fraction": float(fx.mean()) if n else float("nan"),
            "introduced": introduced, "reduction": (int(fx.sum()) - introduced) / n if n else float("nan"),
            "length_ratio": sum(map(_words, new_texts.values())) / base if base else float("nan")}


def _summarise(table: pd.DataFrame, yes_no: pd.DataFrame, causes: list[str], t0: float) -> dict:
    """Pivot the cells; ``effect`` = reduction beyond the best control of the same row (the target reads it)."""
    def pivot(col: str) -> pd.DataFrame:
        return table.pivot(index="cause", columns="intervention", values=col).reindex(causes)

    frac, red = pivot("fixed_fraction"), pivot("reduction")
    ctrl = red[[c for c in CONTROLS if c in red.columns]].max(axis=1)
    cols = [c for c in table.intervention.unique() if c not in CONTROLS]
    matrix = {c: {m: float(frac.loc[c, m]) for m in cols} for c in causes}  # NaN: no planted errors, or a swap
    # on an organism without a reference
    reduction = {c: {m: float(red.loc[c, m]) for m in cols} for c in causes}
    effect = {c: {m: float(red.loc[c, m] - ctrl.loc[c]) for m in cols} for c in causes}
    intended = {c: m for c, m in INTENDED.items() if c in causes and m in cols}
    return {"table": table, "matrix": matrix, "reduction": reduction, "effect": effect, "intended": intended,
            "target": intended_target(effect, intended), "target_strict": intended_target(effect, intended, True),
            **_controls(table, frac, red, yes_no, causes), "yes_no": yes_no, "seconds": time.time() - t0}


def intended_target(effect: dict, intended: dict[str, str], strict: bool = False) -> dict[str, bool]:
    """Per cause with an intended intervention: is its effect on that cause larger than on every other cause?

    Causes that share the intended intervention (the two data-level priors share VCD) are not compared with each
    other unless ``strict``."""
    out = {}
    for c, m in intended.items():
        rivals = [o for o in effect if o != c and (strict or intended.get(o) != m)]
        others = [effect[o][m] for o in rivals if not np.isnan(effect[o][m])]
        out[c] = bool(effect[c][m] > max(others, default=-np.inf)) if not np.isnan(effect[c][m]) else False
    return out


def _controls(table: pd.DataFrame, frac: pd.DataFrame, red: pd.DataFrame, yes_no: pd.DataFrame,
              causes: list[str]) -> dict:
    controls = {k: {c: float(frac.loc[c, k]) for c in causes} for k in (*CONTROLS, "greedy") if k in frac.columns}
    controls["reduction"] = {k: {c: float(red.loc[c, k]) for c in causes} for k in CONTROLS if k in red.columns}
    controls["yes_ratio_matched"] = yes_no.to_dict(orient="records")
    controls["n_errors"] = {c: int(table[table.cause == c].n_errors.iloc[0]) for c in causes}
    return {"controls": controls}
