"""`image_attention`: how much attention each answer query pays to image, template, question, ... tokens."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lvlm_probe.attribution._common import item_ids
from lvlm_probe.errors import InputError
from lvlm_probe.models.records import ROLE_NAMES, Batch, Generation

MASS_COLUMNS = ["b", "item_id", "step", "position", "layer", "head", "to_role", "mass"]
#: ``tile``: the token's tile within its image (``TokenRoles.patch_tiles``; 0 for families without tiles), so that
#: tiled families' tokens (LLaVA-NeXT: base view and high-resolution grid) with the same (image, row, col) stay apart.
MAP_COLUMNS = ["b", "item_id", "step", "layer", "head", "image", "tile", "row", "col", "attention"]


def _queries(inputs: Batch | Generation, steps: Sequence[int] | None) -> tuple[Batch, list[int], np.ndarray]:
    """The batch to run, the steps, and a [B, S] bool array of which (item, step) exist."""
    if isinstance(inputs, Generation):
        batch = inputs.as_batch()
        n_steps = [len(t) for t in inputs.tokens]
        T = inputs.prompt_length
    elif isinstance(inputs, Batch):
        batch, n_steps, T = inputs, [1] * len(inputs), inputs.input_ids.shape[1]
    else:
        raise InputError(f"expected a Batch or a Generation, got {type(inputs).__name__}")
    all_steps = list(range(max(n_steps) if n_steps else 0))
    if steps is not None:
        bad = [s for s in steps if s not in all_steps]
        if bad:
            raise InputError(f"step(s) {bad} do not exist; this input has steps 0..{len(all_steps) - 1} "
                             "(0 = the last prompt position, t = the query that emitted generated token t)")
        all_steps = sorted(set(int(s) for s in steps))
    valid = np.array([[s < n for s in all_steps] for n in n_steps], dtype=bool)
    del T
    return batch, all_steps, valid


def image_attention(
    model: Any,
    inputs: Batch | Generation,
    *,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    maps: bool = False,
    progress: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Post-softmax attention mass from answer queries to each token role, per layer and head.

    Parameters
    ----------
    model : LVLM
    inputs : Batch or Generation
        A Batch gives one query per item (step 0, the last prompt position). A Generation is run
        teacher-forced on prompt + generated tokens: step 0 is the last prompt position (it emitted
        generated token 0) and step ``t >= 1`` the position of generated token ``t - 1`` (it emitted
        generated token ``t``); items have as many steps as generated tokens.
    layers : sequence of int, optional
        LLM layers (default: all).
    steps : sequence of int, optional
        Steps to keep (default: all).
    maps : bool
        Also return per-patch attention maps.
    progress : bool
        tqdm bar over layers while reducing.

    Returns
    -------
    DataFrame
        ``b, item_id, step, position, layer, head, to_role, mass`` with ``to_role`` one of
        ``lvlm_probe.ROLE_NAMES``; ``b`` is the row in the batch; for each (b, step, layer, head) the masses sum
        to 1.
    (DataFrame, DataFrame) when ``maps=True``
        The second frame: ``b, item_id, step, layer, head, image, tile, row, col, attention`` (attention of
        the query to the image token at (image, tile, row, col); ``tile`` is 0 for families without tiles).

    Notes
    -----
    Reads the bridge's eager attention pattern (site ``llm.attn_pattern.{l}``, hook
    ``blocks.{l}.attn.hook_pattern``) in a single forward pass.
    """
    batch, all_steps, valid = _queries(inputs, steps)
    model.check_batch(batch)
    nL = model.adapter.n_llm_layers
    layers = list(range(nL)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < nL]
    if bad:
        raise InputError(f"layer(s) {bad} out of range; the LLM has layers 0..{nL - 1}")
    if not all_steps:
        raise InputError("no query to analyse (empty generation)")
    B = len(batch)
    prompt_T = inputs.prompt_length if isinstance(inputs, Generation) else batch.input_ids.shape[1]
    qpos = torch.tensor([prompt_T - 1 + s for s in all_steps], device=batch.device)
    rows: dict[int, torch.Tensor] = {}

    def grab(layer: int):
        def fn(pattern: torch.Tensor, hook: Any = None) -> torch.Tensor:
            rows[layer] = pattern[:, :, qpos, :].detach().float()  # [B, H, S, K]
            return pattern

        return fn

    hooks = [(model.hook_name(f"llm.attn_pattern.{x}"), grab(x)) for x in layers]
    with model.hooks(hooks):
        model.forward(batch)
    missing = [x for x in layers if x not in rows]
    if missing:
        raise InputError(f"attention patterns of layer(s) {missing} were not produced; the bridge must run eager "
                         "attention for image_attention")
    role_masks = torch.stack([batch.roles.mask(n) for n in ROLE_NAMES], 1).float()  # [B, R, K]
    ids = item_ids(batch)
    S, R = len(all_steps), len(ROLE_NAMES)
    frames, map_frames = [], []
    r = batch.roles
    for layer in tqdm(layers, desc="image_attention", disable=not progress):
        a = rows[layer]  # [B, H, S, K]
        H = a.shape[1]
        mass = torch.einsum("bhsk,brk->bshr", a, role_masks).cpu().numpy()  # [B, S, H, R]
        b_i, s_i, h_i, r_i = np.meshgrid(np.arange(B), np.arange(S), np.arange(H), np.arange(R), indexing="ij")
        keep = valid[b_i, s_i]
        frames.append(pd.DataFrame({
            "b": b_i[keep], "item_id": np.asarray(ids, dtype=object)[b_i[keep]],
            "step": np.asarray(all_steps)[s_i[keep]], "position": qpos.cpu().numpy()[s_i[keep]], "layer": layer,
            "head": h_i[keep], "to_role": np.asarray(ROLE_NAMES, dtype=object)[r_i[keep]], "mass": mass[keep],
        }))
        if maps:
            map_frames.extend(_patch_rows(a, r, valid, ids, all_steps, layer))
    df = pd.concat(frames, ignore_index=True)[MASS_COLUMNS]
    df = df.sort_values(["b", "step", "layer", "head"], kind="stable").reset_index(drop=True)
    if not maps:
        return df
    mdf = (pd.concat(map_frames, ignore_index=True)[MAP_COLUMNS] if map_frames
           else pd.DataFrame(columns=MAP_COLUMNS))
    mdf = mdf.sort_values(["b", "step", "layer", "head"], kind="stable").reset_index(drop=True)
    return df, mdf


def _patch_rows(a: torch.Tensor, roles: Any, valid: np.ndarray, ids: list[str], steps: list[int], layer: int
                ) -> list[pd.DataFrame]:
    """Per item, the attention of each step's query (per head) to each image token, with its (image, row, col)."""
    out = []
    S, H = a.shape[2], a.shape[1]
    for b in range(a.shape[0]):
        pos = roles.image[b].nonzero().squeeze(-1)
        if pos.numel() == 0:
            continue
        coords = roles.patch_coords[b, pos].cpu().numpy()  # [P, 3]
        tiles = roles.patch_tiles[b, pos].cpu().numpy()  # [P]
        att = a[b][:, :, pos].permute(1, 0, 2).cpu().numpy()  # [S, H, P]
        s_j, h_j, p_j = np.meshgrid(np.arange(S), np.arange(H), np.arange(len(pos)), indexing="ij")
        k = valid[b][s_j]
        out.append(pd.DataFrame({
            "b": b, "item_id": ids[b], "step": np.asarray(steps)[s_j[k]], "layer": layer,
            "head": h_j[k], "image": coords[p_j[k], 0], "tile": tiles[p_j[k]], "row": coords[p_j[k], 1],
            "col": coords[p_j[k], 2],
            "attention": att[k],
        }))
    return out


def image_attention_maps(model: Any, inputs: Batch | Generation, *, layers: Sequence[int] | None = None,
                         steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-patch attention maps only: ``b, item_id, step, layer, head, image, tile, row, col, attention``.

    Same arguments as :func:`image_attention`.
    """
    return image_attention(model, inputs, layers=layers, steps=steps, maps=True)[1]
