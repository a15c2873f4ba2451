"""Shared pieces of the attribution room: targets, prefixes of generations, token groups, hook hygiene."""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch

from lvlm_probe.errors import InputError
from lvlm_probe.models.records import ROLE_NAMES, Batch, Generation

#: What a target may be: None (the model's own next token), a token id, a word, or one of those per item.
TargetSpec = Union[None, int, str, Sequence[Union[int, str, None]]]

#: Token groups besides the role names: the last position and every real (non-padding) position.
EXTRA_GROUPS: tuple[str, ...] = ("last", "all")


def item_ids(batch: Batch) -> list[str]:
    """The batch's item ids, or ``"0", "1", ...`` when it has none."""
    return list(batch.item_ids) if batch.item_ids else [str(k) for k in range(len(batch))]


def prefix_batch(gen: Generation, step: int) -> Batch:
    """The teacher-forced batch whose last position emits generated token ``step`` (0-based).

    ``step = 0`` is the prompt itself (its last position emits the first generated token);
    ``step = t`` appends the first ``t`` generated tokens.

    Raises
    ------
    InputError
        ``step`` is negative or beyond an item's generation (the message names the item).
    """
    if step < 0:
        raise InputError(f"step must be >= 0 (0 = the first generated token), got {step}")
    ids = item_ids(gen.batch)
    short = [iid for iid, toks in zip(ids, gen.tokens) if len(toks) <= step]
    if short:
        n = {iid: len(t) for iid, t in zip(ids, gen.tokens)}
        raise InputError(
            f"item(s) {short} generated fewer than {step + 1} tokens ({ {k: n[k] for k in short} }); "
            "choose a smaller step or analyse those items separately"
        )
    return gen.as_batch().truncate(gen.prompt_length + step)


def resolve_input(model: Any, inputs: Batch | Generation, step: int | None) -> tuple[Batch, list[int] | None]:
    """Turn ``(Batch | Generation, step)`` into the batch to run and, for generations, the forced targets.

    Returns
    -------
    batch : Batch
        The batch whose last position is analysed.
    forced : list of int or None
        For a Generation: the generated token at ``step`` per item (the default target).
    """
    if isinstance(inputs, Generation):
        if step is None:
            raise InputError("a Generation needs step=t: the generated token (0-based) whose prediction is analysed")
        batch = prefix_batch(inputs, step)
        return batch, [int(t[step]) for t in inputs.tokens]
    if not isinstance(inputs, Batch):
        raise InputError(f"expected a Batch (from model.prepare) or a Generation, got {type(inputs).__name__}")
    if step is not None:
        raise InputError("step= applies to a Generation; for a Batch the last position is analysed")
    return inputs, None


def word_token_id(model: Any, word: str) -> int:
    """First token id of ``word`` as the tokenizer encodes it (no special tokens).

    Raises
    ------
    InputError
        The word encodes to nothing or to the unknown token.
    """
    tok = model.tokenizer
    ids = tok(word, add_special_tokens=False)["input_ids"]
    unk = getattr(tok, "unk_token_id", None)
    if not ids or (unk is not None and ids[0] == unk):
        raise InputError(f"target word {word!r} is not in the tokenizer's vocabulary; pass a token id instead")
    return int(ids[0])


def resolve_targets(model: Any, target: TargetSpec, n: int, default: list[int] | None,
                    last_logits: torch.Tensor | None = None) -> list[int]:
    """One target token id per item.

    Parameters
    ----------
    target : None, int, str or sequence of those
        None: ``default`` (generated token at the step) or else the argmax of ``last_logits`` [B, V].
    n : int
        Number of items.
    """
    if target is None:
        if default is not None:
            return list(default)
        if last_logits is None:
            raise InputError("no target given and no logits to take the model's prediction from")
        return [int(x) for x in last_logits.argmax(-1).tolist()]
    items = list(target) if isinstance(target, (list, tuple)) else [target] * n
    if len(items) != n:
        raise InputError(f"{len(items)} targets for {n} items; give one target or one per item")
    out: list[int] = []
    V = model.adapter.unembed().weight.shape[0]
    for k, t in enumerate(items):
        if t is None:
            if default is not None:
                out.append(int(default[k]))
            elif last_logits is not None:
                out.append(int(last_logits[k].argmax()))
            else:
                raise InputError(f"item {k}: target None but no prediction to default to")
        elif isinstance(t, str):
            out.append(word_token_id(model, t))
        else:
            tid = int(t)
            if not 0 <= tid < V:
                raise InputError(f"target token id {tid} is outside the vocabulary (0..{V - 1})")
            out.append(tid)
    return out


def token_str(model: Any, tid: int) -> str:
    """The token's text as the tokenizer spells it."""
    return str(model.tokenizer.convert_ids_to_tokens(int(tid)))


def group_mask(batch: Batch, group: str) -> torch.Tensor:
    """Bool [B, T] mask of a token group: a role name, ``"last"`` or ``"all"`` (every real token)."""
    r = batch.roles
    if group in ROLE_NAMES:
        return r.mask(group).clone()
    if group == "last":
        m = torch.zeros_like(r.image)
        m[:, -1] = True
        return m
    if group == "all":
        return batch.attention_mask.bool().clone()
    raise InputError(f"unknown token group {group!r}; use a role name {list(ROLE_NAMES)}, 'last' or 'all'")


def groups_mask(batch: Batch, groups: str | Sequence[str]) -> torch.Tensor:
    """Union of :func:`group_mask` over ``groups`` (a name or a sequence of names)."""
    names = [groups] if isinstance(groups, str) else list(groups)
    if not names:
        raise InputError("empty token-group list; give at least one role name, 'last' or 'all'")
    m = group_mask(batch, names[0])
    for g in names[1:]:
        m |= group_mask(batch, g)
    return m


def target_stats(logits_last: torch.Tensor, targets: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability and logit of each item's target at the last position.

    Parameters
    ----------
    logits_last : Tensor [B, V]
    targets : sequence of int, length B

    Returns
    -------
    (prob [B], logit [B]) as float64 CPU tensors.
    """
    lg = logits_last.float()
    idx = torch.as_tensor(list(targets), device=lg.device).unsqueeze(1)
    p = lg.softmax(-1).gather(1, idx).squeeze(1)
    return p.double().cpu(), lg.gather(1, idx).squeeze(1).double().cpu()


def forward_last(model: Any, batch: Batch) -> torch.Tensor:
    """Logits [B, V] at the last position (no grad; active hooks fire)."""
    return model.forward(batch)[:, -1]
