"""Family adapters: every architecture-specific fact lives in one adapter module per family.

An adapter knows the image placeholder and token id, how images become pixel tensors and how
many LLM tokens each image yields (the patch grid), the default chat template, and how each
canonical capture site maps to a TransformerBridge hook name and back to patch coordinates.
Nothing outside ``lvlm_probe/models`` may hard-code any of these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import torch
from PIL import Image

from lvlm_probe.errors import SiteError, UnsupportedModelError

#: Canonical site templates and what they are (documented in docs/sites.md).
SITE_DOCS: dict[str, str] = {
    "vision.resid_post.{l}": "output of vision-encoder layer l, one vector per patch",
    "projector.in": "input of the vision-language projector, one vector per patch",
    "projector.out": "output of the projector: the image-token embeddings the LLM receives",
    "llm.resid_pre.{l}": "input of LLM decoder layer l (layer 0: the merged text+image embeddings)",
    "llm.resid_mid.{l}": "LLM residual stream after attention, before the MLP, in layer l",
    "llm.resid_post.{l}": "output of LLM decoder layer l (before the final norm)",
    "llm.attn_out.{l}": "attention block output of LLM layer l (added to the residual)",
    "llm.mlp_out.{l}": "MLP output of LLM layer l (added to the residual)",
    "llm.attn_pattern.{l}": "post-softmax attention pattern of LLM layer l [heads, query, key]",
    "llm.final_norm": "final norm output (what the unembedding reads)",
}

#: Bridge hook templates shared by the LLM side of every family (TransformerBridge canonical names).
LLM_HOOKS: dict[str, str] = {
    "llm.resid_pre": "blocks.{l}.hook_resid_pre",
    "llm.resid_mid": "blocks.{l}.hook_resid_mid",
    "llm.resid_post": "blocks.{l}.hook_resid_post",
    "llm.attn_out": "blocks.{l}.hook_attn_out",
    "llm.mlp_out": "blocks.{l}.hook_mlp_out",
    "llm.attn_pattern": "blocks.{l}.attn.hook_pattern",
}


@dataclass(frozen=True)
class Site:
    """A parsed canonical site name.

    Attributes
    ----------
    name : str
        Full canonical name, e.g. ``llm.resid_post.3`` or ``projector.out``.
    stem : str
        Name without the layer, e.g. ``llm.resid_post``.
    layer : int or None
    kind : {"vision", "llm", "pattern"}
        ``vision``: per-patch tensors of the vision side; ``llm``: [B, T, d] sequence tensors;
        ``pattern``: [B, H, Q, K] attention patterns.
    """

    name: str
    stem: str
    layer: int | None
    kind: str


@dataclass
class ImageInputs:
    """Processed images of one batch (all items' images concatenated in item order).

    Attributes
    ----------
    pixel_values : torch.Tensor
    extras : dict
        Other forward inputs (e.g. ``image_grid_thw``).
    llm_grids : list of (rows, cols)
        Per image: the grid of LLM image tokens.
    tokens_per_image : list of int
        Per image: number of LLM image tokens (rows*cols, plus any non-grid tokens).
    vision_grids : list of (rows, cols)
        Per image: the vision encoder's patch grid.
    pixel_rows : list of (start, stop)
        Per image: its rows ``[start, stop)`` along ``pixel_values`` dim 0 (LLaVA: ``(k, k + 1)``;
        Qwen2.5-VL: ``tokens × merge²`` patch rows). ``Batch.select`` slices images with it.
    tile_grids : list of list of (rows, cols), optional
        Per image, per tile: the LLM grid of each tile (a tile is a view of the image whose tokens lie on a grid
        of their own). None for families without tiles: every image is one tile, ``[llm_grids[k]]``. LLaVA-NeXT:
        tile 0 is the base (global) view's grid, tile 1 the unpadded high-resolution grid assembled from the
        crops. ``llm_grids[k]`` stays the grid attribution maps are drawn on (LLaVA-NeXT: tile 0's).
    image_info : list of dict, optional
        Per image, facts the adapter needs later to lay out its tokens or map its pixels and that no forward input
        carries (Idefics3: ``{"crops": (rows, cols)}``). ``Batch.select`` slices it with the images; never passed
        to the model.
    """

    pixel_values: torch.Tensor
    extras: dict[str, torch.Tensor]
    llm_grids: list[tuple[int, int]]
    tokens_per_image: list[int]
    vision_grids: list[tuple[int, int]]
    pixel_rows: list[tuple[int, int]] | None = None
    tile_grids: list[list[tuple[int, int]]] | None = None
    image_info: list[dict] | None = None

    def tiles(self, k: int) -> list[tuple[int, int]]:
        """The grid of each tile of image ``k`` (``[llm_grids[k]]`` for families without tiles)."""
        return list(self.tile_grids[k]) if self.tile_grids is not None else [self.llm_grids[k]]


def _unwrap(module: Any) -> Any:
    """The HF module behind a TransformerBridge wrapper (calling it fires no bridge hooks)."""
    return getattr(module, "original_component", module)


class FamilyAdapter(ABC):
    """Base class: one subclass per architecture family.

    Subclasses set the class attributes and implement the abstract methods.
    """

    #: Short family name used in messages and manifests.
    family: ClassVar[str] = ""
    #: ``config.model_type`` values this adapter serves.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: The placeholder a raw prompt (``chat_template=False``) carries once per image.
    image_placeholder: ClassVar[str] = "<image>"
    #: Name of the HF model class in ``transformers`` (loaded by ``lvlm_probe.load``).
    hf_class_name: ClassVar[str] = ""
    #: Forward input that marks image tokens per position, for families whose positions depend on it
    #: (Qwen2.5-VL builds its 3-D mRoPE positions only when ``mm_token_type_ids`` is passed); None if none.
    token_type_input: ClassVar[str | None] = None
    #: Forward input that counts the images of each item that has any, for families whose processing of an
    #: image depends on how many images share its prompt (LLaVA-OneVision: ``batch_num_images``); None if none.
    #: ``Batch.model_inputs()`` derives it from ``Batch.n_images``, so every slice of a batch keeps it aligned.
    images_per_item_input: ClassVar[str | None] = None
    #: Site stems (``vision.resid_post``, ...) that the installed TransformerLens bridge adapter of this family cannot
    #: hook, each with the reason; empty when the bridge serves every canonical site. ``lvlm_probe.load`` runs a family
    #: with any on the forward-hook fallback unless ``backend="bridge"`` is asked for (Mistral3: TransformerLens 4.3
    #: wraps the Pixtral tower opaquely, so its layers have no bridge hooks).
    bridge_missing_sites: ClassVar[dict[str, str]] = {}

    def __init__(self, hf_config: Any, tokenizer: Any, image_processor: Any, hf_model: Any) -> None:
        self.hf_config = hf_config
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.hf_model = hf_model

    @classmethod
    def hf_class(cls) -> type:
        """The ``transformers`` model class of this family."""
        import transformers

        return getattr(transformers, cls.hf_class_name)

    # ---- facts -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def image_token_id(self) -> int:
        """Id of the image token that stands for one image feature in input_ids."""

    @property
    def placeholder_token_id(self) -> int:
        """Id of the token a rendered prompt carries once per image, before expansion.

        Default: :attr:`image_token_id` (LLaVA, Qwen2.5-VL: the placeholder is the image token, repeated once
        per image feature). Gemma3 overrides it: its placeholder ``<start_of_image>`` is not its image token.
        """
        return self.image_token_id

    def placeholder_expansion(self, n_tokens: int, images: ImageInputs | None = None,
                              index: int | None = None) -> str | None:
        """The text that replaces one image placeholder before tokenising, or None.

        None (default): ``prepare`` tokenises the prompt and repeats each placeholder token ``n_tokens`` times
        (LLaVA, Qwen2.5-VL). A family whose processor rewrites the placeholder into more than image tokens (Gemma3:
        a blank line, begin-of-image, ``n_tokens`` soft tokens, end-of-image, a blank line) returns that text:
        ``prepare`` then tokenises the rewritten prompt, exactly as the HF processor does, gives the inserted
        non-image tokens the ``template`` role, and the ``image_token_id`` positions the ``image`` role.

        Parameters
        ----------
        n_tokens : int
            The image's LLM tokens (``ImageInputs.tokens_per_image``).
        images, index : ImageInputs and int, optional
            The batch's processed images and this image's index among them, for an expansion that depends on more
            than the token count (Idefics3: one block per crop, its row / column markers). ``prepare`` passes them;
            without them an adapter returns the expansion of an image without tiles (or None).
        """
        return None

    @property
    def max_positions(self) -> int | None:
        """The LLM's context length in tokens (``max_position_embeddings``), or None when the config has none."""
        n = getattr(self.hf_config.text_config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    @property
    def n_llm_layers(self) -> int:
        return int(self.hf_config.text_config.num_hidden_layers)

    @property
    @abstractmethod
    def n_vision_layers(self) -> int:
        """Number of vision-encoder layers."""

    def template_token_ids(self) -> set[int]:
        """Special ids that are scaffolding even when they come from the user's raw prompt."""
        ids = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        ids.discard(self.image_token_id)
        return ids

    # ---- prompts -----------------------------------------------------------------------------
    @abstractmethod
    def default_chat_template(self) -> str:
        """Jinja template used when the checkpoint ships none."""

    def render_chat(
        self, question: str, n_images: int, system: str | None, chat_template: str
    ) -> str:
        """Render one user turn (images first, then the question) plus the generation prompt."""
        from jinja2 import Template  # transformers depends on jinja2

        content: list[dict] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": question})
        messages: list[dict] = []
        if system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": content})
        env_kwargs = {
            "messages": messages,
            "add_generation_prompt": True,
            "bos_token": self.tokenizer.bos_token or "",
            "eos_token": self.tokenizer.eos_token or "",
        }
        try:
            return self.tokenizer.apply_chat_template(
                messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
            )
        except Exception:  # noqa: BLE001 - some templates need the plain jinja path
            return Template(chat_template).render(**env_kwargs)

    def answer_prefix(self) -> str:
        """Text inserted between the generation prompt and a teacher-forced answer."""
        return " "

    # ---- images ------------------------------------------------------------------------------
    @abstractmethod
    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        """Turn PIL images into pixel tensors and report each image's grids and token count."""

    def process_item_images(self, per_item: Sequence[Sequence[Image.Image]]) -> ImageInputs:
        """:meth:`process_images` of a batch given per item (an item without images is an empty list).

        Default: the items' images concatenated in item order. A family whose processing of an image depends on
        the other images of its item (LLaVA-OneVision: an item with several images gets no crops) overrides it.
        """
        return self.process_images([im for ims in per_item for im in ims])

    @abstractmethod
    def image_token_coords(self, grid: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        """(row, col) of each of one image's LLM tokens in sequence order ((-1, -1) for non-grid tokens)."""

    def image_token_layout(self, images: ImageInputs, k: int) -> list[tuple[int, int, int]]:
        """``(tile, row, col)`` of each of image ``k``'s LLM tokens in sequence order.

        ``row, col`` lie on the grid of that tile (``images.tiles(k)[tile]``); ``(-1, -1)`` marks an image token
        that sits on no grid cell (a CLS token, LLaVA-NeXT's row-end newline) but still belongs to ``tile``.
        Default: one tile (0), the coordinates of :meth:`image_token_coords`. Families with tiles (LLaVA-NeXT)
        override it; the length must be ``images.tokens_per_image[k]``.
        """
        return [(0, r, c) for r, c in self.image_token_coords(images.llm_grids[k], images.tokens_per_image[k])]

    def separator_token_ids(self) -> set[int]:
        """Ids that a placeholder expansion (:meth:`placeholder_expansion`) inserts between an image's tiles or
        rows and that are **not** the image token; they get the ``separator`` role instead of ``template``.

        Default: none. LLaVA-NeXT's row-end newlines are image-token ids (the model fills them with its learned
        ``image_newline`` vector), so they keep the ``image`` role; a family whose processor writes text
        separators between tiles (e.g. Idefics3's row / column markers) lists them here.
        """
        return set()

    def channel_view(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` of one item as ``[rows, channels, -1]`` (a view): LLaVA's ``[n_images, C, H, W]`` and
        Qwen2.5-VL's ``[n_patches, C·T·P·P]`` both store the channels first. Used to fill an image with one
        colour per channel (e.g. its background) in the processor's normalised pixel space."""
        n_channels = int(getattr(getattr(self.hf_config, "vision_config", None), "num_channels", 3) or 3)
        return pixel_values.reshape(pixel_values.shape[0], n_channels, -1)

    def pixel_cells(self, pixels: torch.Tensor, grid: tuple[int, int], images: ImageInputs | None = None,
                    index: int | None = None) -> torch.Tensor:
        """The pixel ↔ token cell rule: which LLM grid cell each element of one image's pixel rows feeds.

        The default serves image-tensor layouts (one ``[C, H, W]`` row per image, as LLaVA): a pixel at
        ``(y, x)`` belongs to cell ``(y // (H / rows), x // (W / cols))``. Families with another layout
        override it (Qwen2.5-VL: flattened merge-unit patches).

        Parameters
        ----------
        pixels : torch.Tensor
            One image's rows of ``pixel_values`` (``pixel_values[start:stop]`` of ``ImageInputs.pixel_rows``).
        grid : (rows, cols)
            The image's LLM grid (``ImageInputs.llm_grids``).
        images, index : ImageInputs and int, optional
            The batch's processed images and this image's index among them, for a rule that needs more than the
            pixels (LLaVA-NeXT: the original image size, to place each crop's pixels on the image). The base
            rule and Qwen2.5-VL's ignore them.

        Returns
        -------
        torch.LongTensor, same shape as ``pixels``
            The raster cell id ``row * cols + col`` of every element, in ``0 .. rows*cols - 1``.

        Raises
        ------
        UnsupportedModelError
            The adapter has no rule for this pixel layout.
        ValueError
            The image's size is not a whole multiple of its grid.
        """
        if pixels.dim() != 4 or pixels.shape[0] != 1:
            raise UnsupportedModelError(f"{type(self).__name__} has no pixel-cell rule for pixel rows of shape "
                                      f"{tuple(pixels.shape)}")
        h, w = grid
        H, W = pixels.shape[-2:]
        if H % h or W % w:
            raise ValueError(f"{H}x{W} px, not a multiple of its {h}x{w} grid")
        ys = torch.arange(H, device=pixels.device) // (H // h)
        xs = torch.arange(W, device=pixels.device) // (W // w)
        return (ys[:, None] * w + xs[None, :]).expand(pixels.shape).clone()

    # ---- logit lens ----------------------------------------------------------------------------
    def final_norm(self) -> torch.nn.Module:
        """The LLM's final norm (what ``llm.final_norm`` outputs; the unembedding reads it), as a raw HF module.

        The default is the decoder's ``norm`` (``get_decoder().norm``); adapters name theirs explicitly.
        """
        dec = self.hf_model.get_decoder() if hasattr(self.hf_model, "get_decoder") else None
        norm = getattr(dec, "norm", None)
        if norm is None:
            raise UnsupportedModelError(f"{type(self).__name__} does not name its LLM's final norm")
        return _unwrap(norm)

    def unembed(self) -> torch.nn.Module:
        """The unembedding (``lm_head``): ``[..., d_model] -> [..., vocab]`` logits, as a raw HF module."""
        head = self.hf_model.get_output_embeddings()
        if head is None:
            raise UnsupportedModelError(f"{type(self).__name__} does not name its unembedding")
        return _unwrap(head)

    def lens_modules(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """``(final_norm, unembed)``: ``unembed(final_norm(resid_post[-1]))`` equals the model's logits."""
        return self.final_norm(), self.unembed()

    # ---- sites -------------------------------------------------------------------------------
    def parse_site(self, name: str) -> Site:
        """Parse a concrete canonical site name (no wildcard)."""
        parts = name.split(".")
        if name in ("projector.in", "projector.out"):
            return Site(name, name, None, "vision")
        if name == "llm.final_norm":
            return Site(name, name, None, "llm")
        if len(parts) == 3 and parts[2].isdigit():
            stem, layer = f"{parts[0]}.{parts[1]}", int(parts[2])
            if stem == "vision.resid_post":
                if layer >= self.n_vision_layers:
                    raise SiteError(
                        f"site {name!r}: the vision encoder has {self.n_vision_layers} layers (0..{self.n_vision_layers - 1})"
                    )
                return Site(name, stem, layer, "vision")
            if stem in LLM_HOOKS:
                if layer >= self.n_llm_layers:
                    raise SiteError(f"site {name!r}: the LLM has {self.n_llm_layers} layers (0..{self.n_llm_layers - 1})")
                return Site(name, stem, layer, "pattern" if stem == "llm.attn_pattern" else "llm")
        raise SiteError(
            f"unknown site {name!r}; canonical sites are {sorted(SITE_DOCS)} with {{l}} a layer number or '*'"
        )

    def expand_sites(self, patterns: Sequence[str]) -> list[Site]:
        """Expand names with ``{l}`` = ``*`` into concrete sites, validating each."""
        if isinstance(patterns, str):  # one site name, not its characters
            patterns = [patterns]
        out: list[Site] = []
        for pat in patterns:
            if not isinstance(pat, str):
                raise SiteError(f"site {pat!r} is a {type(pat).__name__}, not a site name; give names such as "
                                "'llm.resid_post.3' or 'llm.resid_post.*'")
            if pat.endswith(".*"):
                stem = pat[:-2]
                n = self.n_vision_layers if stem == "vision.resid_post" else self.n_llm_layers
                if stem != "vision.resid_post" and stem not in LLM_HOOKS:
                    raise SiteError(f"unknown site {pat!r}; layered sites are vision.resid_post and {sorted(LLM_HOOKS)}")
                out.extend(self.parse_site(f"{stem}.{i}") for i in range(n))
            else:
                out.append(self.parse_site(pat))
        names = [s.name for s in out]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SiteError(f"site(s) {sorted(dup)} requested twice")
        return out

    def all_sites(self) -> list[str]:
        """Every concrete site this model offers."""
        pats = ["vision.resid_post.*", "projector.in", "projector.out"]
        pats += [f"{s}.*" for s in LLM_HOOKS] + ["llm.final_norm"]
        return [s.name for s in self.expand_sites(pats)]

    def hook_name(self, site: Site) -> str:
        """The TransformerBridge hook name of a site."""
        if site.stem in LLM_HOOKS:
            return LLM_HOOKS[site.stem].format(l=site.layer)
        if site.stem == "llm.final_norm":
            return "ln_final.hook_out"
        return self.vision_hook_name(site)

    @abstractmethod
    def vision_hook_name(self, site: Site) -> str:
        """Bridge hook name of a vision-side site (vision.resid_post.{l}, projector.in/out)."""

    @abstractmethod
    def vision_patches(
        self, site: Site, tensor: torch.Tensor, images: ImageInputs
    ) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        """Split a vision-side hook tensor into per-image patch matrices in raster order.

        Returns
        -------
        list of (Tensor [rows*cols, d], (rows, cols))
            One entry per image of the batch, rows in row-major order of the returned grid.
        """
        ...

    def grid_sums(self, site: Site, tensor: torch.Tensor, images: ImageInputs) -> list[torch.Tensor]:
        """Per image, every row of a vision-side tensor that reaches the LLM, summed onto the image's attribution
        grid (``llm_grids``): ``[rows * cols, d]`` in raster order.

        Layer attribution on ``projector.out`` reduces with it, so a family whose projector rows are more than one
        per grid cell (LLaVA-NeXT: the base view's rows and the high-resolution crops' rows) still gives maps whose
        sum is the whole attribution. Default: :meth:`vision_patches` (one row per cell).
        """
        return [t for t, _ in self.vision_patches(site, tensor, images)]

    # ---- HF modules of the forward-hook fallback (models/hook_backend.py) ------------------------
    def llm_layer_modules(self) -> Sequence[torch.nn.Module]:
        """The LLM's decoder layers as raw HF modules (default: the decoder's ``layers``)."""
        dec = self.hf_model.get_decoder() if hasattr(self.hf_model, "get_decoder") else None
        layers = getattr(dec, "layers", None)
        if layers is None:
            raise UnsupportedModelError(f"{type(self).__name__} does not name its LLM's decoder layers")
        return [_unwrap(m) for m in layers]

    def attention_module(self, layer: torch.nn.Module) -> torch.nn.Module:
        """A decoder layer's attention module (HF: ``self_attn``; it returns ``(output, weights)``)."""
        return layer.self_attn

    def vision_block_modules(self) -> Sequence[torch.nn.Module]:
        """The vision encoder's layers as raw HF modules; families served by the fallback name theirs."""
        raise UnsupportedModelError(f"{type(self).__name__} does not name its vision layers for forward hooks")

    def projector_module(self) -> torch.nn.Module:
        """The vision-language projector as a raw HF module; families served by the fallback name theirs."""
        raise UnsupportedModelError(f"{type(self).__name__} does not name its projector for forward hooks")

    def hook_module(self, site: Site) -> tuple[torch.nn.Module, str]:
        """The HF module a canonical site is read on by the forward-hook fallback, and how: ``out`` (its output, or
        output[0]), ``in`` (its first input), ``mid`` (first input, read-only), ``weights`` (output[1], read-only).
        The table and the reasons are in :mod:`lvlm_probe.models.hook_backend`."""
        if site.stem == "vision.resid_post":
            return self.vision_block_modules()[site.layer], "out"
        if site.stem in ("projector.in", "projector.out"):
            return self.projector_module(), "in" if site.stem == "projector.in" else "out"
        if site.stem == "llm.final_norm":
            return self.final_norm(), "out"
        layer = self.llm_layer_modules()[site.layer]
        return {
            "llm.resid_pre": (layer, "in"),
            "llm.resid_mid": (layer.post_attention_layernorm, "mid"),
            "llm.resid_post": (layer, "out"),
            "llm.attn_out": (self.attention_module(layer), "out"),
            "llm.mlp_out": (layer.mlp, "out"),
            "llm.attn_pattern": (self.attention_module(layer), "weights"),
        }[site.stem]

    # ---- misc --------------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-able facts for manifests and ``lvlm-probe info``."""
        return {
            "family": self.family,
            "model_type": self.hf_config.model_type,
            "image_token_id": self.image_token_id,
            "image_placeholder": self.image_placeholder,
            "n_llm_layers": self.n_llm_layers,
            "n_vision_layers": self.n_vision_layers,
        }

    def config_hash(self) -> str:
        import hashlib

        blob = json.dumps(self.hf_config.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
