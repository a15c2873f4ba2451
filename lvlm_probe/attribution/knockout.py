"""Attention knockout: block attention edges (key roles → query roles) in a layer window.

Blocked entries of the pre-softmax scores (bridge hook ``blocks.{l}.attn.hook_attn_scores``, where the
causal and padding mask is already applied) are set to the dtype's most negative finite value, so the
query's softmax renormalises over the keys it may still see (Zhang et al. 2025; Geva et al. 2023).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from lvlm_probe.attribution._common import (TargetSpec, forward_last, groups_mask, item_ids, resolve_input,
                                            resolve_targets, target_stats, token_str)
from lvlm_probe.errors import InputError
from lvlm_probe.models.records import Batch, Generation

KNOCKOUT_COLUMNS = ["item", "item_id", "layer_start", "layer_end", "from_roles", "to_roles", "target", "target_id",
                    "p_base", "p_knock", "delta_p", "logit_base", "logit_knock"]


def _names(x: str | Sequence[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


def edge_mask(batch: Batch, from_roles: str | Sequence[str], to_roles: str | Sequence[str]) -> torch.Tensor:
    """Bool [B, Q, K]: True where query position q (in ``to_roles``) may not read key k (in ``from_roles``).

    Groups are role names, ``"last"`` (the last position) or ``"all"``.

    Raises
    ------
    InputError
        Some query would lose every key it can see (its softmax would be undefined); the message names
        the item and position.
    """
    keys = groups_mask(batch, _names(from_roles))  # [B, K]
    queries = groups_mask(batch, _names(to_roles))  # [B, Q]
    m = queries[:, :, None] & keys[:, None, :]
    T = m.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=m.device).tril()
    visible = causal[None] & batch.attention_mask.bool()[:, None, :]
    left = visible & ~m
    dead = queries & ~left.any(-1)
    if dead.any():
        b, q = (int(v) for v in dead.nonzero()[0])
        raise InputError(
            f"item {item_ids(batch)[b]!r}, position {q}: blocking {from_roles} -> {to_roles} removes every key this "
            "query can see; narrow from_roles or to_roles (e.g. keep the template/BOS keys)"
        )
    return m


@contextlib.contextmanager
def block_attention(
    model: Any,
    batch: Batch,
    *,
    from_roles: str | Sequence[str],
    to_roles: str | Sequence[str],
    layers: Sequence[int],
) -> Iterator[Any]:
    """Context manager: while active, queries in ``to_roles`` cannot attend to keys in ``from_roles`` in
    ``layers`` (forward passes of ``batch``'s shape). Hooks are removed on exit, also on error.

    Parameters
    ----------
    model : LVLM
    batch : Batch
        Fixes the token layout (roles) the masks are built from; run this batch inside the context.
    from_roles, to_roles : str or sequence of str
        Key and query groups: role names, ``"last"`` or ``"all"``.
    layers : sequence of int
        LLM layers to edit.

    Yields
    ------
    LVLM
    """
    nL = model.adapter.n_llm_layers
    bad = [x for x in layers if not 0 <= int(x) < nL]
    if bad:
        raise InputError(f"layer(s) {bad} out of range; the LLM has layers 0..{nL - 1}")
    m = edge_mask(batch, from_roles, to_roles)[:, None]  # [B, 1, Q, K]

    def fn(scores: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if scores.shape[-2:] != m.shape[-2:] or scores.shape[0] != m.shape[0]:
            raise InputError(f"block_attention was built for a batch of shape {tuple(m.shape[0::2])} but the "
                             f"forward has attention scores {tuple(scores.shape)}; run the same batch inside")
        return scores.masked_fill(m, torch.finfo(scores.dtype).min)

    names = [f"blocks.{int(x)}.attn.hook_attn_scores" for x in layers]
    missing = [n for n in names if n not in model.bridge.hook_dict]
    if missing:
        raise InputError(f"the bridge has no hook(s) {missing}; knockout needs pre-softmax attention scores")
    with model.hooks([(n, fn) for n in names]):
        yield model


def layer_windows(layers: Sequence[int], window: int | None) -> list[list[int]]:
    """Sliding windows of ``window`` consecutive entries of ``layers`` (one window of all when None)."""
    layers = list(layers)
    if window is None:
        return [layers]
    if not 1 <= window <= len(layers):
        raise InputError(f"window={window} must be between 1 and the number of layers ({len(layers)})")
    return [layers[i:i + window] for i in range(len(layers) - window + 1)]


def knockout(
    model: Any,
    inputs: Batch | Generation,
    *,
    from_roles: str | Sequence[str] = "image",
    to_roles: str | Sequence[str] = "last",
    layers: Sequence[int] | None = None,
    window: int | None = None,
    target: TargetSpec = None,
    step: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Change of the target token's probability when attention edges are blocked, per layer window.

    Parameters
    ----------
    model : LVLM
    inputs : Batch or Generation
        A Generation needs ``step=t`` (teacher-forced prefix; generated token ``t`` is the default target).
    from_roles : str or sequence of str
        Key groups (role names, ``"last"``, ``"all"``) whose information is blocked, e.g. ``"image"``.
    to_roles : str or sequence of str
        Query groups that may not read them, e.g. ``"last"`` or ``["question", "last"]``.
    layers : sequence of int, optional
        Layers to sweep (default: all LLM layers).
    window : int, optional
        Sliding window size: one run per window of ``window`` consecutive entries of ``layers``
        (default: a single run blocking all of ``layers``).
    target : None, int, str or list
        Token id / word per item; default the generated token at ``step`` or the model's own prediction.

    Returns
    -------
    DataFrame
        ``item, item_id, layer_start, layer_end, from_roles, to_roles, target, target_id, p_base, p_knock,
        delta_p, logit_base, logit_knock``; one row per (item, window). ``layer_start``/``layer_end`` are the
        window's first and last layer (inclusive).
    """
    batch, forced = resolve_input(model, inputs, step)
    model.check_batch(batch)
    nL = model.adapter.n_llm_layers
    layers = list(range(nL)) if layers is None else [int(x) for x in layers]
    wins = layer_windows(layers, window)
    edge_mask(batch, from_roles, to_roles)  # validate before any run
    base_last = forward_last(model, batch)
    targets = resolve_targets(model, target, len(batch), forced, base_last)
    p0, l0 = target_stats(base_last, targets)
    ids = item_ids(batch)
    fr, tr = "+".join(_names(from_roles)), "+".join(_names(to_roles))
    rows = []
    for win in tqdm(wins, desc="knockout", disable=not progress):
        with block_attention(model, batch, from_roles=from_roles, to_roles=to_roles, layers=win):
            last = forward_last(model, batch)
        p1, l1 = target_stats(last, targets)
        for b in range(len(batch)):
            rows.append({
                "item": b, "item_id": ids[b], "layer_start": min(win), "layer_end": max(win), "from_roles": fr,
                "to_roles": tr, "target": token_str(model, targets[b]), "target_id": targets[b],
                "p_base": float(p0[b]), "p_knock": float(p1[b]), "delta_p": float(p1[b] - p0[b]),
                "logit_base": float(l0[b]), "logit_knock": float(l1[b]),
            })
    return pd.DataFrame(rows, columns=KNOCKOUT_COLUMNS)
