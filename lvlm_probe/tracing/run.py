"""Step 1 of a diagnosis: generate on every item and judge each output against its scene graph → :class:`Run`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from lvlm_probe._dist import batches, gather, process_group, rank_share
from lvlm_probe._policy import run_isolated
from lvlm_probe.data.items import Item
from lvlm_probe.errors import InputError
from lvlm_probe.models import LVLM, Generation
from lvlm_probe.schema import ERROR_COLUMNS, GENERATION_COLUMNS
from lvlm_probe.tracing.config import DiagnoseConfig

#: A judge: (generation of one batch, its items) → misalignment frame with ``b`` (row in the batch).
Judge = Callable[[Generation, Sequence[Item]], pd.DataFrame]
#: Columns of the tables that hold lists (stored as JSON in CSV files).
LIST_COLUMNS: tuple[str, ...] = ("tokens", "token_indices")


@dataclass
class Run:
    """Generations and judged errors of a set of items.

    Attributes
    ----------
    generations : DataFrame
        :data:`~lvlm_probe.schema.GENERATION_COLUMNS`, one row per item in item order; items that could not be
        run have ``failed`` set (the reason) and no text.
    errors : DataFrame
        :data:`~lvlm_probe.schema.ERROR_COLUMNS`: the misalignment frame (``item_id`` the item id) plus
        ``error_id`` (``"<item_id>#<k>"``), ``b`` (row in its batch) and ``batch``.
    """

    generations: pd.DataFrame
    errors: pd.DataFrame
    settings: dict = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        """Item id → why it could not be run."""
        g = self.generations
        bad = g[g.failed.notna()]
        return dict(zip(bad.item_id.astype(str), bad.failed.astype(str)))

    def __repr__(self) -> str:
        return (f"Run({len(self.generations)} items, {len(self.errors)} errors, {len(self.failed)} failed)")

    def write(self, out: str | Path) -> list[str]:
        """Write ``generations.csv`` and ``errors.csv`` (atomically); returns the file names."""
        return write_tables(out, {"generations": self.generations, "errors": self.errors})

    @classmethod
    def read(cls, out: str | Path) -> Run:
        t = read_tables(out, ("generations", "errors"))
        return cls(t["generations"], t["errors"])


def generate_and_judge(model: LVLM, items: Sequence[Item], config: DiagnoseConfig | None = None, *,
                       judge: Judge | None = None, vocabulary: Any = None, progress: bool = True) -> Run:
    """Generate on every item (in batches) and judge each output; a bad item never fails its neighbours.

    Parameters
    ----------
    model : LVLM
    items : sequence of Item
        Each with an image, a prompt and ``scene`` (the ground truth); ``task`` selects caption or QA judging.
    config : DiagnoseConfig, optional
        ``max_new_tokens``, ``batch_size``, ``decoding`` (resolved against the model's run defaults), ``seed``.
    judge : callable, optional
        ``judge(generation, items) -> misalignment frame`` with a ``b`` column; default
        :func:`lvlm_probe.judge_batch` with ``vocabulary``.
    vocabulary : Vocabulary, optional

    Returns
    -------
    Run

    Notes
    -----
    Under an initialised ``torch.distributed`` group of more than one process, every rank calls this with the same
    arguments: rank ``r`` generates its contiguous block of the batches one process would run, and every rank
    returns the whole run, equal to a one-process run (same batches, same padding, the same seed per batch).
    """
    from lvlm_probe.misalignment import judge_batch

    cfg = (config or DiagnoseConfig()).resolve(model)
    items = check_items(items)
    judge = judge or (lambda gen, chunk: judge_batch(gen, items=chunk, vocabulary=vocabulary))
    kw = cfg.generate_kwargs()
    chunks = batches(items, cfg.batch_size)
    group = process_group()
    if group is not None:  # data-parallel: each rank its block of whole batches, gathered in batch order
        chunks = rank_share(chunks, *group)
    parts = gather(lambda: _generate_batches(model, chunks, kw, judge, progress and not (group and group[0])),
                   "generate + judge")
    rows, failed, err_frames = _merge_parts(parts)
    for it in items:
        if it.id in failed:
            rows[it.id] = {"item_id": it.id, "task": it.task, "prompt": it.prompt, "text": None, "tokens": None,
                           "n_errors": 0, "batch": None, "row": None, "failed": failed[it.id]}
    if len(failed) == len(items):
        first = next(iter(failed.items()))
        raise InputError(f"every item failed ({len(items)}); the first, {first[0]!r}: {first[1]}")
    generations = pd.DataFrame([rows[it.id] for it in items], columns=list(GENERATION_COLUMNS))
    return Run(generations, _errors_frame(err_frames), {"generate": kw, "batch_size": cfg.batch_size})


@dataclass
class _Part:
    """One rank's share of a run: rows by item id, failures, error frames with the part's own batch numbers."""

    rows: dict[str, dict]
    failed: dict[str, str]
    errors: list[pd.DataFrame]
    n_batches: int


def _generate_batches(model: LVLM, chunks: Sequence[Sequence[Item]], kw: dict, judge: Judge, progress: bool
                      ) -> _Part:
    """Generate and judge each batch; a failing batch is retried item by item (each item its own batch)."""
    failed: dict[str, str] = {}
    rows: dict[str, dict] = {}
    err_frames: list[pd.DataFrame] = []
    batch_no = 0

    def run(chunk: Sequence[Item]) -> tuple[Generation, pd.DataFrame]:
        batch = model.prepare([it.image for it in chunk], [it.prompt for it in chunk], item_ids=[it.id for it in chunk])
        gen = model.generate(batch, **kw)
        return gen, judge(gen, list(chunk))

    for chunk in tqdm(chunks, desc="generate + judge", disable=not progress):
        for sub, (gen, errs) in run_isolated(chunk, run, lambda it, why: failed.__setitem__(it.id, why)):
            for b, it in enumerate(sub):
                n_err = int((errs.b == b).sum()) if len(errs) else 0
                rows[it.id] = {"item_id": it.id, "task": it.task, "prompt": it.prompt, "text": gen.text[b],
                               "tokens": list(gen.tokens[b]), "n_errors": n_err, "batch": batch_no, "row": b,
                               "failed": None}
            if len(errs):
                err_frames.append(errs.assign(batch=batch_no))
            batch_no += 1
    return _Part(rows, failed, err_frames, batch_no)


def _merge_parts(parts: Sequence[_Part]) -> tuple[dict[str, dict], dict[str, str], list[pd.DataFrame]]:
    """Join the ranks' parts in rank order, numbering batches as one process would (rank r's batches follow
    rank r-1's)."""
    rows: dict[str, dict] = {}
    failed: dict[str, str] = {}
    errors: list[pd.DataFrame] = []
    offset = 0
    for part in parts:
        for item_id, row in part.rows.items():
            rows[item_id] = {**row, "batch": row["batch"] + offset}
        failed.update(part.failed)
        errors.extend(e.assign(batch=e["batch"] + offset) for e in part.errors)
        offset += part.n_batches
    return rows, failed, errors


def check_items(items: Sequence[Item], *, need_scene: bool = True) -> list[Item]:
    """Items a diagnosis can take: at least one, unique ids, each with a scene graph (or, with ``need_scene``
    False, a scene graph or none: items without one go to the detector)."""
    from lvlm_probe.data.scene import SceneGraph

    if items is None or isinstance(items, (str, bytes, dict)):
        raise InputError(f"items must be a list of lvlm_probe.Item, got {type(items).__name__}; read a file with "
                         "lp.read_items(PATH)")
    items = list(items)
    if not items:
        raise InputError("diagnose needs at least one item")
    for k, it in enumerate(items):
        if not isinstance(it, Item):
            raise InputError(f"items[{k}] is a {type(it).__name__}, not an Item; build Item(id=..., image=..., "
                             "prompt=..., scene=...) or read a file with lp.read_items(PATH)")
    ids = [it.id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"item ids must be unique; repeated: {dup[:5]}")
    missing = [it.id for it in items if it.scene is None]
    if missing and need_scene:
        raise InputError(f"items {missing[:5]} have no scene graph; diagnose judges outputs against item.scene "
                         "(see docs/howto/items-file.md for the format), or pass a fitted detector "
                         "(diagnose(..., detector=HallucinationDetector.load(PATH)); --detector PATH) to find and "
                         "trace their misaligned claims without ground truth (docs/detection.md)")
    wrong = [it.id for it in items if it.scene is not None and not isinstance(it.scene, SceneGraph)]
    if wrong:
        raise InputError(f"items {wrong[:5]} have a scene that is not a SceneGraph (got "
                         f"{type(next(it.scene for it in items if it.id == wrong[0])).__name__}); pass "
                         "SceneGraph(...) or its to_dict() form")
    return items


def _errors_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(ERROR_COLUMNS))
    errors = pd.concat(frames, ignore_index=True)
    if "item_id" not in errors.columns:
        raise InputError(f"the judge's frame lacks an item_id column (the item id); it has {list(errors.columns)}")
    errors["item_id"] = errors["item_id"].astype(str)
    errors.insert(0, "error_id", [f"{it}#{k}" for k, it in enumerate(errors["item_id"])])
    return errors


# ---- tables on disk ---------------------------------------------------------------------------------------
def write_tables(out: str | Path, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Write each frame as ``<name>.csv`` (list columns as JSON), atomically; returns the file names."""
    from lvlm_probe._atomic import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name, df in tables.items():
        df = df.copy()
        for c in LIST_COLUMNS:
            if c in df:
                df[c] = [json.dumps(list(v)) if isinstance(v, (list, tuple)) else None for v in df[c]]
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
        names.append(f"{name}.csv")
    return names


def read_tables(out: str | Path, names: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Read frames written by :func:`write_tables` (list columns parsed back; ids as strings)."""
    out = Path(out)
    res = {}
    for name in names:
        p = out / f"{name}.csv"
        if not p.is_file():
            raise InputError(f"{str(p)!r} does not exist; {str(out)!r} holds no complete diagnosis run")
        try:
            df = pd.read_csv(p, dtype={"item_id": str, "error_id": str})
        except pd.errors.EmptyDataError:
            df = pd.DataFrame()
        for c in LIST_COLUMNS:
            if c in df:
                df[c] = [json.loads(v) if isinstance(v, str) else None for v in df[c]]
        df = df.astype(object).where(df.notna(), None) if name == "generations" else df
        res[name] = df
    return res
