"""``diagnose``: the three steps composed (generate + judge → evidence → cascade), resumable in an out dir.

Each step is public and can run alone (:func:`~lvlm_probe.tracing.run.generate_and_judge`,
:func:`~lvlm_probe.tracing.collect.collect_evidence`, :func:`~lvlm_probe.tracing.cascade.cascade`);
``diagnose`` only composes them and returns a :class:`DiagnosisReport` (data; rendering is
:func:`lvlm_probe.report.render_diagnosis`). With ``out=DIR`` every step's tables are written atomically with
a hash of the settings they depend on, and a rerun resumes at the first step whose hash changed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from lvlm_probe._atomic import atomic_write_text
from lvlm_probe._dist import barrier, on_rank0, process_group
from lvlm_probe.data.items import Item
from lvlm_probe.errors import InputError
from lvlm_probe.models import LVLM
from lvlm_probe.schema import STAGES, score_column
from lvlm_probe.tracing.cascade import cascade, summarize
from lvlm_probe.tracing.collect import Evidence, collect_evidence
from lvlm_probe.tracing.config import DiagnoseConfig, settings_hash
from lvlm_probe.tracing.run import Judge, Run, check_items, read_tables, write_tables

#: The steps of a diagnosis run, in order, and the tables each writes.
STEP_TABLES: dict[str, tuple[str, ...]] = {"run": ("generations", "errors"),
                                           "evidence": ("evidence", "probe_curves", "reference"),
                                           "diagnoses": ("diagnosis",)}
#: The out dir's index: one entry per finished step (settings hash, files), plus the manifest.
STEPS_FILE = "steps.json"
#: What rendering writes into a run dir (``lvlm_probe.render_diagnosis``); an earlier run's copies are stale.
RENDERED: tuple[str, ...] = ("report.html", "figures")


@dataclass
class DiagnosisReport:
    """Everything :func:`diagnose` found, as tidy frames (data only; see :func:`lvlm_probe.render_diagnosis`).

    Attributes
    ----------
    generations : DataFrame
        :data:`~lvlm_probe.schema.GENERATION_COLUMNS`, one row per item (``failed`` holds the reason for items
        that could not be run).
    errors : DataFrame
        :data:`~lvlm_probe.schema.ERROR_COLUMNS`, one row per error.
    evidence : DataFrame
        ``errors`` plus :data:`~lvlm_probe.schema.EVIDENCE_COLUMNS`.
    diagnoses : DataFrame
        One row per error: :data:`~lvlm_probe.schema.DIAGNOSIS_COLUMNS`, a ``score_<stage>`` per stage, and the
        evidence.
    probe_curves : DataFrame
        :func:`~lvlm_probe.probing.probe_sweep` rows (probe score per site and concept).
    manifest : dict
        Model, settings, seeds, thresholds, library versions, timings.
    items : list of Item
        The diagnosed items (for images in reports).
    detected : DataFrame
        Items without ground truth, through the detector (:func:`~lvlm_probe.detection.trace_claims`): one row
        per claim with ``p_misaligned``, ``flagged`` and, for flagged claims, ``stage``, ``level``, ``rule`` and
        ``needs_ground_truth``; empty when every item had a scene graph.
    reference : DataFrame
        The reference set: the run's correct claims with the same evidence as the errors
        (:mod:`lvlm_probe.tracing.reference`); each error's ``q_*`` columns are quantiles within it.
    """

    generations: pd.DataFrame
    errors: pd.DataFrame
    evidence: pd.DataFrame
    diagnoses: pd.DataFrame
    probe_curves: pd.DataFrame
    manifest: dict
    items: list = field(default_factory=list, repr=False)
    detected: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    reference: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def failed(self) -> dict[str, str]:
        """Item id → why it could not be run."""
        return Run(self.generations, self.errors).failed

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

    def flagged(self) -> pd.DataFrame:
        """The detector's flagged claims of the items without ground truth, with their traced stage."""
        d = self.detected
        return d[d.flagged.astype(bool)] if len(d) and "flagged" in d else d

    def __repr__(self) -> str:
        n_fail = len(self.failed)
        det = f", {len(self.flagged())} of {len(self.detected)} claims flagged without ground truth" \
            if len(self.detected) else ""
        return (f"DiagnosisReport({len(self.generations) - n_fail} items ran, {n_fail} failed, "
                f"{len(self.errors)} errors, levels {self.level_counts().to_dict() if len(self.diagnoses) else {}}"
                f"{det})")

    def _repr_html_(self) -> str:
        """Notebook view: counts, errors per (kind, level, stage), and the failed items with their reasons."""
        import html

        n_fail = len(self.failed)
        parts = [f"<b>DiagnosisReport</b> of <code>{html.escape(str(self.manifest.get('model', '')))}</code>: "
                 f"{len(self.generations) - n_fail} items diagnosed, {n_fail} failed, {len(self.errors)} "
                 f"error{'s' if len(self.errors) != 1 else ''}"]
        if len(self.diagnoses):
            parts.append(self.summary().to_html(index=False, float_format=lambda v: f"{v:.2f}"))
        if n_fail:
            failed = pd.DataFrame(list(self.failed.items())[:20], columns=["item_id", "reason"])
            parts.append("<b>failed items</b>" + failed.to_html(index=False))
        if len(self.detected):
            fl = self.flagged()
            parts.append(f"<b>without ground truth</b>: {len(fl)} of {len(self.detected)} claims flagged by the "
                         "detector")
            if len(fl):
                parts.append(fl.groupby(["kind", "stage"]).size().rename("claims").reset_index().to_html(index=False))
        return "\n".join(parts)

    def write(self, out: str | os.PathLike) -> Path:
        """Write the tables (``generations.csv``, ``errors.csv``, ``evidence.csv``, ``probe_curves.csv``,
        ``reference.csv``, ``diagnosis.csv``, and ``detected.csv`` when items went through the detector) and ``manifest.json`` under
        ``out``, each atomically; :meth:`read` reads them back.

        Rendering (``report.html``, figures) is :func:`lvlm_probe.render_diagnosis`.
        """
        out = Path(out)
        write_tables(out, {"generations": self.generations, "errors": self.errors, "evidence": self.evidence,
                           "probe_curves": self.probe_curves, "reference": self.reference,
                           "diagnosis": self.diagnoses,
                           **({"detected": self.detected} if len(self.detected) else {})})
        atomic_write_text(out / "manifest.json", json.dumps(self.manifest, indent=1, default=str))
        return out

    @classmethod
    def read(cls, out: str | os.PathLike, items: Sequence[Item] = ()) -> DiagnosisReport:
        """A report written by :meth:`write` (or by ``diagnose(..., out=DIR)``); ``items`` for images."""
        out = Path(out)
        if not (out / "generations.csv").is_file() and (out / "detected.csv").is_file():  # detector only
            run, ev, dx = _empty_judged()
            t = {"generations": run.generations, "errors": run.errors, "diagnosis": dx.frame}
        else:
            t = read_tables(out, ("generations", "errors", "diagnosis"))
            ev = Evidence.read(out)
        man = out / "manifest.json"
        manifest = json.loads(man.read_text(encoding="utf-8")) if man.is_file() else {}
        detected = read_tables(out, ("detected",))["detected"] if (out / "detected.csv").is_file() else pd.DataFrame()
        return cls(t["generations"], t["errors"], ev.frame, t["diagnosis"], ev.probe_curves, manifest, list(items),
                   detected, ev.reference)


def diagnose(
    model: LVLM | str,
    items: Sequence[Item],
    config: DiagnoseConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    training_stats: Any = "auto",
    probe_items: Sequence[Item] | None = None,
    judge: Judge | None = None,
    vocabulary: Any = None,
    detector: Any = None,
    progress: bool = True,
) -> DiagnosisReport:
    """Find the misaligned outputs of a model on items with ground truth and say why each happened.

    Parameters
    ----------
    model : LVLM or str
        A loaded model, or a name for :func:`lvlm_probe.load` (hub id, directory, ``organism:NAME``).
    items : sequence of Item
        Each with an image, a prompt and a scene graph (``item.scene``); ``item.task`` selects caption or QA
        judging.
    config : DiagnoseConfig, optional
        Decoding, batch size, probe-set size, sites, thresholds, seed.
    out : path, optional
        Resumable run directory: each step's tables are written atomically with the hash of their settings; a
        rerun resumes at the first missing or changed step. It is created and checked for writability before
        anything is computed.
    overwrite : bool
        Clear ``out`` first (also needed when ``out`` is a non-empty directory that holds no diagnosis run).
    training_stats, probe_items :
        See :func:`~lvlm_probe.tracing.collect.collect_evidence`.
    judge, vocabulary :
        See :func:`~lvlm_probe.tracing.run.generate_and_judge`.
    detector : HallucinationDetector, optional
        A fitted :class:`~lvlm_probe.detection.HallucinationDetector` (or one read with ``.load(PATH)``). Items
        without a scene graph then go through it (:func:`~lvlm_probe.detection.trace_claims`): every claim of
        their generations is scored, the claims at or above ``config.detect_threshold`` are traced with the
        evidence that needs no truth, and the result is ``report.detected``. Without a detector every item needs a
        scene graph.

    Returns
    -------
    DiagnosisReport
        ``.failed`` lists the items that could not be run (bad image, ...); the others are diagnosed;
        ``.detected`` holds the claims of items without ground truth.

    Notes
    -----
    Under an initialised ``torch.distributed`` group of more than one process (e.g. ``torchrun -m lvlm_probe
    diagnose``), every rank calls ``diagnose`` with the same arguments and its own replica of the model: the
    generation, the token evidence and the probe-feature capture (:func:`lvlm_probe.capture`) are split over the
    ranks by whole batches, the probes and the interventional confirmation run on rank 0, and every rank
    returns the same report, equal to a one-process run. Only rank 0 writes ``out``, which every rank reads when
    a step resumes (on several nodes, ``out`` and ``TMPDIR`` must be on a shared file system).
    """
    t0 = time.time()
    items = check_items(items, need_scene=detector is None)
    writer = (process_group() or (0, 1))[0] == 0  # under a process group only rank 0 writes the out dir
    outdir = on_rank0(lambda: RunDir.open(out, overwrite=overwrite) if out is not None else None, "opening out")
    if isinstance(model, str):
        import lvlm_probe as lp

        model = lp.load(model)
    ctx = _Context(model, (config or DiagnoseConfig()).resolve(model), _Steps(outdir, writer), training_stats,
                   probe_items, judge, vocabulary, progress)
    judged = [it for it in items if it.scene is not None]
    run, ev, dx = _judged_steps(ctx, judged)
    detected = _detect_step(ctx, [it for it in items if it.scene is None], detector)
    manifest = _manifest(model, items, run, ctx.cfg, training_stats, probe_items, ctx.steps.timings, t0)
    manifest.update(n_judged=len(judged), n_unjudged=len(items) - len(judged), n_claims_detected=len(detected),
                    n_flagged=int(detected.flagged.sum()) if len(detected) else 0)
    rep = DiagnosisReport(run.generations, run.errors, ev.frame, dx.frame, ev.probe_curves, manifest, items,
                          detected, ev.reference)
    if outdir is not None and writer:
        atomic_write_text(outdir.path / "manifest.json", json.dumps(manifest, indent=1, default=str))
        outdir.add_files("manifest", ["manifest.json"])
        outdir.remove_stale()
    return rep


@dataclass
class _Steps:
    """Runs a diagnosis step or resumes it from the out dir (only the writer rank writes); records timings."""

    outdir: Any
    writer: bool
    timings: dict = field(default_factory=dict)

    def __call__(self, name: str, h: str, compute: Any, read: Any) -> Any:
        outdir = self.outdir
        if outdir is not None and on_rank0(lambda: outdir.done(name, h), "reading out"):
            self.timings[name] = "resumed"
            return read(outdir.path)
        t1 = time.time()
        res = compute()
        self.timings[name] = round(time.time() - t1, 1)
        if outdir is not None and self.writer:
            outdir.finish(name, h, res.write(outdir.path))
        barrier()
        return res


@dataclass
class _Context:
    """What every step of one diagnosis reads."""

    model: LVLM
    cfg: DiagnoseConfig
    steps: _Steps
    training_stats: Any
    probe_items: Sequence[Item] | None
    judge: Judge | None
    vocabulary: Any
    progress: bool


def _judged_steps(ctx: _Context, items: list[Item]) -> tuple[Run, Evidence, _Diagnoses]:
    """Generate and judge, collect evidence, run the cascade (and confirm) on the items with ground truth."""
    model, cfg, step = ctx.model, ctx.cfg, ctx.steps
    if not items:
        return _empty_judged()
    h_run = settings_hash(_model_key(model), _items_key(items), cfg.generate_kwargs(), cfg.batch_size,
                          _callable_key(ctx.judge), _callable_key(ctx.vocabulary))
    h_ev = settings_hash(h_run, "reference-set", cfg.probe_sites, cfg.curve_sites, cfg.n_probe_items, cfg.seed,
                         _stats_key(ctx.training_stats),
                         None if ctx.probe_items is None else _items_key(ctx.probe_items))
    h_dx = settings_hash(h_ev, cfg.thresholds.to_dict())
    run = step("run", h_run, lambda: _generate(model, items, cfg, ctx.judge, ctx.vocabulary, ctx.progress), Run.read)
    ev = step("evidence", h_ev, lambda: collect_evidence(
        model, items, run, cfg, training_stats=ctx.training_stats, probe_items=ctx.probe_items,
        vocabulary=ctx.vocabulary, progress=ctx.progress), Evidence.read)
    dx = step("diagnoses", h_dx, lambda: _Diagnoses(cascade(ev.frame, cfg.thresholds)), _Diagnoses.read)
    if cfg.confirm:
        h_cf = settings_hash(h_dx, "confirm", cfg.max_new_tokens)
        dx = step("confirm", h_cf, lambda: _Diagnoses(on_rank0(
            lambda: _confirmed(model, items, dx.frame, cfg, ctx.vocabulary, ctx.progress), "confirm")),
            _Diagnoses.read)
    return run, ev, dx


def _empty_judged() -> tuple[Run, Evidence, _Diagnoses]:
    """The judged steps' records when every item lacks ground truth (all went to the detector)."""
    from lvlm_probe.schema import ERROR_COLUMNS, EVIDENCE_COLUMNS, GENERATION_COLUMNS

    errors = pd.DataFrame(columns=list(ERROR_COLUMNS))
    run = Run(pd.DataFrame(columns=list(GENERATION_COLUMNS)), errors)
    ev = Evidence(pd.DataFrame(columns=list(dict.fromkeys([*errors.columns, *EVIDENCE_COLUMNS]))), pd.DataFrame())
    return run, ev, _Diagnoses(cascade(ev.frame))


def _detect_step(ctx: _Context, items: list[Item], detector: Any) -> pd.DataFrame:
    """Claims of the items without ground truth, scored by the detector and traced where flagged (rank 0)."""
    from lvlm_probe.detection.trace import trace_claims

    if not items:
        return pd.DataFrame()
    cfg = ctx.cfg
    h = settings_hash(_model_key(ctx.model), _items_key(items), cfg.generate_kwargs(), cfg.batch_size,
                      cfg.n_probe_items, cfg.seed, cfg.detect_threshold, detector.to_dict(),
                      _stats_key(ctx.training_stats), _callable_key(ctx.vocabulary))
    return ctx.steps("detect", h, lambda: _Detected(on_rank0(lambda: trace_claims(
        ctx.model, items, detector, config=cfg, threshold=cfg.detect_threshold, training_stats=ctx.training_stats,
        vocabulary=ctx.vocabulary, progress=ctx.progress), "detect")), _Detected.read).frame


def _generate(model: LVLM, items: list[Item], cfg: DiagnoseConfig, judge: Judge | None, vocabulary: Any,
              progress: bool) -> Run:
    from lvlm_probe.tracing.run import generate_and_judge

    return generate_and_judge(model, items, cfg, judge=judge, vocabulary=vocabulary, progress=progress)


def _reference(model: LVLM) -> LVLM | None:
    """The model a front-end organism names as sharing its LLM (``run_defaults["reference"]``), loaded like it."""
    name = (getattr(model, "run_defaults", None) or {}).get("reference")
    if not name:
        return None
    from lvlm_probe.models.lvlm import load

    return load(name, device=str(model.device), dtype=model.dtype)


def _confirmed(model: LVLM, items: list[Item], diagnoses: pd.DataFrame, cfg: DiagnoseConfig, vocabulary: Any,
               progress: bool) -> pd.DataFrame:
    """The diagnoses with ``confirmed`` and ``confirmed_by`` (:func:`~lvlm_probe.tracing.confirm.confirm_diagnoses`)
    after ``causes``, and ``confidence`` from the calibrator that also reads ``confirmed``."""
    from lvlm_probe.tracing.calibration import shipped_calibrator
    from lvlm_probe.tracing.confirm import confirm_diagnoses

    c = confirm_diagnoses(model, items, diagnoses, max_new_tokens=cfg.max_new_tokens, vocabulary=vocabulary,
                          progress=progress, reference=_reference(model))
    d = diagnoses.drop(columns=["confirmed", "confirmed_by"], errors="ignore")
    at = list(d.columns).index("rule") + 1
    for k, col in enumerate(("confirmed", "confirmed_by")):
        d.insert(at + k, col, c[col])
    if len(d):
        d["confidence"] = shipped_calibrator(confirmation=True).predict(d)
    return d


@dataclass
class _Diagnoses:
    """The cascade step's output as a step record (write/read like the other steps)."""

    frame: pd.DataFrame

    def write(self, out: Path) -> list[str]:
        return write_tables(out, {"diagnosis": self.frame})

    @classmethod
    def read(cls, out: Path) -> _Diagnoses:
        return cls(read_tables(out, ("diagnosis",))["diagnosis"])


@dataclass
class _Detected:
    """The detect step's output: one row per claim of the items without ground truth (``detected.csv``)."""

    frame: pd.DataFrame

    def write(self, out: Path) -> list[str]:
        return write_tables(out, {"detected": self.frame})

    @classmethod
    def read(cls, out: Path) -> _Detected:
        return cls(read_tables(out, ("detected",))["detected"])


def _manifest(model: LVLM, items: list[Item], run: Run, cfg: DiagnoseConfig, training_stats: Any,
              probe_items: Sequence[Item] | None, timings: dict, t0: float) -> dict:
    return {
        "model": str(getattr(model, "name", "")), "model_path": str(getattr(model, "path", "")),
        "n_parameters": int(sum(p.numel() for p in model.hf_model.parameters())),
        "n_items": len(items), "n_failed": len(run.failed), "failed": run.failed, "n_errors": int(len(run.errors)),
        "n_probe_items": len(probe_items) if probe_items is not None else (
            cfg.n_probe_items if (model.run_defaults or {}).get("probe_world") else 0),
        "config": cfg.to_dict(), "generate": cfg.generate_kwargs(), "seed": cfg.seed,
        "thresholds": cfg.thresholds.to_dict(), "probe_sites": list(cfg.probe_sites),
        "curve_sites": list(dict.fromkeys([*cfg.probe_sites, *(cfg.curve_sites or [])])),
        "training_stats": _stats_key(training_stats), "run_defaults": dict(model.run_defaults or {}),
        "stages": list(STAGES), "score_columns": [score_column(s) for s in STAGES],
        "seconds": round(time.time() - t0, 1), "timings": timings, "versions": _versions(),
    }


# ---- keys of the settings a step depends on ---------------------------------------------------------------
def _model_key(model: LVLM) -> dict:
    return {"name": str(model.name), "config_hash": model.adapter.config_hash(), "dtype": str(model.dtype),
            "run_defaults": model.run_defaults}


def _image_key(image: Any) -> Any:
    if isinstance(image, (list, tuple)):
        return [_image_key(x) for x in image]
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        st = p.stat() if p.is_file() else None
        return [str(p), st.st_size if st else None, st.st_mtime_ns if st else None]
    if image is None:
        return None
    import hashlib

    try:
        return hashlib.sha256(image.tobytes()).hexdigest()[:16] + f"{image.size}{image.mode}"
    except AttributeError:
        return repr(image)


def _items_key(items: Sequence[Item]) -> str:
    rows = [[it.id, it.prompt, it.task, _image_key(it.image),
             it.scene.to_dict() if hasattr(it.scene, "to_dict") else repr(it.scene)] for it in items]
    return settings_hash(rows)


def _stats_key(training_stats: Any) -> Any:
    if training_stats is None or isinstance(training_stats, str):
        return training_stats
    if isinstance(training_stats, os.PathLike):
        return str(training_stats)
    return type(training_stats).__name__ + settings_hash(repr(training_stats))


def _callable_key(obj: Any) -> Any:
    return None if obj is None else f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"


def _versions() -> dict[str, str]:
    from lvlm_probe.capture.store import library_versions

    try:
        return library_versions()
    except Exception:  # noqa: BLE001 - versions are informative only
        return {}


# ---- the resumable out dir --------------------------------------------------------------------------------
class RunDir:
    """A diagnosis out dir: ``steps.json`` records each finished step's settings hash and files.

    A step counts as done when its hash matches and its files exist; finishing a step drops every later step's
    record (they depend on it). :meth:`remove_stale` deletes files of an earlier run that this run did not write.
    """

    def __init__(self, path: Path, steps: dict, previous_files: set[str]) -> None:
        self.path = path
        self.steps = steps
        self.previous_files = previous_files
        self.written: set[str] = set()

    @classmethod
    def open(cls, out: str | os.PathLike, *, overwrite: bool = False) -> RunDir:
        """Create ``out`` (or reopen a run there) and check that it is writable, before any compute."""
        import shutil

        path = Path(out)
        if path.exists() and not path.is_dir():
            raise InputError(f"--out {str(path)!r} is a file; give a directory")
        index = path / STEPS_FILE
        if overwrite and path.is_dir() and any(path.iterdir()):
            if not index.is_file() and not (path / "manifest.json").is_file():
                raise InputError(f"--out {str(path)!r} is not a diagnosis run directory; refusing to clear it "
                                 "(choose an empty or new directory)")
            shutil.rmtree(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test-{os.getpid()}"
            probe.write_text("ok", encoding="utf-8")
            probe.unlink()
        except OSError as err:
            raise InputError(f"--out {str(path)!r} cannot be written ({err.strerror or err}); choose a writable "
                             "directory") from None
        steps: dict = {}
        if index.is_file():
            try:
                steps = json.loads(index.read_text(encoding="utf-8")).get("steps", {})
            except (OSError, ValueError, AttributeError):
                raise InputError(f"{str(index)!r} is corrupt; rerun with --overwrite") from None
        elif (path / "manifest.json").is_file():  # a run written before runs kept steps.json: recompute all
            steps = {}
        elif any(p.name != STEPS_FILE for p in path.iterdir()):
            raise InputError(f"--out {str(path)!r} already holds files that are not a diagnosis run; choose an empty "
                             "directory or pass --overwrite")
        previous = {f for s in steps.values() for f in s.get("files", [])}
        for name in RENDERED:
            p = path / name
            previous.update(str(q.relative_to(path)) for q in ([p] if p.is_file() else p.rglob("*") if p.is_dir()
                                                                else []) if q.is_file())
        return cls(path, steps, previous)

    def done(self, step: str, h: str) -> bool:
        s = self.steps.get(step)
        ok = bool(s) and s.get("hash") == h and all((self.path / f).exists() for f in s.get("files", []))
        if ok:
            self.written.update(s.get("files", []))
        return ok

    def finish(self, step: str, h: str, files: list[str]) -> None:
        names = list(STEP_TABLES) + ["manifest"]
        if step in names:  # later steps depend on this one
            for later in names[names.index(step) + 1:]:
                self.steps.pop(later, None)
        self.steps[step] = {"hash": h, "files": sorted(set(files))}
        self.written.update(files)
        atomic_write_text(self.path / STEPS_FILE, json.dumps({"steps": self.steps}, indent=1))

    def add_files(self, step: str, files: list[str]) -> None:
        """Record more files of a finished step (e.g. the rendered report and figures)."""
        s = self.steps.setdefault(step, {"hash": None, "files": []})
        s["files"] = sorted(set(s["files"]) | set(files))
        self.written.update(files)
        atomic_write_text(self.path / STEPS_FILE, json.dumps({"steps": self.steps}, indent=1))

    def remove_stale(self) -> list[str]:
        """Delete files an earlier run wrote that this run did not; returns them."""
        stale = sorted(self.previous_files - self.written)
        for f in stale:
            try:
                (self.path / f).unlink()
            except FileNotFoundError:
                pass
        return stale
