"""Attention knockout: block attention edges (key roles → query roles) in a layer window.

Blocked (query, key) entries get the dtype's most negative finite value before the softmax, so the
query's softmax renormalises over the keys it may still see (Zhang et al. 2025; Geva et al. 2023).

Where: the additive attention mask ([B, 1, Q, K], 0 or finfo.min) that each bridge attention component
``blocks.{l}.attn`` receives is edited in a forward pre-hook; the mask is added to the scores before the
softmax, so this equals setting the pre-softmax scores (``blocks.{l}.attn.hook_attn_scores``) to finfo.min.
The scores hook is not used because TransformerBridge's Qwen2.5-VL attention delegates to the HF module and
fires ``hook_attn_scores`` after the fact: edits there are discarded (TransformerLens warns). The mask edit
works for every family; tests check that it equals the scores edit where the bridge honours one (LLaVA).
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

KNOCKOUT_COLUMNS = ["b", "item_id", "layer_start", "layer_end", "from_roles", "to_roles", "target", "target_id",
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
    modules = []
    for x in layers:
        try:
            modules.append(model.bridge.blocks[int(x)].attn)
        except (AttributeError, IndexError) as e:
            raise InputError(f"the bridge has no attention component blocks.{int(x)}.attn; knockout cannot run "
                             "on this model") from e

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        am = kwargs.get("attention_mask")
        if am is None or am.dim() != 4 or not am.is_floating_point():
            raise InputError("knockout needs the additive 4-D attention mask of eager attention; got "
                             f"{None if am is None else (tuple(am.shape), am.dtype)}")
        if am.shape[0] != m.shape[0] or am.shape[-2:] != m.shape[-2:]:
            raise InputError(f"block_attention was built for a batch of shape {tuple(m.shape[0::2])} but the "
                             f"forward has an attention mask {tuple(am.shape)}; run the same batch inside")
        kwargs = dict(kwargs)
        kwargs["attention_mask"] = am.masked_fill(m.to(am.device), torch.finfo(am.dtype).min)
        return args, kwargs

    # plain torch pre-hooks (the bridge's hook points see no kwargs); removed in `finally`, also on error
    handles = []
    try:
        for mod in modules:
            handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield model
    finally:
        for h in handles:
            h.remove()


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
        ``b, item_id, layer_start, layer_end, from_roles, to_roles, target, target_id, p_base, p_knock,
        delta_p, logit_base, logit_knock``; one row per (b, window), ``b`` the row in the batch.
        ``layer_start``/``layer_end`` are the window's first and last layer (inclusive).
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
                "b": b, "item_id": ids[b], "layer_start": min(win), "layer_end": max(win), "from_roles": fr,
                "to_roles": tr, "target": token_str(model, targets[b]), "target_id": targets[b],
                "p_base": float(p0[b]), "p_knock": float(p1[b]), "delta_p": float(p1[b] - p0[b]),
                "logit_base": float(l0[b]), "logit_knock": float(l1[b]),
            })
    return pd.DataFrame(rows, columns=KNOCKOUT_COLUMNS)
