"""Logit lens: read any residual through the final norm (switchable) and the unembedding.

Works on a live model + :class:`~lvlm_probe.Batch` (one forward with hooks on ``llm.resid_post.*``)
and on residuals read from an :class:`~lvlm_probe.ActivationStore` (the model supplies the norm and
the unembedding). ``word_probability`` gives the probability of given words at every layer and
position; :func:`internal_confidence` reduces it to the max over layers and image tokens (Jiang et
al., ICLR 2025, "internal confidence").
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from lvlm_probe.errors import InputError, UnsupportedModelError
from lvlm_probe.models.records import ROLE_NAMES

#: Columns of :func:`logit_lens`.
LENS_COLUMNS: tuple[str, ...] = ("b", "item_id", "site", "layer", "position", "role", "image", "tile", "row", "col",
                                 "rank",
                                 "token_id", "token", "prob", "logit")
#: Columns of :func:`word_probability`.
WORD_COLUMNS: tuple[str, ...] = ("b", "item_id", "site", "layer", "position", "role", "image", "tile", "row", "col",
                                 "word",
                                 "token_id", "prob", "logit")
#: Roles given to rows read from a store, by selection.
STORE_ROLES = {"image_patches": "image", "generated": "generated", "last_prompt": "last_prompt",
               "image_mean": "image_mean", "text_mean": "text_mean"}


# ---- the lens itself -------------------------------------------------------------------------
def lens_modules(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The LLM's final norm and unembedding (``lm_head``) of a loaded model.

    Named by the family adapter (:meth:`~lvlm_probe.models.FamilyAdapter.lens_modules`), as the raw HF
    modules behind the bridge (calling them fires no bridge hooks).
    """
    try:
        return model.adapter.lens_modules()
    except UnsupportedModelError:
        raise InputError(f"{getattr(model, 'name', 'model')!r}: cannot find the final norm / unembedding of its LLM; "
                         "the logit lens needs both (report the architecture so its adapter can name them)") from None


@torch.no_grad()
def lens_logits(model: Any, resid: torch.Tensor, *, final_norm: bool = True) -> torch.Tensor:
    """Unembed residual vectors: ``lm_head(norm(resid))`` (or ``lm_head(resid)`` with ``final_norm=False``).

    Parameters
    ----------
    model : LVLM
    resid : torch.Tensor [..., d_model]
        Any residual-stream tensor (cast to the model's device and dtype).
    final_norm : bool
        Apply the LLM's final norm first (vl-interp's internal confidence skips it).

    Returns
    -------
    torch.Tensor [..., vocab] float32
        At the last layer's ``llm.resid_post`` this equals the model's logits.
    """
    norm, head = lens_modules(model)
    h = resid.to(device=model.device, dtype=model.dtype)
    if final_norm:
        h = norm(h)
    return head(h).float()


def _renorm(logits: torch.Tensor, top: int | None) -> torch.Tensor:
    """Softmax probabilities, optionally renormalised over the ``top`` largest logits (others 0)."""
    if top is None:
        return logits.softmax(-1)
    vals, idx = logits.topk(min(top, logits.shape[-1]), dim=-1)
    return torch.zeros_like(logits).scatter_(-1, idx, vals.softmax(-1))


# ---- sources: live batch or store --------------------------------------------------------------
def _llm_layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    n = model.adapter.n_llm_layers
    if layers is None:
        return list(range(n))
    out = []
    for lay in layers:
        lay = int(lay)
        if lay < 0:
            lay += n
        if not 0 <= lay < n:
            raise InputError(f"layer {lay} is out of range; the LLM has {n} layers (0..{n - 1}, negatives count back)")
        out.append(lay)
    return out


def _position_mask(batch: Any, positions: Any) -> torch.Tensor:
    """Bool [B, T] of the positions to read (padding is never selected)."""
    roles = batch.roles
    real = batch.attention_mask.bool()
    B, T = real.shape
    if isinstance(positions, str):
        if positions == "all":
            m = real.clone()
        elif positions == "last":
            m = torch.zeros_like(real)
            m[:, -1] = True
        elif positions in ROLE_NAMES:
            m = roles.mask(positions).clone()
        else:
            raise InputError(f"positions={positions!r}; use 'all', 'last', a role name {list(ROLE_NAMES)}, token "
                             "indices or a [B, T] bool mask")
    elif isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if tuple(positions.shape) != (B, T):
            raise InputError(f"positions mask has shape {tuple(positions.shape)}, the batch is {(B, T)}")
        m = positions.to(real.device).clone()
    else:
        idx = [int(p) for p in (positions if isinstance(positions, (list, tuple, range, np.ndarray, torch.Tensor))
                                else [positions])]
        bad = [p for p in idx if not -T <= p < T]
        if bad:
            raise InputError(f"token position(s) {bad} outside the batch's {T} positions")
        m = torch.zeros_like(real)
        m[:, [p % T for p in idx]] = True
    return m & real


def _live_blocks(model: Any, batch: Any, layers: list[int], positions: Any, stem: str) -> Iterator[dict]:
    if hasattr(batch, "as_batch") and not hasattr(batch, "pixel_values"):
        batch = batch.as_batch()  # a Generation: prompt + generated tokens, teacher forced
    sites = [f"{stem}.{lay}" for lay in layers]
    _, cache = model.run_with_cache(batch, sites)
    mask = _position_mask(batch, positions)
    b_idx, t_idx = mask.nonzero(as_tuple=True)
    coords = batch.roles.patch_coords[b_idx, t_idx].cpu()
    tiles = batch.roles.patch_tiles[b_idx, t_idx].cpu()
    rid = batch.roles.role_ids()[b_idx, t_idx].cpu()
    ids = batch.item_ids or [str(b) for b in range(len(batch))]
    meta = pd.DataFrame({
        "b": b_idx.cpu().numpy(), "item_id": [ids[b] for b in b_idx.tolist()],
        "position": pd.array(t_idx.cpu().numpy(), dtype="Int64"),
        "role": [ROLE_NAMES[r] if r >= 0 else "padding" for r in rid.tolist()],
        "image": _nullable(coords[:, 0]), "tile": _nullable(tiles), "row": _nullable(coords[:, 1]),
        "col": _nullable(coords[:, 2]),
    })
    for lay, site in zip(layers, sites):
        yield {"site": site, "layer": lay, "meta": meta, "resid": cache[site][b_idx, t_idx]}


def _nullable(t: torch.Tensor | np.ndarray) -> pd.arrays.IntegerArray:
    """Int64 array with NA where the coordinate is -1 (not an image patch)."""
    v = (t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)).astype(np.int64)
    a = pd.array(v, dtype="Int64")
    a[v < 0] = pd.NA
    return a


def _store_blocks(store: Any, layers: list[int], selection: str, stem: str,
                  items: Sequence[str] | None) -> Iterator[dict]:
    order = list(items) if items is not None else store.item_ids
    pos = {iid: k for k, iid in enumerate(order)}
    for lay in layers:
        site = f"{stem}.{lay}"
        rows, index = store.get_rows(site, selection, items=order)
        n = len(index)
        meta = pd.DataFrame({"b": index["item_id"].map(pos).to_numpy(), "item_id": index["item_id"].to_numpy(),
                             "position": pd.array([pd.NA] * n, dtype="Int64"),
                             "role": STORE_ROLES.get(selection, selection)})
        for c in ("image", "tile", "row", "col"):
            meta[c] = _nullable(index[c].to_numpy()) if c in index else pd.array([pd.NA] * n, dtype="Int64")
        if "step" in index:
            meta["step"] = index["step"].to_numpy()
        yield {"site": site, "layer": lay, "meta": meta, "resid": rows}


def _blocks(model: Any, source: Any, *, layers: Sequence[int] | None, positions: Any, selection: str,
            site: str, items: Sequence[str] | None) -> Iterator[dict]:
    from lvlm_probe.capture.store import ActivationStore

    if site not in ("llm.resid_post", "llm.resid_pre", "llm.resid_mid"):
        raise InputError(f"site={site!r}: the logit lens reads residual-stream sites: llm.resid_post, llm.resid_pre "
                         "or llm.resid_mid")
    lays = _llm_layers(model, layers)
    if isinstance(source, ActivationStore):
        if items is not None:
            missing = [i for i in items if i not in source]
            if missing:
                raise InputError(f"item(s) {missing[:5]} are not in the store")
        return _store_blocks(source, lays, selection, site, items)
    if not hasattr(source, "roles"):
        raise InputError(f"logit lens source must be a Batch, a Generation or an ActivationStore, got "
                         f"{type(source).__name__}")
    return _live_blocks(model, source, lays, positions, site)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def _token_strings(tokenizer: Any, ids: np.ndarray) -> np.ndarray:
    uniq, inv = np.unique(ids, return_inverse=True)
    txt = np.array([tokenizer.decode([int(i)]) for i in uniq], dtype=object)
    return txt[inv]


# ---- public ------------------------------------------------------------------------------------
def logit_lens(
    model: Any,
    source: Any,
    *,
    layers: Sequence[int] | None = None,
    positions: Any = "all",
    k: int = 5,
    final_norm: bool = True,
    selection: str = "image_patches",
    site: str = "llm.resid_post",
    items: Sequence[str] | None = None,
    chunk: int = 1024,
) -> pd.DataFrame:
    """Top-k tokens of the lens at every (layer, position).

    Parameters
    ----------
    model : LVLM
        Supplies the final norm and the unembedding (and runs the forward for a live source).
    source : Batch, Generation or ActivationStore
        Live: one forward with hooks on ``{site}.{layer}``. A Generation is read teacher-forced
        (prompt + generated tokens). Store: rows of ``selection`` at ``{site}.{layer}``.
    layers : sequence of int, optional
        LLM layers (negatives count back); default all.
    positions : "all", "last", role name, int(s) or bool [B, T], optional
        Live source only: which token positions (padding is skipped).
    k : int
        Tokens kept per (layer, position).
    final_norm : bool
        Apply the final norm before the unembedding.
    selection : str
        Store source only: which selection to read (``image_patches``, ``last_prompt``, ...).
    site : {"llm.resid_post", "llm.resid_pre", "llm.resid_mid"}
    items : sequence of str, optional
        Store source only: subset of items.
    chunk : int
        Rows unembedded at a time (bounds memory to ``chunk × vocab`` floats).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`LENS_COLUMNS`: ``b`` (row in the batch, or position in the store item
        order), ``item_id``, ``site``, ``layer``, ``position`` (token index; NA for store rows),
        ``role`` (token role; for store rows the selection's role), ``image``/``row``/``col``
        (patch coordinates; NA off the image), ``rank`` (1..k), ``token_id``, ``token``,
        ``prob`` (softmax over the vocabulary), ``logit``.
    """
    if k < 1:
        raise InputError(f"k={k}: keep at least one token")
    frames = []
    for blk in _blocks(model, source, layers=layers, positions=positions, selection=selection, site=site, items=items):
        R = blk["resid"]
        n = R.shape[0]
        kk = None
        tops, probs, logits = [], [], []
        for sl in _chunks(n, chunk):
            lg = lens_logits(model, R[sl], final_norm=final_norm)
            kk = min(k, lg.shape[-1])
            v, i = lg.topk(kk, dim=-1)
            tops.append(i.cpu())
            logits.append(v.cpu())
            probs.append((v - lg.logsumexp(-1, keepdim=True)).exp().cpu())
        if n == 0:
            continue
        ids = torch.cat(tops).numpy()
        meta = blk["meta"].loc[np.repeat(np.arange(n), kk)].reset_index(drop=True)
        meta.insert(2, "site", blk["site"])
        meta.insert(3, "layer", blk["layer"])
        meta["rank"] = np.tile(np.arange(1, kk + 1), n)
        meta["token_id"] = ids.reshape(-1)
        meta["token"] = _token_strings(model.tokenizer, ids.reshape(-1))
        meta["prob"] = torch.cat(probs).numpy().reshape(-1)
        meta["logit"] = torch.cat(logits).numpy().reshape(-1)
        frames.append(meta)
    if not frames:
        return pd.DataFrame(columns=list(LENS_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    return out[list(LENS_COLUMNS) + [c for c in out.columns if c not in LENS_COLUMNS]]


def word_token_ids(tokenizer: Any, words: Sequence[str | int]) -> list[int]:
    """The first token id of each word (``tokenizer(word, add_special_tokens=False)``); ints pass through.

    For BPE tokenizers the id depends on a leading space: pass ``" cat"`` for a word that follows
    a space in running text.
    """
    out = []
    for w in words:
        if isinstance(w, (int, np.integer)):
            out.append(int(w))
            continue
        ids = tokenizer(w, add_special_tokens=False)["input_ids"]
        if not ids:
            raise InputError(f"word {w!r} tokenizes to nothing; give a non-empty word or a token id")
        out.append(int(ids[0]))
    return out


def word_probability(
    model: Any,
    source: Any,
    words: Sequence[str | int] | Sequence[Sequence[str | int]],
    *,
    layers: Sequence[int] | None = None,
    positions: Any = "image",
    final_norm: bool = True,
    renorm_top: int | None = None,
    selection: str = "image_patches",
    site: str = "llm.resid_post",
    items: Sequence[str] | None = None,
    chunk: int = 1024,
) -> pd.DataFrame:
    """Lens probability of given words at every (layer, position) — the map behind internal confidence.

    Parameters
    ----------
    model, source, layers, positions, final_norm, selection, site, items, chunk :
        As in :func:`logit_lens` (``positions`` defaults to the image tokens).
    words : sequence of str/int, or one such sequence per item
        Words (their first token, see :func:`word_token_ids`) or token ids; a list of lists gives
        each item (batch index / store order) its own words, e.g. the objects its caption names.
    renorm_top : int, optional
        Renormalise the softmax over the ``renorm_top`` largest logits, others 0 (vl-interp uses
        50, with ``final_norm=False``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`WORD_COLUMNS`: one row per (b, layer, position, word); ``b`` as in :func:`logit_lens`.
    """
    per_item = len(words) > 0 and isinstance(words[0], (list, tuple))
    if per_item:
        tok = [word_token_ids(model.tokenizer, ws) for ws in words]
        names = [list(ws) for ws in words]
    else:
        ids = word_token_ids(model.tokenizer, words)  # type: ignore[arg-type]
        names = None
    frames = []
    for blk in _blocks(model, source, layers=layers, positions=positions, selection=selection, site=site, items=items):
        R, meta = blk["resid"], blk["meta"]
        n = R.shape[0]
        if n == 0:
            continue
        item = meta["b"].to_numpy()
        if per_item:
            if item.max() >= len(tok):
                raise InputError(f"words gives {len(tok)} word lists but the source has item index {int(item.max())}; "
                                 "give one list per item")
            counts = np.array([len(tok[i]) for i in item])
            row = np.repeat(np.arange(n), counts)
            tid = np.array([t for i in item for t in tok[i]], dtype=np.int64)
            wname = [w for i in item for w in names[i]]
        else:
            row = np.repeat(np.arange(n), len(ids))
            tid = np.tile(np.asarray(ids, dtype=np.int64), n)
            wname = [w for _ in range(n) for w in words]
        prob = np.empty(len(row), dtype=np.float32)
        logit = np.empty(len(row), dtype=np.float32)
        starts = np.searchsorted(row, np.arange(0, n + 1))
        for sl in _chunks(n, chunk):
            lg = lens_logits(model, R[sl], final_norm=final_norm)
            p = _renorm(lg, renorm_top)
            a, b = starts[sl.start], starts[sl.stop]
            r = torch.as_tensor(row[a:b] - sl.start)
            t = torch.as_tensor(tid[a:b])
            prob[a:b] = p[r, t].cpu().numpy()
            logit[a:b] = lg[r, t].cpu().numpy()
        df = meta.loc[row].reset_index(drop=True)
        df.insert(2, "site", blk["site"])
        df.insert(3, "layer", blk["layer"])
        df["word"] = [str(w) for w in wname]
        df["token_id"] = tid
        df["prob"] = prob
        df["logit"] = logit
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=list(WORD_COLUMNS))
    out = pd.concat(frames, ignore_index=True)
    return out[list(WORD_COLUMNS) + [c for c in out.columns if c not in WORD_COLUMNS]]


def internal_confidence(word_probs: pd.DataFrame) -> pd.DataFrame:
    """Max lens probability of each word over layers and positions (Jiang et al. 2025).

    Parameters
    ----------
    word_probs : pandas.DataFrame
        Output of :func:`word_probability` (typically over image tokens).

    Returns
    -------
    pandas.DataFrame
        One row per (b, word): ``b, item_id, word, token_id, confidence`` and where the
        max is (``layer, position, tile, row, col``). A low confidence for a mentioned object flags a
        likely hallucination.
    """
    if word_probs.empty:
        return pd.DataFrame(columns=["b", "item_id", "word", "token_id", "confidence", "layer", "position", "tile",
                                     "row", "col"])
    best = word_probs.loc[word_probs.groupby(["b", "word"], sort=True)["prob"].idxmax()]
    out = best[["b", "item_id", "word", "token_id", "prob", "layer", "position", "tile", "row", "col"]]
    return out.rename(columns={"prob": "confidence"}).reset_index(drop=True)


