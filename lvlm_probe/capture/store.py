"""ActivationStore: sharded safetensors + a JSON manifest, append-only, resumable, read lazily.

Layout of a store directory::

    manifest.json                  what is in the store (see ``Manifest keys`` below)
    shards/shard-000000.safetensors one file per flush; tensors named ``"{site}|{select}"``
                                   and, for multi-row selections, ``"{site}|{select}|index"``

A shard and then the manifest are each written to a temporary file and renamed into place, so a
reader never sees a half-written file and an interrupted run loses at most the unflushed buffer.
Items listed in the manifest's shards are complete; re-running ``capture`` skips them.

Manifest keys: ``format``, ``version``, ``model`` (name, revision, config hash, family...),
``settings`` (sites, selections, chat template, generation settings, dtype), ``library``
(versions), ``keys`` (per ``site|select``: shape of one row, dtype, whether multi-row, index
columns), ``shards`` (file, item ids, rows per key), ``items`` (per item: shard and meta),
``failed`` (item id → reason).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from lvlm_probe._atomic import atomic_write_bytes
from lvlm_probe.errors import StoreError

FORMAT = "lvlm_probe.activation_store"
VERSION = 1


#: The writer's lock file inside a store directory: ``{"pid", "host", "started"}`` of the process writing it.
LOCK_FILE = ".writer.lock"


def _lock_holder(lock: Path) -> dict | None:
    try:
        data = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _holder_gone(holder: dict | None) -> bool:
    """A lock is stale when it is unreadable (its writer died while creating it) or its process, on this host, is
    gone. A holder on another host cannot be checked and counts as alive."""
    if holder is None:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the one-writer lock of a store directory (created if needed) while the block runs.

    A second writer gets a :class:`StoreError` naming the holder (pid, host, start time). A lock left by a killed
    process on this host is detected (its pid is gone) and taken over. The lock is removed on exit, also on error.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise StoreError(f"{str(p)!r} is a file; give a directory for the activation store")
    p.mkdir(parents=True, exist_ok=True)
    lock = p / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat()}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if _holder_gone(holder):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise StoreError(
                f"{str(p)!r} is being written by pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('started')}; wait for it to finish (one writer per store), or delete {str(lock)!r} if "
                "that process is gone") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:
        raise StoreError(f"could not take the writer lock {str(lock)!r}; another process keeps creating it")
    try:
        yield lock
    finally:
        if (_lock_holder(lock) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _is_store_manifest(path: Path) -> bool:
    """Whether ``path`` is the manifest of an activation store (its ``format`` marker)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT

#: Index columns of multi-row selections (one LongTensor column each; -1 where not applicable).
INDEX_COLUMNS: dict[str, tuple[str, ...]] = {
    "image_patches": ("item", "image", "row", "col"),
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
        try:
            self._m = json.loads(mf.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise StoreError(f"{mf}: manifest is not valid JSON ({exc})") from exc
        if self._m.get("format") != FORMAT:
            raise StoreError(f"{mf}: not an lvlm_probe activation store manifest")
        self._reindex()

    # ---- creation / appending (used by capture) ---------------------------------------------
    @classmethod
    def open_for_capture(cls, path: str | os.PathLike, *, model: dict, settings: dict,
                         overwrite: bool = False) -> ActivationStore:
        """Create a store, or reopen a compatible one to resume it.

        Raises
        ------
        StoreError
            The directory holds a store captured with another model or other settings.
        """
        p = Path(path)
        mf = p / "manifest.json"
        if mf.exists() and overwrite:
            import shutil

            if not _is_store_manifest(mf):  # never delete a folder that merely holds some manifest.json
                raise StoreError(f"{str(p)!r} is not an activation store (its manifest.json is not one); "
                                 "overwrite=True (--overwrite) only clears stores; choose another directory")
            for child in p.iterdir():  # everything but the writer's lock
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        if mf.exists():
            store = cls(p)
            old = store._m
            if old["model"].get("config_hash") != model.get("config_hash") or old["model"].get("name") != model.get("name"):
                raise StoreError(
                    f"{str(p)!r} holds activations of model {old['model'].get('name')!r} "
                    f"(config {old['model'].get('config_hash')}); use another out directory or overwrite=True "
                    "(--overwrite on the command line)"
                )
            diff = {k for k in set(old["settings"]) | set(settings) if old["settings"].get(k) != settings.get(k)}
            if diff:
                raise StoreError(
                    f"{str(p)!r} was captured with different settings ({sorted(diff)}); resume with the same "
                    "sites/select/generation settings, or use another out directory or overwrite=True "
                    "(--overwrite on the command line)"
                )
            return store
        if p.exists() and any(c.name != LOCK_FILE for c in p.iterdir()):
            raise StoreError(f"{str(p)!r} exists and is not an activation store; choose an empty or new directory")
        (p / "shards").mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT, "version": VERSION, "created": datetime.now(timezone.utc).isoformat(),
            "model": model, "settings": settings, "library": library_versions(),
            "keys": {}, "shards": [], "items": {}, "failed": {},
        }
        atomic_write_bytes(mf, json.dumps(manifest, indent=1).encode())
        return cls(p)

    def _write_manifest(self) -> None:
        self._m["updated"] = datetime.now(timezone.utc).isoformat()
        atomic_write_bytes(self.path / "manifest.json", json.dumps(self._m, indent=1).encode())
        self._reindex()

    def append(self, records: Sequence[dict]) -> None:
        """Write one shard holding ``records`` and list it in the manifest (atomically).

        Each record is ``{"id": str, "tensors": {key: Tensor [R, ...]}, "index": {key: LongTensor [R, 4]},
        "meta": dict}``; single-row selections have R == 1 and no index.
        """
        if not records:
            return
        keys = self._m["keys"]
        tensors: dict[str, torch.Tensor] = {}
        n_rows: dict[str, int] = {}
        all_keys = sorted({k for r in records for k in r["tensors"]})
        for k in all_keys:
            site, select = k.split("|")
            parts, idx_parts = [], []
            for pos, r in enumerate(records):
                if k not in r["tensors"]:
                    raise StoreError(f"item {r['id']!r} lacks {k!r}; every item of a store has every key")
                t = r["tensors"][k]
                parts.append(t)
                if select in MULTI_ROW:
                    ix = r["index"][k].clone()
                    ix[:, 0] = pos
                    idx_parts.append(ix)
            cat = torch.cat(parts, dim=0)
            spec = {"site": site, "select": select, "row_shape": list(cat.shape[1:]),
                    "dtype": str(cat.dtype).replace("torch.", ""), "multi_row": select in MULTI_ROW,
                    "index_columns": list(INDEX_COLUMNS.get(select, ()))}
            if k in keys and (keys[k]["row_shape"] != spec["row_shape"] or keys[k]["dtype"] != spec["dtype"]):
                if not spec["multi_row"] or keys[k]["dtype"] != spec["dtype"]:
                    raise StoreError(f"{k}: row shape {spec['row_shape']} {spec['dtype']} differs from the store's "
                                     f"{keys[k]['row_shape']} {keys[k]['dtype']}")
            keys.setdefault(k, spec)
            tensors[k] = cat
            n_rows[k] = int(cat.shape[0])
            if idx_parts:
                tensors[k + "|index"] = torch.cat(idx_parts, dim=0).to(torch.long)
        shard_no = len(self._m["shards"])
        rel = f"shards/shard-{shard_no:06d}.safetensors"
        ids = [r["id"] for r in records]
        dup = [i for i in ids if i in self._m["items"]]
        if dup:
            raise StoreError(f"item(s) {dup[:5]} are already in the store")
        _atomic_save_safetensors(self.path / rel, tensors, {"items": json.dumps(ids)})
        self._m["shards"].append({"file": rel, "items": ids, "rows": n_rows})
        for r in records:
            self._m["items"][r["id"]] = {"shard": shard_no, "meta": r.get("meta", {})}
            self._m["failed"].pop(r["id"], None)
        self._write_manifest()

    def record_failure(self, item_id: str, reason: str) -> None:
        """Note an item that could not be captured (kept in the manifest; the run goes on)."""
        self._m["failed"][item_id] = reason
        self._write_manifest()

    # ---- reading -----------------------------------------------------------------------------
    def _reindex(self) -> None:
        self._ids: list[str] = [i for s in self._m["shards"] for i in s["items"]]
        self._pos = {i: k for k, i in enumerate(self._ids)}

    def reload(self) -> ActivationStore:
        """Re-read the manifest (e.g. while another process is capturing)."""
        self.__init__(self.path)  # type: ignore[misc]
        return self

    @property
    def item_ids(self) -> list[str]:
        return list(self._ids)

    @property
    def failed(self) -> dict[str, str]:
        return dict(self._m["failed"])

    @property
    def manifest(self) -> dict:
        """A copy of the manifest."""
        return json.loads(json.dumps(self._m))

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

        rows = [{"item_id": i, **self._m["items"][i].get("meta", {})} for i in self._ids]
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

    def _read_key(self, key: str, with_index: bool) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        from safetensors import safe_open

        vals, idxs = [], []
        for sh in self._m["shards"]:
            with safe_open(str(self.path / sh["file"]), framework="pt") as fh:
                vals.append(fh.get_tensor(key))
                idxs.append(fh.get_tensor(key + "|index") if with_index else None)
        return vals, idxs

    def get_rows(self, site: str, select: str, *, items: Sequence[str] | None = None):
        """All rows of one (site, select) with a tidy index.

        Returns
        -------
        rows : torch.Tensor [R, ...]
        index : pandas.DataFrame
            One row per tensor row: ``item_id`` plus the selection's index columns
            (``image, row, col`` for image_patches; ``step, token_id`` for generated).
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
                df = pd.DataFrame(ix.numpy(), columns=list(INDEX_COLUMNS[select]))
                df.insert(0, "item_id", [ids[i] for i in df["item"].tolist()])
                df = df.drop(columns=["item", "unused"], errors="ignore")
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
        from safetensors import safe_open

        (site_c,) = self._expand(site, select)
        key = key_name(site_c, select)
        multi = self._m["keys"][key]["multi_row"]
        for sh in self._m["shards"]:
            with safe_open(str(self.path / sh["file"]), framework="pt") as fh:
                v = fh.get_tensor(key)
                if not multi:
                    for k, iid in enumerate(sh["items"]):
                        yield iid, v[k : k + 1]
                    continue
                ix = fh.get_tensor(key + "|index")[:, 0]
                for k, iid in enumerate(sh["items"]):
                    yield iid, v[ix == k]


def _site_sort_key(site: str) -> tuple:
    order = {"vision": 0, "projector": 1, "llm": 2}
    parts = site.split(".")
    layer = int(parts[-1]) if parts[-1].isdigit() else -1
    return (order.get(parts[0], 9), ".".join(parts[:2]), layer)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
