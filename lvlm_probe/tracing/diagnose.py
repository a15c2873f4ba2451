"""``diagnose``: generation → judging → evidence → cascade, and the :class:`DiagnosisReport` it returns."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lvlm_probe._atomic import atomic_write_text
from lvlm_probe.data.items import Item
from lvlm_probe.errors import InputError
from lvlm_probe.tracing.cascade import STAGES, Thresholds, cascade, score_column, summarize
from lvlm_probe.tracing.evidence import (EVIDENCE_COLUMNS, as_float, mention_ordinal, n_object_mentions, probe_evidence,
                                         token_evidence)
from lvlm_probe.tracing.stats import PriorLookup, prior_evidence, training_statistics

FLOAT_EVIDENCE = ("p_emit", "p_truth", "rank", "entropy", "p_noimg", "p_knock", "img_use", "deviation_step", "pmi_img",
                  "knockout_effect", "img_attn", "img_attn_ratio", "enc_p_true", "proj_p_true", "prior_train",
                  "prior_lift", "class_freq", "pos_quantile", "n_mentions", "n_scene_objects")
DEFAULT_PROBE_SITES = ("projector.in", "projector.out")
CURVE_SITES_SMALL = ("vision.resid_post.*", "projector.in", "projector.out", "llm.resid_post.*")


@dataclass
class DiagnosisReport:
    """Everything :func:`diagnose` found, as tidy frames.

    Attributes
    ----------
    generations : DataFrame
        ``item_id, task, prompt, text, n_errors`` per item (``failed`` holds the reason for items that
        could not be run).
    errors : DataFrame
        The misalignment frame (one row per error, ``error_id`` added).
    evidence : DataFrame
        ``errors`` plus :data:`~lvlm_probe.tracing.evidence.EVIDENCE_COLUMNS`.
    diagnoses : DataFrame
        One row per error: ``item_id, kind, level, stage, confidence, causes, rule``, a ``score_<stage>`` per
        stage, and the evidence.
    probe_curves : DataFrame
        :func:`~lvlm_probe.probing.probe_sweep` rows (probe score per site and concept).
    manifest : dict
        Model, settings, seeds, thresholds, library versions, timings.
    items : list of Item
        The diagnosed items (for images in reports).
    """

    generations: pd.DataFrame
    errors: pd.DataFrame
    evidence: pd.DataFrame
    diagnoses: pd.DataFrame
    probe_curves: pd.DataFrame
    manifest: dict
    items: list = field(default_factory=list, repr=False)

    def summary(self) -> pd.DataFrame:
        """Counts and shares of errors per (kind, level, stage)."""
        return summarize(self.diagnoses)

    def level_counts(self) -> pd.Series:
        """Errors per level."""
        return self.diagnoses.level.value_counts()

    def dominant(self, by: str = "stage") -> str | None:
        """The most frequent ``level`` or ``stage`` among the errors (None without errors)."""
        if not len(self.diagnoses):
            return None
        return str(self.diagnoses[by].value_counts().idxmax())

    def __repr__(self) -> str:
        return (f"DiagnosisReport({len(self.generations)} items, {len(self.errors)} errors, "
                f"levels {self.level_counts().to_dict() if len(self.diagnoses) else {}})")

    def write(self, out: str | os.PathLike, *, figures: bool = True, max_examples: int = 3) -> Path:
        """Write ``report.html``, ``diagnosis.csv``, ``errors.csv``, ``evidence.csv``, ``generations.csv``,
        ``probe_curves.csv``, ``figures/*.pdf|png`` and ``manifest.json`` under ``out`` (each file atomically).

        Returns
        -------
        Path
            The report path.
        """
        from lvlm_probe.tracing.report import write_report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, df in (("diagnosis", self.diagnoses), ("errors", self.errors), ("evidence", self.evidence),
                         ("generations", self.generations), ("probe_curves", self.probe_curves)):
            atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
        atomic_write_text(out / "manifest.json", json.dumps(self.manifest, indent=1, default=str))
        return write_report(self, out, figures=figures, max_examples=max_examples)


def _organism_settings(name: str) -> tuple[dict, Any]:
    from lvlm_probe.organisms import ZOO

    org = name.split(":", 1)[1]
    spec = ZOO.get(org)
    return (dict(spec.run_settings) if spec is not None else {}), spec


def default_probe_items(spec: Any, n: int, seed: int) -> list[Item]:
    """Fresh captioning items from the unbiased world of an organism (the probes' training set)."""
    from lvlm_probe.data.world import SceneWorld, WorldConfig

    cfg = spec.world if spec is not None else WorldConfig()
    unbiased = WorldConfig(image_size=cfg.image_size, grid=cfg.grid)
    return SceneWorld(unbiased, seed=seed).items(n, "caption", seed=seed + 9173, prefix="probe")


def diagnose(
    model: Any,
    items: Sequence[Item],
    *,
    probe_items: Sequence[Item] | None = None,
    n_probe_items: int = 300,
    training_stats: Any = "auto",
    generate: dict | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    thresholds: Thresholds | None = None,
    probe_sites: Sequence[str] = DEFAULT_PROBE_SITES,
    curve_sites: Sequence[str] | str | None = "auto",
    store: str | os.PathLike | None = None,
    vocabulary: Any = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> DiagnosisReport:
    """Find the misaligned outputs of a model on items with ground truth and say why each happened.

    Parameters
    ----------
    model : LVLM or str
        A loaded model, or a name for :func:`lvlm_probe.load` (hub id, directory, ``organism:NAME``;
        an organism name also brings its run settings, e.g. sampling for ``organism:sampling``).
    items : sequence of Item
        Each with an image, a prompt and a scene graph (``item.scene``); ``item.task`` selects caption or
        QA judging.
    probe_items : sequence of Item, optional
        Extra items with scene graphs that train the encoder/projector probes (the diagnosed items are
        always included, and get out-of-fold verdicts). Default for organisms: ``n_probe_items`` fresh
        scenes from the unbiased world; otherwise none.
    training_stats : "auto", WorldStats, path, list of SceneGraph or None
        Data-level evidence: ``"auto"`` reads ``training_stats.json`` beside the model (organisms ship it);
        for a real model pass the scene graphs of a training/instruction corpus. None: no data-level
        cause can be named.
    generate : dict, optional
        Decoding settings for :meth:`LVLM.generate` (default greedy, or the organism's run settings).
    max_new_tokens, batch_size : int
    thresholds : Thresholds, optional
        Cascade thresholds.
    probe_sites : sequence of str
        The encoder-output and projector-output sites whose probes give the encoder / projector verdicts.
    curve_sites : sequence of str, "auto" or None
        Sites of the probe curves in the report; ``"auto"``: every vision, projector and LLM layer for
        models under 50M parameters, else only ``probe_sites``.
    store : path, optional
        Where the activation store goes (default a temporary directory, removed afterwards).
    vocabulary : Vocabulary, optional
        For judging (default the synthetic world's vocabulary).
    seed : int
        Seeds sampling, probe folds and the default probe items.
    device : str, optional
        Only when ``model`` is a name.
    progress : bool

    Returns
    -------
    DiagnosisReport
    """
    import lvlm_probe as lp
    from lvlm_probe.capture import capture
    from lvlm_probe.misalignment import judge_batch
    from lvlm_probe.probing import probe_sweep, scene_labels

    t0 = time.time()
    items = list(items)
    if not items:
        raise InputError("diagnose needs at least one item")
    settings: dict = {}
    spec = None
    model_name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
    if isinstance(model, str):
        if model.startswith("organism:"):
            settings, spec = _organism_settings(model)
        model = lp.load(model, device=device)
    settings = dict(settings if generate is None else generate)
    if settings.get("do_sample") and "seed" not in settings:
        settings["seed"] = seed
    sampled = bool(settings.get("do_sample"))
    ids = [it.id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"item ids must be unique; repeated: {dup[:5]}")
    missing = [it.id for it in items if it.scene is None]
    if missing:
        raise InputError(f"items {missing[:5]} have no scene graph; diagnose judges outputs against item.scene "
                         "(see docs/howto/items-file.md for the format)")
    th = thresholds or Thresholds()
    stats = training_statistics(model if training_stats == "auto" else training_stats)
    lookup = PriorLookup(stats) if stats is not None else None

    # 1. generate and judge, batch by batch (a failing batch is recorded and skipped)
    timings: dict[str, float] = {}
    gens, err_frames, tok_frames, failed = [], [], [], {}
    chunks = [items[k:k + batch_size] for k in range(0, len(items), batch_size)]
    for ci, chunk in enumerate(tqdm(chunks, desc="generate + judge", disable=not progress)):
        try:
            batch = model.prepare([it.image for it in chunk], [it.prompt for it in chunk],
                                  item_ids=[it.id for it in chunk])
            gen = model.generate(batch, max_new_tokens=max_new_tokens, **settings)
            errs = judge_batch(gen, items=chunk, vocabulary=vocabulary)
            errs["chunk"] = ci
            tok = token_evidence(model, gen, errs, sampled=sampled) if len(errs) else None
        except (InputError, ValueError, RuntimeError, OSError) as e:  # record and go on
            for it in chunk:
                failed[it.id] = f"{type(e).__name__}: {e}"
            continue
        for b, it in enumerate(chunk):
            gens.append({"item_id": it.id, "task": it.task, "prompt": it.prompt, "text": gen.text[b],
                         "n_errors": int((errs.b == b).sum()) if len(errs) else 0, "failed": None})
        if len(errs):
            err_frames.append(errs)
            tok_frames.append(tok)
    for iid, why in failed.items():
        gens.append({"item_id": iid, "task": None, "prompt": None, "text": None, "n_errors": 0, "failed": why})
    timings["generate_judge_token_evidence"] = round(time.time() - t0, 1)
    generations = pd.DataFrame(gens, columns=["item_id", "task", "prompt", "text", "n_errors", "failed"])
    errors = pd.concat(err_frames, ignore_index=True) if err_frames else pd.DataFrame(
        columns=["item", "kind", "polarity", "b", "chunk"])
    errors.insert(0, "error_id", [f"{it}#{k}" for k, it in enumerate(errors["item"])] if len(errors) else [])
    errors.insert(1, "item_id", errors["item"].astype(str) if len(errors) else [])
    tok_ev = pd.concat(tok_frames, ignore_index=True) if tok_frames else pd.DataFrame(index=errors.index)

    # 2. data evidence: mention position and training statistics
    by_id = {it.id: it for it in items}
    text_of = dict(zip(generations.item_id, generations.text))
    data_rows = []
    for r in errors.to_dict(orient="records"):
        it = by_id[str(r["item"])]
        text = text_of.get(str(r["item"])) or ""
        n_mentions = n_scene = None
        if it.task in (None, "caption"):
            ordinal, context = mention_ordinal(text, r, vocabulary)
            n_mentions = n_object_mentions(text, vocabulary)
            n_scene = len(it.scene.objects) if it.scene is not None else None
        else:
            ordinal, context = None, [w for w in (r.get("subject"), r.get("object")) if isinstance(w, str)]
        row = prior_evidence(r, lookup, context, ordinal)
        row.update(ordinal=ordinal, n_mentions=n_mentions, n_scene_objects=n_scene)
        data_rows.append(row)
    data_ev = pd.DataFrame(data_rows, index=errors.index)

    # 3. probe evidence (and probe curves): out-of-fold verdicts at the encoder and projector outputs
    n_params = sum(p.numel() for p in model.hf_model.parameters())
    if curve_sites == "auto":
        curve_sites = CURVE_SITES_SMALL if n_params < 50_000_000 else tuple(probe_sites)
    sites = list(dict.fromkeys([*probe_sites, *(curve_sites or [])]))
    if spec is None:  # a shipped organism loaded by its directory gets the same default probe items
        from lvlm_probe.organisms import CHECKPOINTS

        ckpt = Path(str(model.path)).resolve()
        if ckpt.parent == Path(CHECKPOINTS).resolve():
            _, spec = _organism_settings("organism:" + ckpt.name)
    if probe_items is None and spec is not None:
        probe_items = default_probe_items(spec, n_probe_items, seed)
    probe_set = [it for it in items if it.id not in failed] + list(probe_items or [])
    probe_curves = pd.DataFrame()
    pred = None
    cv = min(5, len(probe_set))
    if cv < 2:
        timings["probes_skipped"] = f"{len(probe_set)} item(s): too few to cross-validate probes"
    if (len(errors) or curve_sites) and cv >= 2:
        tmp = None
        t1 = time.time()
        where = store
        if where is None:
            tmp = tempfile.TemporaryDirectory(prefix="lvlm_probe_diag_")
            where = tmp.name
        try:
            st = capture(model, probe_set, sites=sites, select=["image_patches"], out=where, batch_size=batch_size,
                         overwrite=True, progress=progress)
            timings["capture"] = round(time.time() - t1, 1)
            labels = object_class_labels(scene_labels(probe_set, families=("object", "attribute", "relation"),
                                                      seed=seed))
            t1 = time.time()
            _, pred = probe_sweep(st, labels, list(probe_sites), cv=cv, control=False, n_permutations=0,
                                  n_bootstrap=0, seed=seed, return_predictions=True, progress=progress)
            timings["probe_verdicts"] = round(time.time() - t1, 1)
            t1 = time.time()
            if curve_sites:
                curve_labels = labels[labels.family != "object"] if (labels.family != "object").any() else labels
                curve_labels = pd.concat([curve_labels, labels[labels.concept == "class"]]).drop_duplicates()
                probe_curves = probe_sweep(st, curve_labels, list(curve_sites), cv=cv, control=True, n_permutations=0,
                                           n_bootstrap=0, seed=seed, progress=progress)
            timings["probe_curves"] = round(time.time() - t1, 1)
        finally:
            if tmp is not None:
                tmp.cleanup()
    scenes = {it.id: it.scene for it in items}
    probe_ev = probe_evidence(errors, pred, scenes, enc_site=probe_sites[0], proj_site=probe_sites[-1])

    # 4. evidence frame and cascade
    evidence = pd.concat([errors, tok_ev.reindex(errors.index), data_ev, probe_ev], axis=1)
    evidence = evidence.loc[:, ~evidence.columns.duplicated()]
    for c in EVIDENCE_COLUMNS:
        if c not in evidence:
            evidence[c] = np.nan
    evidence = as_float(evidence, FLOAT_EVIDENCE)
    diagnoses = cascade(evidence, th)
    manifest = {
        "model": str(model_name), "model_path": str(getattr(model, "path", "")), "n_parameters": int(n_params),
        "n_items": len(items), "n_failed": len(failed), "n_errors": int(len(errors)),
        "n_probe_items": len(probe_items or []), "generate": settings, "max_new_tokens": max_new_tokens,
        "seed": seed, "thresholds": th.to_dict(), "probe_sites": list(probe_sites), "curve_sites": list(sites),
        "training_stats": None if stats is None else (training_stats if isinstance(training_stats, str)
                                                     else type(training_stats).__name__),
        "stages": list(STAGES), "score_columns": [score_column(s) for s in STAGES],
        "seconds": round(time.time() - t0, 1), "timings": timings, "versions": _versions(),
    }
    return DiagnosisReport(generations, errors, evidence, diagnoses, probe_curves, manifest, items)


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


def _versions() -> dict[str, str]:
    from lvlm_probe.capture.store import library_versions

    try:
        return library_versions()
    except Exception:  # noqa: BLE001 - versions are informative only
        return {}


def default_items(model: str, n: int = 48, seed: int = 0) -> list[Item]:
    """Items for ``organism:NAME`` without an items file: half its triggering scenes, half ordinary captions.

    The triggering half comes from :func:`lvlm_probe.organisms.check.trigger_set` (the scenes on which the
    planted cause shows: e.g. circle-without-square scenes for ``cooccurrence``); the rest are fresh captioning
    scenes of the organism's world. Seeded.
    """
    from lvlm_probe.data.world import SceneWorld
    from lvlm_probe.organisms import ZOO
    from lvlm_probe.organisms.check import trigger_set

    name = model.split(":", 1)[1] if model.startswith("organism:") else model
    if name not in ZOO:
        raise InputError(f"{model!r} is not an organism; give an items file (--items FILE, JSON lines with image, "
                         "prompt and scene; see docs/howto/items-file.md)")
    world = SceneWorld(ZOO[name].world, seed=seed)
    trig, _ = trigger_set(name, world, n, seed=seed * 1000 + 11)
    trig = [it for it in trig if not it.id.endswith("-noise")][: n // 2]
    rest = world.items(n - len(trig), "caption", seed=seed * 1000 + 13, prefix="scene")
    return trig + rest
