"""Records that travel from `LVLM.prepare` to capture and analysis: TokenRoles, Batch, Generation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch

from lvlm_probe.errors import InputError

#: Role names in a fixed order; each position has at most one role (padding has none). New roles are appended, so
#: the index of every earlier role (``TokenRoles.role_ids``, stored attention masses per role) stays the same.
ROLE_NAMES: tuple[str, ...] = ("image", "system", "template", "question", "answer", "generated", "separator")


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
        For each image token (image index within its item, row, col), row and col on the grid of the token's
        tile (``patch_tiles``); -1 elsewhere. An image token on no grid cell (a CLS token, LLaVA-NeXT's row-end
        newline) has ``(image, -1, -1)``.
    grids : list of list of (rows, cols)
        Per item, per image: the LLM-side patch grid (after any merging) that attribution maps are drawn on.
        For families without tiles it is the image's only grid; LLaVA-NeXT: tile 0's (the base view).
    separator : torch.BoolTensor [B, T]
        Text tokens a processor inserts between an image's tiles or rows that are not image tokens
        (``FamilyAdapter.separator_token_ids``; Idefics3's crop / global-view markers and the newlines between crop
        rows; none for LLaVA, Qwen2.5-VL, Gemma3 or LLaVA-NeXT, whose row-end newlines carry the image token id and
        so are ``image``).
    patch_tiles : torch.LongTensor [B, T]
        For each image token the index of its tile within its image (0 for families without tiles; LLaVA-NeXT:
        0 = the base view, 1 = the high-resolution grid and its row-end newlines; Idefics3: 0 = the global view,
        1 .. rows·cols = the crops in raster order); -1 elsewhere.
    tile_grids : list of list of list of (rows, cols)
        Per item, per image, per tile: the tile's grid. ``(image, tile, row, col)`` of an image token is
        ``patch_coords[b, t, 0], patch_tiles[b, t], patch_coords[b, t, 1:]``.
    """

    image: torch.Tensor
    system: torch.Tensor
    template: torch.Tensor
    question: torch.Tensor
    answer: torch.Tensor
    generated: torch.Tensor
    patch_coords: torch.Tensor
    grids: list[list[tuple[int, int]]]
    separator: torch.Tensor | None = None
    patch_tiles: torch.Tensor | None = None
    tile_grids: list[list[list[tuple[int, int]]]] | None = None

    def __post_init__(self) -> None:
        # records built without tiles (or before the separator role existed): one tile per image, no separators
        if self.separator is None:
            self.separator = torch.zeros_like(self.image)
        if self.patch_tiles is None:
            self.patch_tiles = torch.where(self.image, 0, -1).to(torch.long)
        if self.tile_grids is None:
            self.tile_grids = [[[g] for g in item] for item in self.grids]

    @property
    def off_grid(self) -> torch.Tensor:
        """BoolTensor [B, T]: image tokens on no grid cell (a CLS token, LLaVA-NeXT's row-end newlines), a part
        of ``image``."""
        return self.image & (self.patch_coords[..., 1] < 0)

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
        return replace(self, patch_coords=self.patch_coords.to(device), patch_tiles=self.patch_tiles.to(device),
                       **kw)

    def select(self, rows: Sequence[int]) -> TokenRoles:
        """Roles of the items ``rows`` (in that order): every mask and ``patch_coords`` indexed on dim 0.

        Returns
        -------
        TokenRoles
            Masks [len(rows), T], ``patch_coords`` [len(rows), T, 3], ``patch_tiles`` [len(rows), T], ``grids``
            and ``tile_grids`` of those items.
        """
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.image.device)
        kw = {n: getattr(self, n).index_select(0, idx) for n in ROLE_NAMES}
        return replace(self, patch_coords=self.patch_coords.index_select(0, idx),
                       patch_tiles=self.patch_tiles.index_select(0, idx),
                       grids=[self.grids[int(r)] for r in rows], tile_grids=[self.tile_grids[int(r)] for r in rows],
                       **kw)

    def truncate(self, length: int) -> TokenRoles:
        """Roles of the first ``length`` positions: masks [B, length], ``patch_coords`` [B, length, 3],
        ``patch_tiles`` [B, length]."""
        kw = {n: getattr(self, n)[:, :length] for n in ROLE_NAMES}
        return replace(self, patch_coords=self.patch_coords[:, :length], patch_tiles=self.patch_tiles[:, :length],
                       **kw)

    def extend(self, n_new: int, generated: torch.Tensor) -> TokenRoles:
        """Roles for a sequence extended by ``n_new`` positions whose generated mask is given [B, n_new]."""
        B = self.image.shape[0]
        pad = torch.zeros(B, n_new, dtype=torch.bool, device=self.image.device)
        kw = {n: torch.cat([getattr(self, n), pad], dim=1) for n in ROLE_NAMES if n != "generated"}
        kw["generated"] = torch.cat([self.generated, generated.to(self.image.device)], dim=1)
        coords = torch.cat(
            [self.patch_coords, torch.full((B, n_new, 3), -1, dtype=torch.long, device=self.image.device)], dim=1
        )
        tiles = torch.cat([self.patch_tiles, torch.full((B, n_new), -1, dtype=torch.long, device=self.image.device)],
                          dim=1)
        return TokenRoles(patch_coords=coords, grids=self.grids, patch_tiles=tiles, tile_grids=self.tile_grids, **kw)

    def table(self, index: int, tokens: list[str] | None = None):
        """A tidy DataFrame (one row per position) of item ``index``: position, role, image, tile, row, col."""
        import pandas as pd

        rid = self.role_ids()[index].tolist()
        c = self.patch_coords[index].tolist()
        tiles = self.patch_tiles[index].tolist()
        rows = []
        for t, r in enumerate(rid):
            rows.append(
                {
                    "position": t,
                    "role": ROLE_NAMES[r] if r >= 0 else "padding",
                    "image": c[t][0],
                    "tile": tiles[t],
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
    images_per_item_input : str or None
        Name of the family's per-item image-count input (LLaVA-OneVision: ``batch_num_images``, one entry per
        item that has images), derived from ``n_images`` by :meth:`model_inputs` so that slices keep it aligned.
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
    images_per_item_input: str | None = None

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
            if self.images_per_item_input is not None:
                kw[self.images_per_item_input] = torch.tensor([n for n in self.n_images if n], dtype=torch.long,
                                                              device=self.input_ids.device)
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


    # ---- slicing: every per-item, per-image and per-token input stays aligned -------------------
    def pixel_rows(self) -> list[tuple[int, int]]:
        """For each image of the batch (item order), its ``[start, stop)`` rows along ``pixel_values`` dim 0.

        The family adapter records its layout in ``image_inputs.pixel_rows`` (LLaVA: one ``[C, H, W]`` row per
        image; Qwen2.5-VL: ``tokens × merge²`` flattened patch rows per image). Empty without images.

        Raises
        ------
        InputError
            The batch carries no ``image_inputs`` (not built by ``prepare``) or its ``pixel_values`` no longer
            have the rows its images' grids give.
        """
        if self.pixel_values is None:
            return []
        rows = getattr(self.image_inputs, "pixel_rows", None)
        if rows is None:
            raise InputError("the batch carries no image_inputs; build it with model.prepare")
        n = rows[-1][1] if rows else 0
        if n != self.pixel_values.shape[0]:
            raise InputError(f"pixel_values has {self.pixel_values.shape[0]} rows but the images' grids give {n}; "
                             "build the batch with model.prepare")
        return [(int(a), int(b)) for a, b in rows]

    def select(self, rows: Sequence[int]) -> Batch:
        """The items ``rows`` (in that order) as a batch of their own, every input kept aligned.

        Parameters
        ----------
        rows : sequence of int
            Item indices into this batch (0 <= r < B), at least one.

        Returns
        -------
        Batch
            ``input_ids`` / ``attention_mask`` [len(rows), T] (the padded length T is kept, so every item's
            positions and logits are unchanged), roles, prompts, ids and image counts of those items; their
            images' pixel rows (:meth:`pixel_rows`), per-image ``extras`` (dim 0 = the batch's images, e.g.
            ``image_grid_thw`` [n_images, 3]) and ``image_inputs``. Per-token inputs (``token_type_input``)
            are derived from the roles by :meth:`model_inputs`, so they follow. A batch without ``item_ids``
            names the items by their index here.
        """
        rows = [int(r) for r in rows]
        bad = [r for r in rows if not 0 <= r < len(self)]
        if not rows or bad:
            raise InputError(f"select needs item indices in 0..{len(self) - 1}, got {rows}")
        first = [sum(self.n_images[:r]) for r in range(len(self))]
        images = [k for r in rows for k in range(first[r], first[r] + self.n_images[r])]
        pv, extras, ii = self._select_images(images)
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        ids = list(self.item_ids) if self.item_ids else [str(k) for k in range(len(self))]
        return replace(
            self,
            input_ids=self.input_ids.index_select(0, idx),
            attention_mask=self.attention_mask.index_select(0, idx),
            pixel_values=pv,
            extras=extras,
            roles=self.roles.select(rows),
            prompts=[self.prompts[r] for r in rows] if self.prompts else [],
            n_images=[self.n_images[r] for r in rows],
            item_ids=[ids[r] for r in rows],
            n_image_tokens=[self.n_image_tokens[r] for r in rows] if self.n_image_tokens else None,
            image_inputs=ii,
        )

    def _select_images(self, images: list[int]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor], Any]:
        """``pixel_values``, ``extras`` and ``image_inputs`` of the batch's images ``images`` (in that order)."""
        if self.pixel_values is None:
            return None, dict(self.extras), self.image_inputs
        n_total = sum(self.n_images)
        per_image = {k for k, v in self.extras.items() if v.dim() and v.shape[0] == n_total}
        extras = {k: v for k, v in self.extras.items() if k not in per_image}
        if not images:
            return None, extras, None
        all_rows = self.pixel_rows()
        spans = [all_rows[k] for k in images]
        if images == list(range(images[0], images[-1] + 1)):  # contiguous: a view, no copy
            pv = self.pixel_values[spans[0][0]:spans[-1][1]]
        else:
            pv = torch.cat([self.pixel_values[a:b] for a, b in spans])
        for k in per_image:
            v = self.extras[k]
            extras[k] = v.index_select(0, torch.as_tensor(images, dtype=torch.long, device=v.device))
        new_rows, r0 = [], 0
        for a, b in spans:
            new_rows.append((r0, r0 + b - a))
            r0 += b - a
        ii = self.image_inputs
        ii = replace(ii, pixel_values=pv, extras=extras, pixel_rows=new_rows,
                     llm_grids=[ii.llm_grids[k] for k in images],
                     tokens_per_image=[ii.tokens_per_image[k] for k in images],
                     vision_grids=[ii.vision_grids[k] for k in images],
                     tile_grids=None if ii.tile_grids is None else [ii.tile_grids[k] for k in images],
                     image_info=None if getattr(ii, "image_info", None) is None else [ii.image_info[k] for k in images])
        return pv, extras, ii

    def truncate(self, length: int) -> Batch:
        """The first ``length`` positions of every item (a prefix of the padded sequence).

        Returns
        -------
        Batch
            ``input_ids`` / ``attention_mask`` [B, length] and roles cut to ``length``; images, extras and
            ``image_inputs`` unchanged (per-token inputs are derived from the roles, so they are cut too).

        Raises
        ------
        InputError
            ``length`` is outside 1..T, or the cut would drop image tokens (their images would no longer match).
        """
        T = int(self.input_ids.shape[1])
        if not 1 <= length <= T:
            raise InputError(f"truncate needs a length in 1..{T}, got {length}")
        cut = self.roles.image[:, length:].any(dim=1).nonzero().flatten().tolist()
        if cut:
            ids = self.item_ids or [str(k) for k in range(len(self))]
            raise InputError(f"truncating at {length} positions drops image tokens of item(s) "
                             f"{[ids[b] for b in cut]}; keep every image token (truncate after the images)")
        return replace(self, input_ids=self.input_ids[:, :length], attention_mask=self.attention_mask[:, :length],
                       roles=self.roles.truncate(length))


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
