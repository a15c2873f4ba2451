"""Step 2 of a diagnosis: evidence for every error of a :class:`~lvlm_probe.tracing.run.Run`.

Four parts, each a public function a notebook can call alone (see :mod:`lvlm_probe.tracing.evidence` for the
features): :func:`run_token_evidence` (teacher-forced passes over the stored generations), :func:`data_evidence`
(training statistics and positions), :func:`probe_verdicts` (probes on captured encoder / projector
activations, plus the report's probe curves) and :func:`~lvlm_probe.tracing.ask.answer_evidence` (the direct
question about each false relation). :func:`collect_evidence` joins them into the evidence frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lvlm_probe._dist import gather, on_rank0, process_group, rank_share, shared_tempdir
from lvlm_probe.data.items import Item
from lvlm_probe.models import LVLM
from lvlm_probe.schema import EVIDENCE_COLUMNS, FLOAT_EVIDENCE
from lvlm_probe.tracing.ask import answer_evidence
from lvlm_probe.tracing.config import DiagnoseConfig
from lvlm_probe.tracing.reference import CALIBRATED_COLUMNS, calibrate, reference_claims
from lvlm_probe.tracing.evidence import (as_float, mention_ordinal, n_object_mentions, probe_evidence,
                                         token_evidence)
from lvlm_probe.tracing.run import Run, read_tables, write_tables
from lvlm_probe.tracing.stats import PriorLookup, prior_evidence, training_statistics


@dataclass
class Evidence:
    """The evidence of a run.

    Attributes
    ----------
    frame : DataFrame
        The run's errors plus :data:`~lvlm_probe.schema.EVIDENCE_COLUMNS` (NaN = not measured) and the calibrated
        columns of :mod:`lvlm_probe.tracing.reference` (each feature's quantile among the correct claims).
    reference : DataFrame
        The reference set: the run's correct claims with the same evidence (token and probe features).
    probe_curves : DataFrame
        :func:`~lvlm_probe.probing.probe_sweep` rows for the report's curves (empty when skipped).
    timings : dict
        Seconds per part, and why probes were skipped when they were.
    """

    frame: pd.DataFrame
    probe_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    timings: dict = field(default_factory=dict)
    reference: pd.DataFrame = field(default_factory=pd.DataFrame)

    def write(self, out: str | Path) -> list[str]:
        return write_tables(out, {"evidence": self.frame, "probe_curves": self.probe_curves,
                                  "reference": self.reference})

    @classmethod
    def read(cls, out: str | Path) -> Evidence:
        t = read_tables(out, ("evidence", "probe_curves"))
        # a run written before the reference set existed has no reference.csv: its reference is empty
        ref = read_tables(out, ("reference",))["reference"] if (Path(out) / "reference.csv").is_file() else None
        return cls(as_float(t["evidence"], (*FLOAT_EVIDENCE, *CALIBRATED_COLUMNS)), t["probe_curves"],
                   reference=as_float(ref, FLOAT_EVIDENCE) if ref is not None else pd.DataFrame())


def collect_evidence(model: LVLM, items: Sequence[Item], run: Run, config: DiagnoseConfig | None = None, *,
                     training_stats: Any = "auto", probe_items: Sequence[Item] | None = None, vocabulary: Any = None,
                     store: str | Path | None = None, progress: bool = True) -> Evidence:
    """Token, data, probe and answer evidence for every error of ``run``.

    Parameters
    ----------
    model : LVLM
    items : sequence of Item
        The run's items (images and scene graphs).
    run : Run
    config : DiagnoseConfig, optional
    training_stats : "auto", WorldStats, path, list of SceneGraph or None
        ``"auto"`` reads ``training_stats.json`` beside the model (organisms ship it); None: no data-level cause
        can be named.
    probe_items : sequence of Item, optional
        Extra items with scene graphs for the probes; default: ``config.n_probe_items`` fresh scenes of the
        probe world in the model's run defaults (organisms name one), else none.
    store : path, optional
        Where the probe activations go (default a temporary directory, removed afterwards).

    Returns
    -------
    Evidence
    """
    cfg = (config or DiagnoseConfig()).resolve(model)
    t0 = time.time()
    errors = run.errors
    tok, ref = _token_evidence_parts(model, items, run, cfg, vocabulary, progress=progress)
    timings: dict[str, Any] = {"token_evidence": round(time.time() - t0, 1)}
    data = data_evidence(errors, items, run.generations, training_statistics(
        model if isinstance(training_stats, str) and training_stats == "auto" else training_stats), vocabulary)
    if probe_items is None:
        probe_items = default_probe_items(model, cfg.n_probe_items, cfg.seed)
    pred, curves, t_probe = probe_verdicts(model, items, run, cfg, probe_items, store=store, progress=progress)
    timings.update(t_probe)
    scenes = {it.id: it.scene for it in items}
    sites = dict(enc_site=cfg.probe_sites[0], proj_site=cfg.probe_sites[-1])
    probes = probe_evidence(errors, pred, scenes, **sites)
    t1 = time.time()
    asked = on_rank0(lambda: answer_evidence(model, items, errors, batch_size=cfg.batch_size, progress=progress),
                     "relation questions")
    timings["relation_questions"] = round(time.time() - t1, 1)
    frame = _joined(errors, tok.reindex(errors.index), data, probes, asked)
    reference = _joined(ref, probe_evidence(ref, pred, scenes, **sites)) if len(ref) else ref
    return Evidence(calibrate(frame, reference), curves, timings, reference)


def _joined(*parts: pd.DataFrame) -> pd.DataFrame:
    """Side-by-side frames (first copy of a repeated column kept) with every evidence column, as floats."""
    frame = pd.concat(parts, axis=1)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    for c in EVIDENCE_COLUMNS:
        if c not in frame:
            frame[c] = np.nan
    return as_float(frame, FLOAT_EVIDENCE)


def run_token_evidence(model: LVLM, items: Sequence[Item], run: Run, config: DiagnoseConfig, *,
                       progress: bool = True) -> pd.DataFrame:
    """:func:`~lvlm_probe.tracing.evidence.token_evidence` of every error, batch by batch as generated.

    Each generation batch is re-formed from the stored tokens (same items, same order, same padding), so the
    teacher-forced passes see exactly the sequences that were generated. Under a process group each rank takes
    its block of the batches and every rank returns the whole frame.
    """
    return _token_evidence_parts(model, items, run, config, None, progress=progress, reference=False)[0]


def _token_evidence_parts(model: LVLM, items: Sequence[Item], run: Run, config: DiagnoseConfig, vocabulary: Any, *,
                          progress: bool = True, reference: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Token evidence of the errors and, with ``reference``, of the correct claims of every batch that ran (the
    reference set of :mod:`lvlm_probe.tracing.reference`), from the same teacher-forced passes."""
    errors = run.errors
    g = run.generations[run.generations.failed.isna()]
    batch_ids = sorted({int(x) for x in (g.batch if reference else errors.batch)})
    if not batch_ids:
        return pd.DataFrame(index=errors.index), pd.DataFrame()
    by_id = {it.id: it for it in items}
    sampled = bool(config.decoding.do_sample if config.decoding is not None else False)
    group = process_group()
    if group is not None:  # data-parallel: each rank its block of the generation batches
        batch_ids = rank_share(batch_ids, *group)

    def one(k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows = g[g.batch.astype(float) == k].sort_values("row", key=lambda s: s.astype(int))
        chunk = [by_id[str(i)] for i in rows.item_id]
        batch = model.prepare([it.image for it in chunk], [it.prompt for it in chunk], item_ids=[it.id for it in chunk])
        gen = model.generation_from_tokens(batch, list(rows.tokens))
        errs = errors[errors.batch.astype(int) == k] if len(errors) else errors
        ref = reference_claims(gen, chunk, errs, batch=k, vocabulary=vocabulary) if reference else pd.DataFrame()
        both = pd.concat([errs, ref], ignore_index=True) if len(ref) else errs.reset_index(drop=True)
        tok = token_evidence(model, gen, both, sampled=sampled) if len(both) else pd.DataFrame(index=both.index)
        err_tok = tok.iloc[:len(errs)].set_axis(errs.index)
        ref_tok = pd.concat([ref, tok.iloc[len(errs):].reset_index(drop=True)], axis=1) if len(ref) else ref
        return err_tok, ref_tok

    show = progress and not (group and group[0])
    parts = gather(lambda: [one(k) for k in tqdm(batch_ids, desc="token evidence", disable=not show)],
                   "token evidence")
    done = [p for part in parts for p in part]
    err_tok = pd.concat([e for e, _ in done]) if done else pd.DataFrame(index=errors.index)
    refs = [r for _, r in done if len(r)]
    return err_tok, (pd.concat(refs, ignore_index=True) if refs else pd.DataFrame())


def data_evidence(errors: pd.DataFrame, items: Sequence[Item], generations: pd.DataFrame, stats: Any,
                  vocabulary: Any = None) -> pd.DataFrame:
    """Training-statistics priors and the error's position (:func:`~lvlm_probe.tracing.stats.prior_evidence`).

    Returns
    -------
    DataFrame
        Indexed like ``errors``: the prior columns plus ``ordinal``, ``n_mentions``, ``n_scene_objects`` and
        ``context_in_image`` (1.0 when the classes the claim's prior is conditioned on, ``prior_context``, are in
        the item's scene, 0.0 when not; NaN without a scene or a context). A caption's object is conditioned on
        the classes it mentioned before and the classes the image shows, a question's answer on the question's
        words and the classes the image shows.
    """
    lookup = PriorLookup(stats) if stats is not None else None
    by_id = {it.id: it for it in items}
    text_of = dict(zip(generations.item_id.astype(str), generations.text))
    rows = []
    for r in errors.to_dict(orient="records"):
        it = by_id[str(r["item_id"])]
        text = text_of.get(str(r["item_id"])) or ""
        n_mentions = n_scene = None
        if it.task in (None, "caption"):
            ordinal, context = mention_ordinal(text, r, vocabulary)
            n_mentions = n_object_mentions(text, vocabulary)
            n_scene = len(it.scene.objects) if it.scene is not None else None
        else:  # a question's answer is conditioned on the words of the question
            ordinal = None
            context = [w for w in (r.get("subject"), r.get("object")) if isinstance(w, str)]
        # the model sees the whole image at once: what it shows conditions every claim, mentioned yet or not
        context = list(context) + ([o.name for o in it.scene.objects] if it.scene is not None else [])
        context = [w for w in dict.fromkeys(context) if w != r.get("claimed")]
        row = prior_evidence(r, lookup, context, ordinal)
        row.update(ordinal=ordinal, n_mentions=n_mentions, n_scene_objects=n_scene,
                   context_in_image=_context_in_image(row.get("prior_context"), it))
        rows.append(row)
    return pd.DataFrame(rows, index=errors.index)


def _context_in_image(context: Any, item: Item) -> float:
    """1.0 when every class of a prior's context (``"circle"``, or ``"circle|square"`` for a relation) is in the
    item's scene, 0.0 when one is not, NaN without a scene or a context."""
    if item.scene is None or not isinstance(context, str) or not context:
        return float("nan")
    return float(all(item.scene.find(c) for c in context.split("|")))


def default_probe_items(model: LVLM, n: int, seed: int) -> list[Item]:
    """``n`` fresh captioning scenes of the probe world in the model's run defaults (none without one)."""
    from lvlm_probe.data.world import SceneWorld, WorldConfig

    world = (getattr(model, "run_defaults", None) or {}).get("probe_world")
    if not world or n <= 0:
        return []
    return SceneWorld(WorldConfig(**world), seed=seed).items(n, "caption", seed=seed + 9173, prefix="probe")


def probe_verdicts(model: LVLM, items: Sequence[Item], run: Run, config: DiagnoseConfig,
                   probe_items: Sequence[Item], *, store: str | Path | None = None, progress: bool = True
                   ) -> tuple[pd.DataFrame | None, pd.DataFrame, dict]:
    """Out-of-fold probe predictions at the probe sites, and the probe curves.

    The probes train on the run's items that ran plus ``probe_items`` (5-fold, or fewer with fewer items), from
    ``image_patches`` activations captured at ``probe_sites`` and ``curve_sites``.

    Returns
    -------
    predictions : DataFrame or None
        :func:`~lvlm_probe.probing.probe_sweep` predictions (None when probes were skipped).
    curves : DataFrame
    timings : dict
    """
    from lvlm_probe.capture import capture

    failed = run.failed
    probe_set = [it for it in items if it.id not in failed] + list(probe_items)
    curve_sites = list(config.curve_sites or [])
    sites = list(dict.fromkeys([*config.probe_sites, *curve_sites]))
    cv = min(5, len(probe_set))
    timings: dict[str, Any] = {}
    if cv < 2:
        timings["probes_skipped"] = f"{len(probe_set)} item(s): too few to cross-validate probes"
        return None, pd.DataFrame(), timings
    if not len(run.errors) and not curve_sites:
        return None, pd.DataFrame(), timings
    with shared_tempdir(store if store is not None else None, keep=store is not None) as where:
        t1 = time.time()
        st = capture(model, probe_set, sites=sites, select=["image_patches"], out=where,
                     batch_size=config.batch_size, overwrite=True, progress=progress)
        timings["capture"] = round(time.time() - t1, 1)
        pred, curves, t_sweep = on_rank0(lambda: _probe_sweeps(st, probe_set, config, cv, curve_sites, progress),
                                         "probe verdicts")
        timings.update(t_sweep)
    return pred, curves, timings


def _probe_sweeps(st: Any, probe_set: Sequence[Item], config: DiagnoseConfig, cv: int, curve_sites: list[str],
                  progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Out-of-fold probe predictions at the probe sites and the probe curves, from the captured store."""
    from lvlm_probe.probing import probe_sweep, scene_labels

    timings: dict[str, Any] = {}
    labels = object_class_labels(scene_labels(probe_set, families=("object", "attribute", "relation"),
                                              seed=config.seed))
    t1 = time.time()
    _, pred = probe_sweep(st, labels, list(config.probe_sites), cv=cv, control=False, n_permutations=0,
                          n_bootstrap=0, seed=config.seed, return_predictions=True, progress=progress)
    timings["probe_verdicts"] = round(time.time() - t1, 1)
    t1 = time.time()
    curves = pd.DataFrame()
    if curve_sites:
        curve_labels = labels[labels.family != "object"] if (labels.family != "object").any() else labels
        curve_labels = pd.concat([curve_labels, labels[labels.concept == "class"]]).drop_duplicates()
        curves = probe_sweep(st, curve_labels, curve_sites, cv=cv, control=True, n_permutations=0,
                             n_bootstrap=0, seed=config.seed, progress=progress)
    timings["probe_curves"] = round(time.time() - t1, 1)
    return pred, curves, timings


def object_class_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Add an object-level ``class`` concept (family ``object``): each object's class from the patches under its box.

    It is built from the object-level rows of ``labels`` (those with ``object_index`` and a ``name``), one per
    object; the encoder/projector verdict for an object error reads it (see
    :func:`~lvlm_probe.tracing.evidence.probe_evidence`).
    """
    obj = labels[(labels.level == "object") & labels.name.notna()].drop_duplicates(["item_id", "object_index"])
    if not len(obj):
        return labels
    extra = obj.assign(concept="class", family="object", value=obj.name, task="classification")
    return pd.concat([labels, extra], ignore_index=True)
