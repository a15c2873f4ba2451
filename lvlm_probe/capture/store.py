"""ActivationStore: sharded safetensors, a header and an append-only journal; resumable, read lazily.

Layout of a store directory::

    manifest.json                     the header: format, version, model, capture settings, library versions
    index.jsonl                       the journal: one JSON line per flushed shard (its items, rows per key,
                                      per-item meta, key specs) or per recorded failure; appended, never rewritten
    index.rank-RRRRR.jsonl            a rank's journal during a distributed capture (merged into index.jsonl)
    shards/shard-000000.safetensors   one file per flush; tensors named ``"{site}|{select}"`` and, for
                                      multi-row selections, ``"{site}|{select}|index"``
    .writer.lock                      the writer's pid, host and start time while a capture runs

A shard is written to a temporary file and renamed into place, then its journal line is appended and fsynced, so a
reader never sees a half-written shard and an interrupted run loses at most the unflushed buffer (a torn journal
line is ignored; see :mod:`lvlm_probe.capture._journal`). Bytes written grow linearly with the number of items.
Items listed in the journal are complete; re-running ``capture`` skips them.

Stores of version 1 (everything in ``manifest.json``) are read as they are and converted to version 2 when a
capture resumes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from lvlm_probe._atomic import atomic_write_bytes
from lvlm_probe.capture._journal import (JOURNAL, append_lines, cut_torn_tail, iter_store_records, rank_journal,
                                         rank_journals, read_journal)
from lvlm_probe.capture._lock import LOCK_FILE, writer_lock  # noqa: F401  (re-exported)
from lvlm_probe.errors import StoreError

FORMAT = "lvlm_probe.activation_store"
VERSION = 2
_HEADER_KEYS = ("model", "settings", "library")


def _is_store_manifest(path: Path) -> bool:
    """Whether ``path`` is the manifest of an activation store (its ``format`` marker)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT

#: Index columns of multi-row selections (one LongTensor column each; -1 where not applicable).
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    "image_patches": ("item", "image", "tile", "row", "col"),
    "generated": ("item", "step", "token_id", "unused"),
}
MULTI_ROW = frozenset(INDEX_COLUMNS)


def key_name(site: str, select: str) -> str:
    return f"{site}|{select}"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape captured numbers."""
    import transformers

    from lvlm_probe._version import __version__

    from importlib import metadata

    try:  # TransformerLens has no __version__ attribute; the installed distribution knows its version
        tl = metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        tl = "unavailable"
    return {"lvlm_probe": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "transformer_lens": tl, "python": platform.python_version()}


def _atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, blob)


def _read_header(mf: Path) -> dict:
    """The manifest of a store, checked for shape (each problem names the file and the key)."""
    try:
        m = json.loads(mf.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{mf}: manifest is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise StoreError(f"{mf}: cannot read the manifest ({exc})") from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise StoreError(f"{mf}: not an lvlm_probe activation store manifest")
    if m.get("version") not in (1, VERSION):
        raise StoreError(f"{mf}: store format version {m.get('version')!r}; this lvlm_probe reads versions 1 and "
                         f"{VERSION} (upgrade lvlm_probe or capture again)")
    for key in _HEADER_KEYS:
        if not isinstance(m.get(key), dict):
            raise StoreError(f"{mf}: manifest key {key!r} is missing or not an object; the manifest is damaged")
    if m["version"] == 1:
        for key, kind in (("keys", dict), ("shards", list), ("items", dict), ("failed", dict)):
            if not isinstance(m.get(key), kind):
                raise StoreError(f"{mf}: manifest key {key!r} is missing or not a{'n object' if kind is dict else ' list'}"
                                 "; the manifest is damaged")
    return m


def _check_shard_record(rec: dict, where: str) -> dict:
    sh = rec["shard"]
    ok = (isinstance(sh, dict) and isinstance(sh.get("file"), str) and isinstance(sh.get("items"), list)
          and all(isinstance(i, str) for i in sh["items"]) and isinstance(sh.get("rows"), dict)
          and isinstance(rec.get("meta", {}), dict) and isinstance(rec.get("keys", {}), dict)
          and all(isinstance(v, dict) for v in rec.get("keys", {}).values()))
    if not ok:
        raise StoreError(f"{where}: a shard record without file, items and rows; the store's index is damaged")
    return sh


def _clear_store(p: Path, mf: Path) -> None:
    """Empty a store directory for ``overwrite`` (never a folder that merely holds some manifest.json)."""
    import shutil

    if not _is_store_manifest(mf):
        raise StoreError(f"{str(p)!r} is not an activation store (its manifest.json is not one); "
                         "overwrite=True (--overwrite) only clears stores; choose another directory")
    for child in p.iterdir():  # everything but the writer's lock
        if child.name != LOCK_FILE:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _next_shard_number(p: Path, prefix: str) -> int:
    """One past the highest shard number with ``prefix`` on disk (listed or orphaned), so a writer never
    replaces a file another journal lists."""
    nums = [int(f.name[len(prefix):-len(".safetensors")]) for f in (p / "shards").glob(f"{prefix}*.safetensors")
            if f.name[len(prefix):-len(".safetensors")].isdigit()]
    return max(nums, default=-1) + 1


def _shard_tensors(records: Sequence[dict]) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, dict]]:
    """Concatenate the records' rows per key: the shard's tensors, rows per key and each key's spec."""
    tensors: dict[str, torch.Tensor] = {}
    n_rows: dict[str, int] = {}
    specs: dict[str, dict] = {}
    for k in sorted({k for r in records for k in r["tensors"]}):
        site, select = k.split("|")
        parts, idx_parts = [], []
        for pos, r in enumerate(records):
            if k not in r["tensors"]:
                raise StoreError(f"item {r['id']!r} lacks {k!r}; every item of a store has every key")
            parts.append(r["tensors"][k])
            if select in MULTI_ROW:
                ix = r["index"][k].clone()
                if ix.ndim != 2 or ix.shape[1] != len(INDEX_COLUMNS[select]):
                    raise StoreError(f"item {r['id']!r}, {k}: index of shape {tuple(ix.shape)}; {select} rows are "
                                     f"indexed by {list(INDEX_COLUMNS[select])}")
                ix[:, 0] = pos
                idx_parts.append(ix)
        cat = torch.cat(parts, dim=0)
        specs[k] = {"site": site, "select": select, "row_shape": list(cat.shape[1:]),
                    "dtype": str(cat.dtype).replace("torch.", ""), "multi_row": select in MULTI_ROW,
                    "index_columns": list(INDEX_COLUMNS.get(select, ()))}
        tensors[k] = cat
        n_rows[k] = int(cat.shape[0])
        if idx_parts:
            tensors[k + "|index"] = torch.cat(idx_parts, dim=0).to(torch.long)
    return tensors, n_rows, specs


class ActivationStore:
    """Read (and, for :func:`lvlm_probe.capture`, append to) an activation store on disk.

    Parameters
    ----------
    path : str or path
        A store directory written by ``capture``.

    Attributes
    ----------
    item_ids : list of str
        Completed items, in store order; the first dimension of :meth:`get` follows it.
    failed : dict of str -> str
        Items that could not be captured, with the reason.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise StoreError(f"{str(self.path)!r} is not an activation store (no manifest.json); "
                             "create one with lvlm_probe.capture(..., out=DIR)")
        header = _read_header(mf)
        self._journal: Path | None = None  # set on a writer: where its appends go
        self._prefix = "shard-"
        self._checked: set[str] = set()  # shard files whose metadata matched their journal entry
        self._m = {k: v for k, v in header.items() if k not in ("keys", "shards", "items", "failed")}
        self._m.update(keys={}, shards=[], failed={})
        self._meta: list[dict | None] = []  # per listed shard: item id -> meta (None on a lean writer)
        self._lean = False
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._files: set[str] = set()
        if header["version"] == 1:
            self._load_v1(header, mf)
        else:
            for where, rec in iter_store_records(self.path):
                self._apply(rec, where)

    def _load_v1(self, header: dict, mf: Path) -> None:
        self._m["keys"] = dict(header["keys"])
        for n, sh in enumerate(header["shards"]):
            meta = {i: (header["items"].get(i) or {}).get("meta", {}) for i in sh.get("items", [])}
            self._apply({"shard": sh, "meta": meta}, f"{mf} shards[{n}]")
        self._m["failed"].update({k: v for k, v in header["failed"].items() if k not in self._pos})

    def _apply(self, rec: dict, where: str) -> None:
        """Add one journal record to the in-memory index (O(size of the record))."""
        if "shard" in rec:
            sh = _check_shard_record(rec, where)
            if sh["file"] in self._files:  # listed already (a merge that was interrupted and ran again)
                return
            if not self._pos.keys().isdisjoint(sh["items"]):
                twice = [i for i in sh["items"] if i in self._pos]
                raise StoreError(f"{where}: item(s) {twice[:3]} are already listed in another shard; the store's "
                                 "index is damaged")
            for k, spec in rec.get("keys", {}).items():
                self._m["keys"].setdefault(k, spec)
            self._m["shards"].append(sh)
            self._files.add(sh["file"])
            self._meta.append(None if self._lean else rec.get("meta", {}))
            self._pos.update(zip(sh["items"], range(len(self._ids), len(self._ids) + len(sh["items"]))))
            self._ids.extend(sh["items"])
            if self._m["failed"]:
                for i in sh["items"]:
                    self._m["failed"].pop(i, None)
        elif isinstance(rec.get("failed"), dict):
            self._m["failed"].update({str(k): str(v) for k, v in rec["failed"].items() if k not in self._pos})
        else:
            raise StoreError(f"{where}: neither a shard nor a failure record; the store's index is damaged")

    # ---- creation / appending (used by capture) ---------------------------------------------
    @classmethod
    def open_for_capture(cls, path: str | os.PathLike, *, model: dict, settings: dict, overwrite: bool = False,
                         order: Mapping[str, int] | None = None, merge: bool = True) -> ActivationStore:
        """Create a store, or reopen a compatible one to resume it (the caller holds the writer lock).

        Parameters
        ----------
        order : mapping of item id -> position, optional
            Item positions, used to list shards left by an interrupted distributed capture in item order.
        merge : bool
            Merge such leftover per-rank journals now (a single-process writer); a distributed capture merges
            them at its end instead.

        Raises
        ------
        StoreError
            The directory holds a store captured with another model or other settings, or is not a store.
        """
        p = Path(path)
        mf = p / "manifest.json"
        if mf.exists() and overwrite:
            _clear_store(p, mf)
        if not mf.exists():
            return cls._create(p, model, settings)
        for tmp in [*p.glob(".*.tmp"), *(p / "shards").glob(".*.tmp")]:  # temp files of a killed writer
            tmp.unlink()
        store = cls(p)
        store._check_compatible(model, settings)
        if store._m["version"] == 1:
            store._upgrade_v1()
        store._become_writer(p / JOURNAL, "shard-")
        if merge and rank_journals(p):
            store.merge_rank_journals(order)
        return store

    @classmethod
    def _create(cls, p: Path, model: dict, settings: dict) -> ActivationStore:
        if p.exists() and any(c.name != LOCK_FILE for c in p.iterdir()):
            raise StoreError(f"{str(p)!r} exists and is not an activation store; choose an empty or new directory")
        (p / "shards").mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "version": VERSION, "created": datetime.now(timezone.utc).isoformat(),
                  "model": model, "settings": settings, "library": library_versions()}
        (p / JOURNAL).touch()
        atomic_write_bytes(p / "manifest.json", json.dumps(header, indent=1).encode())
        store = cls(p)
        store._become_writer(p / JOURNAL, "shard-")
        return store

    def _become_writer(self, journal: Path, prefix: str) -> None:
        """Append to ``journal`` and name new shards ``shards/{prefix}NNNNNN``; keep no per-item meta in memory
        (a writer's memory stays flat in the number of items)."""
        self._journal = journal
        cut_torn_tail(journal)
        self._prefix = prefix
        self._next_shard = _next_shard_number(self.path, prefix)
        self._lean = True
        self._meta = [None] * len(self._meta)

    def _check_compatible(self, model: dict, settings: dict) -> None:
        old = self._m
        if old["model"].get("config_hash") != model.get("config_hash") or old["model"].get("name") != model.get("name"):
            raise StoreError(
                f"{str(self.path)!r} holds activations of model {old['model'].get('name')!r} "
                f"(config {old['model'].get('config_hash')}); use another out directory or overwrite=True "
                "(--overwrite on the command line)")
        diff = {k for k in set(old["settings"]) | set(settings) if old["settings"].get(k) != settings.get(k)}
        if diff:
            raise StoreError(
                f"{str(self.path)!r} was captured with different settings ({sorted(diff)}); resume with the same "
                "sites/select/generation settings, or use another out directory or overwrite=True "
                "(--overwrite on the command line)")

    def _upgrade_v1(self) -> None:
        """Write a version-1 store's listing as a journal, then its header as version 2 (a kill in between
        leaves the version-1 manifest in charge, and the upgrade runs again)."""
        lines = [{"shard": sh, "meta": self._meta[n] or {},
                  **({"keys": self._m["keys"]} if n == 0 else {})} for n, sh in enumerate(self._m["shards"])]
        if self._m["failed"]:
            lines.append({"failed": self._m["failed"]})
        atomic_write_bytes(self.path / JOURNAL, "".join(json.dumps(r, separators=(",", ":")) + "\n"
                                                        for r in lines).encode())
        header = {k: v for k, v in self._m.items() if k not in ("keys", "shards", "items", "failed", "updated")}
        header["version"] = VERSION
        atomic_write_bytes(self.path / "manifest.json", json.dumps(header, indent=1).encode())
        self._m["version"] = VERSION

    def as_rank_writer(self, rank: int) -> ActivationStore:
        """Make this store's appends go to rank ``rank``'s journal and ``shards/rank-RRRRR-NNNNNN`` files (a
        distributed capture; rank 0 merges the journals at the end with :meth:`merge_rank_journals`)."""
        self._become_writer(self.path / rank_journal(rank), f"rank-{rank:05d}-")
        return self

    def _writer(self) -> Path:
        if self._journal is None:
            raise StoreError(f"{str(self.path)!r} was opened for reading; capture appends through "
                             "ActivationStore.open_for_capture")
        return self._journal

    def append(self, records: Sequence[dict]) -> None:
        """Write one shard holding ``records`` and append it to the journal.

        Each record is ``{"id": str, "tensors": {key: Tensor [R, ...]}, "index": {key: LongTensor [R, 4]},
        "meta": dict}``; single-row selections have R == 1 and no index.
        """
        if not records:
            return
        journal = self._writer()
        ids = [r["id"] for r in records]
        dup = [i for i in ids if i in self._pos]
        if dup:
            raise StoreError(f"item(s) {dup[:5]} are already in the store")
        tensors, n_rows, specs = _shard_tensors(records)
        new_keys = {}
        for k, spec in specs.items():
            old = self._m["keys"].get(k)
            if old is None:
                new_keys[k] = spec
            elif old.get("index_columns", spec["index_columns"]) != spec["index_columns"]:
                raise StoreError(f"{k}: the store indexes its rows by {old['index_columns']}, this lvlm_probe by "
                                 f"{spec['index_columns']} (a store written before image tokens had a tile); capture "
                                 "into a new directory or pass overwrite=True")
            elif old["dtype"] != spec["dtype"] or (old["row_shape"] != spec["row_shape"] and not spec["multi_row"]):
                raise StoreError(f"{k}: row shape {spec['row_shape']} {spec['dtype']} differs from the store's "
                                 f"{old['row_shape']} {old['dtype']}")
        rel = f"shards/{self._prefix}{self._next_shard:06d}.safetensors"
        self._next_shard += 1
        _atomic_save_safetensors(self.path / rel, tensors, {"items": json.dumps(ids)})
        line = {"shard": {"file": rel, "items": ids, "rows": n_rows}, "meta": {r["id"]: r.get("meta", {})
                                                                                 for r in records}}
        if new_keys:
            line["keys"] = new_keys
        append_lines(journal, [line])
        self._apply(line, f"{journal}")

    def record_failure(self, item_id: str, reason: str) -> None:
        """Note an item that could not be captured (kept in the journal; the run goes on)."""
        line = {"failed": {item_id: reason}}
        append_lines(self._writer(), [line])
        self._apply(line, str(self._journal))

    def merge_rank_journals(self, order: Mapping[str, int] | None = None) -> None:
        """List the shards and failures of every per-rank journal in the main journal, then delete those files.

        Shards are appended in item order (``order``: item id -> position; else rank by rank), so a distributed
        capture lists its items as a single process would. Shards listed already are skipped, so a merge killed
        half-way runs again safely.
        """
        main = self.path / JOURNAL
        cut_torn_tail(main)
        listed = {rec["shard"]["file"] for _, rec in read_journal(main)[0] if isinstance(rec.get("shard"), dict)}
        shards, failed = [], {}
        for rj in rank_journals(self.path):
            for n, rec in read_journal(rj)[0]:
                if "shard" in rec:
                    sh = _check_shard_record(rec, f"{rj} line {n}")
                    if sh["file"] not in listed:
                        shards.append(rec)
                elif isinstance(rec.get("failed"), dict):
                    failed.update(rec["failed"])
        if order is not None:
            last = len(order)
            shards.sort(key=lambda r: min((order.get(i, last) for i in r["shard"]["items"]), default=last))
        done = {i for r in shards for i in r["shard"]["items"]}
        failed = {k: v for k, v in failed.items() if k not in done}
        append_lines(main, shards + ([{"failed": failed}] if failed else []))
        for rj in rank_journals(self.path):
            rj.unlink()
        self.reload()
        self._become_writer(main, "shard-")

    # ---- reading -----------------------------------------------------------------------------
    def reload(self) -> ActivationStore:
        """Re-read the header and journals (e.g. while another process is capturing)."""
        writer = (self._journal, self._prefix) if self._journal is not None else None
        self.__init__(self.path)  # type: ignore[misc]
        if writer is not None:
            self._become_writer(*writer)
        return self

    @property
    def item_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def failed(self) -> dict[str, str]:
        return dict(self._m["failed"])

    @property
    def manifest(self) -> dict:
        """A copy of everything the store lists: the header plus ``keys``, ``shards``, ``items`` (item id ->
        shard number and meta) and ``failed``."""
        if self._lean:
            return ActivationStore(self.path).manifest
        items = {i: {"shard": n, "meta": (meta or {}).get(i, {})}
                 for n, (sh, meta) in enumerate(zip(self._m["shards"], self._meta)) for i in sh["items"]}
        return json.loads(json.dumps({**self._m, "items": items}))

    @property
    def model(self) -> dict:
        return dict(self._m["model"])

    @property
    def settings(self) -> dict:
        return dict(self._m["settings"])

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._pos

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, items={len(self)}, failed={len(self._m['failed'])}, "
                f"keys={len(self._m['keys'])})")

    def _repr_html_(self) -> str:
        """Notebook view: counts, the (site, selection) keys and the failed items with their reasons."""
        import html

        import pandas as pd

        keys = pd.DataFrame(self.keys(), columns=["site", "selection"])
        keys = keys.groupby("selection").site.agg(lambda s: ", ".join(s) if len(s) <= 6 else
                                                  f"{s.iloc[0]} ... {s.iloc[-1]} ({len(s)} sites)")
        out = [f"<b>ActivationStore</b> <code>{html.escape(str(self.path))}</code>: {len(self)} items, "
               f"{len(self._m['failed'])} failed", keys.to_frame("sites").to_html()]
        if self._m["failed"]:
            failed = pd.DataFrame(list(self._m["failed"].items())[:20], columns=["item_id", "reason"])
            out.append("<b>failed</b>" + failed.to_html(index=False))
        return "\n".join(out)

    def keys(self) -> list[tuple[str, str]]:
        """(site, select) pairs held by the store."""
        return [(v["site"], v["select"]) for v in self._m["keys"].values()]

    def sites(self) -> list[str]:
        return sorted({s for s, _ in self.keys()}, key=_site_sort_key)

    def item_meta(self):
        """DataFrame with one row per completed item: item_id plus its recorded meta."""
        import pandas as pd

        if self._lean:  # a writer keeps no meta in memory
            return ActivationStore(self.path).item_meta()
        rows = [{"item_id": i, **(meta.get(i) or {})} for sh, meta in zip(self._m["shards"], self._meta)
                for i in sh["items"]]
        return pd.DataFrame(rows)

    def _expand(self, site: str, select: str) -> list[str]:
        if site.endswith(".*"):
            stem = site[:-2]
            found = [s for s, sel in self.keys() if sel == select and s.rsplit(".", 1)[0] == stem
                     and s.rsplit(".", 1)[-1].isdigit()]
            if not found:
                raise StoreError(f"store has no {stem}.* × {select!r}; it holds {self._key_list()}")
            return sorted(found, key=_site_sort_key)
        if key_name(site, select) not in self._m["keys"]:
            raise StoreError(f"store has no ({site!r}, {select!r}); it holds {self._key_list()}")
        return [site]

    def _key_list(self) -> str:
        ks = self.keys()
        return ", ".join(f"{s}|{sel}" for s, sel in ks[:12]) + (f" ... ({len(ks)} in all)" if len(ks) > 12 else "")

    @contextlib.contextmanager
    def _open_shard(self, sh: dict) -> Iterator:
        """Open one shard, checked against its journal entry; any damage is a StoreError naming the file."""
        from safetensors import safe_open

        f = self.path / sh["file"]
        try:
            handle = safe_open(str(f), framework="pt")
        except FileNotFoundError:
            raise StoreError(f"{f}: shard file is missing (it holds items {sh['items'][:3]}); restore it, or "
                             "capture again into a new directory") from None
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
            raise StoreError(f"{f}: shard cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                             "the file is truncated or corrupt: restore it, or capture again into a new "
                             "directory") from None
        with handle as fh:
            if sh["file"] not in self._checked:
                self._check_shard(fh, sh, f)
            yield _ShardReader(fh, f)

    def _check_shard(self, fh, sh: dict, f: Path) -> None:
        """The shard holds the items and rows its journal entry lists (catches swapped or foreign files)."""
        meta = fh.metadata() or {}
        try:
            items = json.loads(meta.get("items", "null"))
        except ValueError:
            items = None
        if items != sh["items"]:
            raise StoreError(f"{f}: shard holds items {str(items)[:80]}, but the store's index lists "
                             f"{str(sh['items'])[:80]} for it; the file was replaced or swapped: restore it, or "
                             "capture again into a new directory")
        names = set(fh.keys())
        for k, rows in sh["rows"].items():
            if k not in names:
                raise StoreError(f"{f}: has no tensor {k!r}, which the store's index lists; the shard is damaged: "
                                 "restore it, or capture again into a new directory")
            shape = fh.get_slice(k).get_shape()
            if not shape or shape[0] != rows:
                raise StoreError(f"{f}: tensor {k!r} has shape {shape}, the index says {rows} rows; the shard is "
                                 "damaged: restore it, or capture again into a new directory")
        self._checked.add(sh["file"])

    def _read_key(self, key: str, with_index: bool) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        vals, idxs = [], []
        for sh in self._m["shards"]:
            with self._open_shard(sh) as fh:
                vals.append(fh.get(key))
                idxs.append(fh.get(key + "|index") if with_index else None)
        return vals, idxs

    def get_rows(self, site: str, select: str, *, items: Sequence[str] | None = None):
        """All rows of one (site, select) with a tidy index.

        Returns
        -------
        rows : torch.Tensor [R, ...]
        index : pandas.DataFrame
            One row per tensor row: ``item_id`` plus the selection's index columns
            (``image, tile, row, col`` for image_patches, tile 0 in stores written before tiles; ``step, token_id``
            for generated).
        """
        import pandas as pd

        (site_c,) = self._expand(site, select)
        key = key_name(site_c, select)
        spec = self._m["keys"][key]
        vals, idxs = self._read_key(key, spec["multi_row"])
        frames, tens = [], []
        for sh, v, ix in zip(self._m["shards"], vals, idxs):
            ids = sh["items"]
            if spec["multi_row"]:
                assert ix is not None
                df = pd.DataFrame(ix.numpy(), columns=list(spec.get("index_columns") or INDEX_COLUMNS[select]))
                df.insert(0, "item_id", [ids[i] for i in df["item"].tolist()])
                df = df.drop(columns=["item", "unused"], errors="ignore")
                if select == "image_patches" and "tile" not in df:  # written before tiles: one view per image
                    df.insert(list(df.columns).index("image") + 1, "tile", 0)
            else:
                df = pd.DataFrame({"item_id": ids})
            frames.append(df)
            tens.append(v)
        index = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"item_id": []})
        rows = torch.cat(tens, 0) if tens else torch.empty(0)
        if items is not None:
            want = set(items)
            missing = [i for i in items if i not in self._pos]
            if missing:
                raise StoreError(f"item(s) {missing[:5]} are not in the store")
            m = index["item_id"].isin(want).to_numpy()
            rows, index = rows[torch.from_numpy(m.copy())], index[m].reset_index(drop=True)
        return rows, index

    def get(self, site: str, select: str, *, items: Sequence[str] | None = None, as_numpy: bool = False,
            dtype: torch.dtype | None = None):
        """Activations of one site (or ``stem.*`` for all layers) and selection.

        Parameters
        ----------
        site : str
            A canonical site, or ``"llm.resid_post.*"`` style to stack every stored layer.
        select : str
        items : sequence of str, optional
            Subset (in the given order); default all completed items in store order.
        as_numpy : bool
            Return a numpy array (bfloat16 is widened to float32).
        dtype : torch.dtype, optional
            Cast on read.

        Returns
        -------
        torch.Tensor or numpy.ndarray
            Single-row selections: [N, *row_shape]. Multi-row selections (image_patches,
            generated): [N, R_max, *row_shape], NaN-padded where an item has fewer rows
            (see :meth:`get_rows` for the unpadded rows and their coordinates). With ``*``
            a layer axis is inserted after N.
        """
        sites = self._expand(site, select)
        order = list(items) if items is not None else self._ids
        missing = [i for i in order if i not in self._pos]
        if missing:
            raise StoreError(f"item(s) {missing[:5]} are not in the store")
        outs = [self._get_one(s, select, order) for s in sites]
        out = outs[0] if not site.endswith(".*") else torch.stack(outs, dim=1)
        if dtype is not None:
            out = out.to(dtype)
        if as_numpy:
            if out.dtype == torch.bfloat16:
                out = out.float()
            return out.numpy()
        return out

    def _get_one(self, site: str, select: str, order: Sequence[str]) -> torch.Tensor:
        key = key_name(site, select)
        spec = self._m["keys"][key]
        if not spec["multi_row"]:
            vals, _ = self._read_key(key, False)
            full = torch.cat(vals, 0) if vals else torch.empty(0, *spec["row_shape"])
            if list(order) == self._ids:
                return full
            return full[torch.tensor([self._pos[i] for i in order], dtype=torch.long)]
        rows, index = self.get_rows(site, select)
        per: dict[str, list[int]] = {}
        for r, iid in enumerate(index["item_id"].tolist()):
            per.setdefault(iid, []).append(r)
        rmax = max((len(v) for v in per.values()), default=0)
        dt = rows.dtype if rows.is_floating_point() else torch.float32
        out = torch.full((len(order), rmax, *rows.shape[1:]), float("nan"), dtype=dt)
        for n, iid in enumerate(order):
            sel = per.get(iid, [])
            if sel:
                out[n, : len(sel)] = rows[torch.tensor(sel)]
        return out

    def iter_items(self, site: str, select: str) -> Iterable[tuple[str, torch.Tensor]]:
        """Yield (item_id, rows) shard by shard, holding one shard's tensor in memory at a time."""
        (site_c,) = self._expand(site, select)
        key = key_name(site_c, select)
        multi = self._m["keys"][key]["multi_row"]
        for sh in self._m["shards"]:
            with self._open_shard(sh) as fh:
                v = fh.get(key)
                ix = fh.get(key + "|index")[:, 0] if multi else None
            for k, iid in enumerate(sh["items"]):
                yield iid, (v[k : k + 1] if ix is None else v[ix == k])


class _ShardReader:
    """One open shard: ``get(name)`` with errors that name the file."""

    def __init__(self, fh, f: Path) -> None:
        self.fh, self.f = fh, f

    def get(self, name: str) -> torch.Tensor:
        try:
            return self.fh.get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types
            raise StoreError(f"{self.f}: has no readable tensor {name!r} ({' '.join(str(exc).split())}); the shard "
                             "is damaged: restore it, or capture again into a new directory") from None


def _site_sort_key(site: str) -> tuple:
    order = {"vision": 0, "projector": 1, "llm": 2}
    parts = site.split(".")
    layer = int(parts[-1]) if parts[-1].isdigit() else -1
    return (order.get(parts[0], 9), ".".join(parts[:2]), layer)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
