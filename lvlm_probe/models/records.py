"""Records that travel from `LVLM.prepare` to capture and analysis: TokenRoles, Batch, Generation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

#: Role names in a fixed order; each position has at most one role (padding has none).
ROLE_NAMES: tuple[str, ...] = ("image", "system", "template", "question", "answer", "generated")


@dataclass
class TokenRoles:
    """What each token position is.

    All masks are boolean tensors of shape [B, T] and mutually exclusive; left padding has no role.

    Attributes
    ----------
    image : torch.BoolTensor [B, T]
        Image-token positions (equal to ``input_ids == image_token_id``).
    system : torch.BoolTensor [B, T]
        Text of a system message passed to ``prepare(system=...)``.
    template : torch.BoolTensor [B, T]
        Chat scaffolding: BOS, role tags, vision start/end markers, separators.
    question : torch.BoolTensor [B, T]
        The user's prompt text.
    answer : torch.BoolTensor [B, T]
        Teacher-forced answer text passed to ``prepare(answers=...)``.
    generated : torch.BoolTensor [B, T]
        Tokens produced by ``LVLM.generate`` (all False in a prepared batch).
    patch_coords : torch.LongTensor [B, T, 3]
        For each image token (image index within its item, row, col) in that image's LLM patch
        grid; -1 elsewhere.
    grids : list of list of (rows, cols)
        Per item, per image: the LLM-side patch grid (after any merging).
    """

    image: torch.Tensor
    system: torch.Tensor
    template: torch.Tensor
    question: torch.Tensor
    answer: torch.Tensor
    generated: torch.Tensor
    patch_coords: torch.Tensor
    grids: list[list[tuple[int, int]]]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    def mask(self, role: str) -> torch.Tensor:
        """The [B, T] mask of one role by name."""
        if role not in ROLE_NAMES:
            raise KeyError(f"unknown role {role!r}; roles are {list(ROLE_NAMES)}")
        return getattr(self, role)

    def role_ids(self) -> torch.Tensor:
        """LongTensor [B, T]: index into ROLE_NAMES per position, -1 for padding."""
        out = torch.full(self.image.shape, -1, dtype=torch.long, device=self.image.device)
        for k, name in enumerate(ROLE_NAMES):
            out[getattr(self, name)] = k
        return out

    def to(self, device: torch.device | str) -> TokenRoles:
        kw = {n: getattr(self, n).to(device) for n in ROLE_NAMES}
        return replace(self, patch_coords=self.patch_coords.to(device), **kw)

    def extend(self, n_new: int, generated: torch.Tensor) -> TokenRoles:
        """Roles for a sequence extended by ``n_new`` positions whose generated mask is given [B, n_new]."""
        B = self.image.shape[0]
        pad = torch.zeros(B, n_new, dtype=torch.bool, device=self.image.device)
        kw = {n: torch.cat([getattr(self, n), pad], dim=1) for n in ROLE_NAMES if n != "generated"}
        kw["generated"] = torch.cat([self.generated, generated.to(self.image.device)], dim=1)
        coords = torch.cat(
            [self.patch_coords, torch.full((B, n_new, 3), -1, dtype=torch.long, device=self.image.device)], dim=1
        )
        return TokenRoles(patch_coords=coords, grids=self.grids, **kw)

    def table(self, index: int, tokens: list[str] | None = None):
        """A tidy DataFrame (one row per position) of item ``index``: position, role, image, row, col."""
        import pandas as pd

        rid = self.role_ids()[index].tolist()
        c = self.patch_coords[index].tolist()
        rows = []
        for t, r in enumerate(rid):
            rows.append(
                {
                    "position": t,
                    "role": ROLE_NAMES[r] if r >= 0 else "padding",
                    "image": c[t][0],
                    "row": c[t][1],
                    "col": c[t][2],
                    **({"token": tokens[t]} if tokens is not None else {}),
                }
            )
        return pd.DataFrame(rows)


@dataclass
class Batch:
    """Model-ready inputs with the role map.

    Attributes
    ----------
    input_ids : torch.LongTensor [B, T]
        Left-padded token ids (image placeholders already expanded to one token per image feature).
    attention_mask : torch.LongTensor [B, T]
        1 for real tokens, 0 for left padding.
    pixel_values : torch.Tensor or None
        Family-specific pixel tensor (LLaVA: [n_images, 3, H, W]; Qwen2.5-VL: [n_patches, C·P·P·T]).
    extras : dict of str -> Tensor
        Other forward inputs of the family (e.g. ``image_grid_thw`` [n_images, 3]).
    roles : TokenRoles
    prompts : list of str
        The prompt text of each item before placeholder expansion (after the chat template).
    n_images : list of int
        Images per item; images are concatenated across items in ``pixel_values``.
    item_ids : list of str or None
    n_image_tokens : list of int
        Image tokens each item must hold (what its images give), checked before every run.
    image_inputs : ImageInputs or None
        The processed images with their LLM and vision grids (used to map vision-side rows to patches).
    token_type_input : str or None
        Name of the family's per-token modality input (Qwen2.5-VL: ``mm_token_type_ids``, 1 at image
        tokens, else 0), derived from ``roles.image`` by :meth:`model_inputs` so that every slice or
        extension of the batch keeps it aligned with ``input_ids``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    extras: dict[str, torch.Tensor]
    roles: TokenRoles
    prompts: list[str]
    n_images: list[int]
    item_ids: list[str] | None = None
    n_image_tokens: list[int] | None = None
    image_inputs: Any = None
    token_type_input: str | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __repr__(self) -> str:
        B, T = self.input_ids.shape
        ids = self.item_ids or []
        shown = ", ".join(map(repr, ids[:4])) + (f", ... {len(ids) - 4} more" if len(ids) > 4 else "")
        pv = "none" if self.pixel_values is None else "x".join(map(str, self.pixel_values.shape))
        return (f"Batch({B} items [{shown}], {T} tokens, images per item {self.n_images}, "
                f"image tokens {self.n_image_tokens}, pixel_values {pv}, device {self.input_ids.device})")

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the HF / bridge forward (without input_ids)."""
        kw: dict[str, Any] = {"attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            kw["pixel_values"] = self.pixel_values
        kw.update(self.extras)
        if self.token_type_input is not None:
            kw[self.token_type_input] = self.roles.image.long()
        return kw

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """A copy on ``device``; floating pixel tensors are cast to ``dtype`` when given."""
        pv = self.pixel_values
        if pv is not None:
            pv = pv.to(device=device, dtype=dtype if (dtype is not None and pv.is_floating_point()) else pv.dtype)
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=pv,
            extras={k: v.to(device) for k, v in self.extras.items()},
            roles=self.roles.to(device),
        )


@dataclass
class Generation:
    """Output of `LVLM.generate`.

    Attributes
    ----------
    text : list of str
        Decoded generated text per item (special tokens removed).
    tokens : list of list of int
        Generated token ids per item, up to and including EOS when it was produced.
    sequences : torch.LongTensor [B, T + G]
        Prompt (left padded) followed by the generated ids (right padded with pad id).
    attention_mask : torch.LongTensor [B, T + G]
    roles : TokenRoles
        The prompt roles extended over the generated positions (``generated`` set for real tokens).
    prompt_length : int
        T, the padded prompt length.
    scores : torch.Tensor or None
        [B, G, V] raw next-token logits per step when ``output_scores=True``.
    batch : Batch
        The batch it was generated from.
    settings : dict
        The decoding settings used.
    token_spans : list of list of (int, int)
        Per item, the character span of each generated token in ``text`` (``tokens[b][k]`` covers
        ``text[b][start:end]``; special tokens get an empty span). Misalignment judging maps claim
        spans to generated-token indices with it.
    """

    text: list[str]
    tokens: list[list[int]]
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    roles: TokenRoles
    prompt_length: int
    scores: torch.Tensor | None
    batch: Batch
    settings: dict = field(default_factory=dict)
    token_spans: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        lines = [f"Generation({len(self.text)} items, prompt {self.prompt_length} tokens, settings {self.settings})"]
        ids = self.batch.item_ids if self.batch is not None and self.batch.item_ids else [str(k) for k in
                                                                                             range(len(self.text))]
        for iid, toks, txt in list(zip(ids, self.tokens, self.text))[:8]:
            lines.append(f"  {iid}: {len(toks)} tokens: {txt[:80]!r}{'...' if len(txt) > 80 else ''}")
        if len(self.text) > 8:
            lines.append(f"  ... {len(self.text) - 8} more")
        return "\n".join(lines)

    def as_batch(self) -> Batch:
        """The full sequence (prompt + generated) as a Batch, for teacher-forced analysis."""
        return replace(self.batch, input_ids=self.sequences, attention_mask=self.attention_mask, roles=self.roles)
