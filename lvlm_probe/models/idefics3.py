"""Idefics3 / SmolVLM family (``Idefics3ForConditionalGeneration``): SigLIP-style vision tower, pixel-shuffle
connector, Llama-shaped LM.

Owns every Idefics3 fact (checked against transformers 5.23, ``models/idefics3``):

- the image processor resizes every image so that its longest edge is ``size["longest_edge"]`` (small images
  are **upsampled**), then stretches it to whole multiples of the tile side ``S = max_image_size["longest_edge"]``
  and cuts it into ``rows × cols`` crops of ``S × S`` in raster order, followed by a **global view** (the same
  image squashed to ``S × S``); an image that fits in one tile gives only that view (``rows = cols = 0``). There is
  no minimum image size (a 1-pixel image is upsampled like any other);
- the vision tower runs on each ``S × S`` view (``(S/p)²`` patches, no CLS) and the connector's pixel shuffle
  merges ``scale × scale`` patches into one token, so each view gives ``g × g`` tokens, ``g = S / p / scale``,
  in raster order of its ``g × g`` grid;
- the processor rewrites each ``<image>`` into, per crop row ``r`` and column ``c``,
  ``<fake_token_around_image><row_r_col_c>`` + ``g²`` × ``<image>``, a ``\\n`` after each crop row, then
  ``\\n<fake_token_around_image><global-img>`` + ``g²`` × ``<image>`` + ``<fake_token_around_image>`` (without
  crops: only the global part, with no newline). Only the ``<image>`` positions receive image features;
- the HF layout of ``pixel_values`` is ``[items, max_views, 3, S, S]`` with all-zero views padding the items
  (the model drops every all-zero view) and a ``pixel_attention_mask`` that is 1 on every pixel of every real view.
  lvlm_probe stores **one view per row**, ``[Σ views, 1, 3, S, S]`` in processor order (each image's crops, then
  its global view), and passes no mask: the model then sees the same real views in the same order with the same
  all-ones mask, so its outputs are HF's (:meth:`Idefics3Adapter.processor_layout` gives HF's tensors back), and
  every image owns a contiguous block of rows (``ImageInputs.pixel_rows``) that ``Batch.select`` can slice;
- the chat template (SmolVLM's ``<|im_start|>User:<image>…<end_of_utterance>\\nAssistant:``).

lvlm_probe's tiles: **tile 0 is the global view** (as LLaVA-NeXT's base view is tile 0), tiles ``1 .. rows·cols``
the crops in raster order, although the global view comes last in the sequence and in the pixel rows. Every tile's
grid is ``g × g``; the attribution grid (``llm_grids``) is tile 0's. The ``<fake_token_around_image>``,
``<row_r_col_c>``, ``<global-img>`` and newline tokens the processor inserts have the ``separator`` role.
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from lvlm_probe.errors import UnsupportedModelError
from lvlm_probe.models.base import FamilyAdapter, ImageInputs, Site, _unwrap

#: The text markers Idefics3's processor writes around an image's views (``Idefics3Processor``).
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
#: Crop markers the processor knows: ``<row_{r}_col_{c}>`` for r, c in 1..6.
MAX_CROPS_PER_SIDE = 6


def row_col_token(r: int, c: int) -> str:
    """The marker of the crop in (1-based) row ``r`` and column ``c``."""
    return f"<row_{r}_col_{c}>"


#: SmolVLM's prompt format, written for lvlm_probe (used when a checkpoint ships none): BOS, then per turn the
#: capitalised role, ``:`` (``: `` when the turn starts with text), the images as ``<image>`` and the text,
#: ``<end_of_utterance>\n``; the generation prompt is ``Assistant:``.
IDEFICS3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ m['role'] | capitalize }}{% if m['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


class Idefics3Adapter(FamilyAdapter):
    """Adapter for Idefics3 / SmolVLM checkpoints (``model_type == "idefics3"``)."""

    family = "idefics3"
    model_types = ("idefics3",)
    image_placeholder = "<image>"
    hf_class_name = "Idefics3ForConditionalGeneration"
    _separators: set[int] | None = None

    # ---- facts -------------------------------------------------------------------------------
    @property
    def image_token_id(self) -> int:
        return int(self.hf_config.image_token_id)

    @property
    def n_vision_layers(self) -> int:
        return int(self.hf_config.vision_config.num_hidden_layers)

    @property
    def patch_size(self) -> int:
        return int(self.hf_config.vision_config.patch_size)

    @property
    def scale_factor(self) -> int:
        """Patches merged per side by the connector's pixel shuffle (``config.scale_factor``)."""
        return int(self.hf_config.scale_factor)

    def tile_side(self, pixels: int) -> int:
        """Tokens per side of a view of ``pixels × pixels``: ``pixels / patch_size / scale_factor``."""
        p, s = self.patch_size, self.scale_factor
        if pixels % (p * s):
            raise UnsupportedModelError(f"Idefics3 views of {pixels} px are not a multiple of patch_size × "
                                        f"scale_factor = {p} × {s}")
        return pixels // (p * s)

    @staticmethod
    def crops(images: ImageInputs, k: int) -> tuple[int, int]:
        """``(rows, cols)`` of image ``k``'s crops (``(0, 0)``: only the global view)."""
        return tuple(images.image_info[k]["crops"])  # type: ignore[return-value, index]

    def separator_token_ids(self) -> set[int]:
        """``<fake_token_around_image>``, ``<global-img>``, every ``<row_r_col_c>`` and the newline token(s) (the
        ids of ``"\\n"`` and ``"\\n\\n"``, which a BPE tokenizer may merge); a marker the tokenizer does not hold as
        one token gives the ids of its pieces. Only inside an expansion are they ``separator``; a newline of the
        chat template or the question keeps its own role."""
        if self._separators is None:
            tok = self.tokenizer
            names = [FAKE_TOKEN, GLOBAL_TOKEN, "\n", "\n\n"] + [
                row_col_token(r, c) for r in range(1, MAX_CROPS_PER_SIDE + 1) for c in range(1, MAX_CROPS_PER_SIDE + 1)]
            ids: set[int] = set()
            for n in names:
                ids |= set(tok(n, add_special_tokens=False)["input_ids"])
            ids.discard(self.image_token_id)
            self._separators = ids
        return set(self._separators)

    # ---- prompts -----------------------------------------------------------------------------
    def default_chat_template(self) -> str:
        return IDEFICS3_CHAT_TEMPLATE

    def answer_prefix(self) -> str:
        return " "

    def placeholder_expansion(self, n_tokens: int, images: ImageInputs | None = None,
                              index: int | None = None) -> str:
        """What Idefics3's processor writes for one ``<image>`` (``Idefics3Processor.replace_image_token``): per crop
        ``<fake_token_around_image><row_r_col_c>`` + its image tokens, ``\\n`` after each crop row, then
        ``\\n<fake_token_around_image><global-img>`` + the global view's image tokens + ``<fake_token_around_image>``.
        Without ``images`` (or for an image without crops): only the global part."""
        img = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        rows, cols = (0, 0) if images is None or index is None else self.crops(images, index)
        per_view = n_tokens // (rows * cols + 1)
        glob = f"{FAKE_TOKEN}{GLOBAL_TOKEN}{img * per_view}{FAKE_TOKEN}"
        if rows == 0 and cols == 0:
            return glob
        text = ""
        for r in range(rows):
            for c in range(cols):
                text += f"{FAKE_TOKEN}{row_col_token(r + 1, c + 1)}{img * per_view}"
            text += "\n"
        return text + "\n" + glob

    # ---- images ------------------------------------------------------------------------------
    def process_images(self, images: Sequence[Image.Image]) -> ImageInputs:
        """Each image through the processor on its own (the processor treats images independently; only the
        padding differs), its real views kept one per row: ``pixel_values`` ``[Σ views, 1, 3, S, S]``."""
        out = self.image_processor(images=[[im] for im in images], return_tensors="pt", return_row_col_info=True)
        pv, mask = out["pixel_values"], out.get("pixel_attention_mask")
        if pv.dim() != 5 or pv.shape[-1] != pv.shape[-2]:
            raise UnsupportedModelError(f"the Idefics3 image processor returned pixel_values of shape "
                                        f"{tuple(pv.shape)}; expected [images, views, 3, S, S]")
        S = int(pv.shape[-1])
        g = self.tile_side(S)
        views, info, rows_out, tiles = [], [], [], []
        r0 = 0
        for k in range(len(images)):
            rows, cols = int(out["rows"][k][0]), int(out["cols"][k][0])
            if rows > MAX_CROPS_PER_SIDE or cols > MAX_CROPS_PER_SIDE:
                raise UnsupportedModelError(f"image {k} is cut into {rows}x{cols} crops; Idefics3's processor has "
                                            f"markers for at most {MAX_CROPS_PER_SIDE} per side")
            n = rows * cols + 1
            if mask is not None and not bool(mask[k, :n].all()):
                raise UnsupportedModelError("the Idefics3 image processor padded pixels inside a view; lvlm_probe "
                                            "expects every view to be a full S x S square (do_image_splitting)")
            views.append(pv[k, :n])
            info.append({"crops": (rows, cols)})
            rows_out.append((r0, r0 + n))
            tiles.append([(g, g)] * n)
            r0 += n
        n_img = len(images)
        return ImageInputs(
            pixel_values=torch.cat(views)[:, None], extras={}, llm_grids=[(g, g)] * n_img,
            tokens_per_image=[len(t) * g * g for t in tiles],
            vision_grids=[(S // self.patch_size, S // self.patch_size)] * n_img,
            pixel_rows=rows_out, tile_grids=tiles, image_info=info,
        )

    def processor_layout(self, pixel_values: torch.Tensor, n_images: Sequence[int], images: ImageInputs
                         ) -> dict[str, torch.Tensor]:
        """HF's ``pixel_values`` ``[items, max_views, 3, S, S]`` (zero views padding the items) and
        ``pixel_attention_mask`` ``[items, max_views, S, S]`` from lvlm_probe's one-view-per-row layout.

        Parameters
        ----------
        pixel_values : torch.Tensor
            ``Batch.pixel_values`` ``[Σ views, 1, 3, S, S]``.
        n_images : sequence of int
            Images per item (``Batch.n_images``).
        images : ImageInputs
            ``Batch.image_inputs`` (each image's rows).
        """
        per_item, k = [], 0
        for n in n_images:
            spans = images.pixel_rows[k:k + n]
            per_item.append(pixel_values[spans[0][0]:spans[-1][1], 0] if n else pixel_values[:0, 0])
            k += n
        V = max(p.shape[0] for p in per_item)
        out = pixel_values.new_zeros((len(per_item), V, *pixel_values.shape[2:]))
        mask = torch.zeros((len(per_item), V, *pixel_values.shape[-2:]), dtype=torch.long, device=out.device)
        for b, p in enumerate(per_item):
            out[b, :p.shape[0]] = p
            mask[b, :p.shape[0]] = 1
        return {"pixel_values": out, "pixel_attention_mask": mask}

    def image_token_coords(self, grid: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        """The tiles need the crop arrangement: use :meth:`image_token_layout`."""
        raise UnsupportedModelError("Idefics3's token layout depends on the image's crops; use image_token_layout")

    def image_token_layout(self, images: ImageInputs, k: int) -> list[tuple[int, int, int]]:
        """Sequence order: crops ``1 .. rows·cols`` (raster order of the crops), each on its ``g × g`` grid in raster
        order, then the global view (tile 0) on its grid."""
        rows, cols = self.crops(images, k)
        g = images.llm_grids[k][0]
        cells = [(r, c) for r in range(g) for c in range(g)]
        out = [(1 + q, r, c) for q in range(rows * cols) for r, c in cells]
        return out + [(0, r, c) for r, c in cells]

    def pixel_cells(self, pixels: torch.Tensor, grid: tuple[int, int], images: ImageInputs | None = None,
                    index: int | None = None) -> torch.Tensor:
        """Cells of the global view's grid (the attribution grid) by image position.

        One image's rows are its views ``[rows·cols + 1, 1, 3, S, S]``: crops in raster order, the global view last.
        Global view pixel ``(y, x)`` → cell ``(y·g // S, x·g // S)``. The crops tile the resized image exactly (the
        processor stretches it to whole tiles), so crop ``(i, j)``'s pixel ``(y, x)`` lies at ``(i·S + y,
        j·S + x)`` of a ``rows·S × cols·S`` canvas that is the whole image, and gets the global cell covering the
        same point (by its pixel centre). Occluding a cell removes that region of the image from every view.
        """
        if images is None or index is None or images.image_info is None:
            raise UnsupportedModelError("Idefics3's cell rule needs the image's crops: pass images= and index=")
        if pixels.dim() != 5 or pixels.shape[1] != 1:
            raise UnsupportedModelError(f"Idefics3 has no pixel-cell rule for pixel rows of shape "
                                        f"{tuple(pixels.shape)}")
        h, w = grid
        S = int(pixels.shape[-1])
        if pixels.shape[-2] != S or S % h or S % w:
            raise ValueError(f"{pixels.shape[-2]}x{S} px, not a multiple of its {h}x{w} grid")
        rows, cols = self.crops(images, index)
        if pixels.shape[0] != rows * cols + 1:
            raise ValueError(f"{pixels.shape[0]} views for {rows}x{cols} crops and a global view")
        dev = pixels.device
        ar = torch.arange(S, device=dev)
        per_view = []
        for q in range(rows * cols):
            i, j = divmod(q, cols)
            ys = ((2 * (ar + i * S) + 1) * h).div(2 * rows * S, rounding_mode="floor")
            xs = ((2 * (ar + j * S) + 1) * w).div(2 * cols * S, rounding_mode="floor")
            per_view.append(ys[:, None] * w + xs[None, :])
        per_view.append((ar * h // S)[:, None] * w + (ar * w // S)[None, :])
        cells = torch.stack(per_view)  # [views, S, S]
        return cells[:, None, None].expand(pixels.shape).clone()

    # ---- logit lens --------------------------------------------------------------------------
    def final_norm(self) -> torch.nn.Module:
        """The LM's final RMSNorm, ``model.text_model.norm``."""
        return _unwrap(self.hf_model.model.text_model.norm)

    def unembed(self) -> torch.nn.Module:
        return _unwrap(self.hf_model.lm_head)

    # ---- sites -------------------------------------------------------------------------------
    def vision_hook_name(self, site: Site) -> str:
        if site.stem == "vision.resid_post":
            return f"vision_encoder.encoder_layers.{site.layer}.hook_out"
        return {"projector.in": "vision_projector.hook_in", "projector.out": "vision_projector.hook_out"}[site.stem]

    def _view_rows(self, site: Site, tensor: torch.Tensor, images: ImageInputs) -> None:
        n = images.pixel_rows[-1][1] if images.pixel_rows else 0
        if tensor.dim() != 3 or tensor.shape[0] != n:
            raise ValueError(f"{site.name}: tensor of shape {tuple(tensor.shape)}, expected [{n} views, rows, d]")

    def vision_patches(self, site: Site, tensor: torch.Tensor, images: ImageInputs):
        """The vision tower and the connector run on every view, ``[Σ views, rows, d]`` (no CLS). Per image, its
        **global view** (tile 0, its last row) comes out in raster order: on the ``S/p`` patch grid for the
        encoder layers and ``projector.in``, on the ``g × g`` token grid for ``projector.out`` (the rows the LLM
        receives at the image's tile-0 tokens). The crops are not returned per patch."""
        self._view_rows(site, tensor, images)
        grids = images.llm_grids if site.stem == "projector.out" else images.vision_grids
        out = []
        for k, ((_, stop), (h, w)) in enumerate(zip(images.pixel_rows, grids)):
            t = tensor[stop - 1]
            if t.shape[0] != h * w:
                raise ValueError(f"{site.name}: image {k} has {t.shape[0]} rows per view, expected {h * w} ({h}x{w})")
            out.append((t, (h, w)))
        return out

    def grid_sums(self, site: Site, tensor: torch.Tensor, images: ImageInputs) -> list[torch.Tensor]:
        """``projector.out`` rows of every view of an image summed onto its global grid: the global view's rows one
        per cell; crop ``(i, j)``'s token ``(r, c)`` sits at ``(i·g + r, j·g + c)`` of the ``rows·g × cols·g``
        crop grid (the whole image) and is added to the global cell covering its centre."""
        if site.stem != "projector.out":
            return super().grid_sums(site, tensor, images)
        self._view_rows(site, tensor, images)
        out = []
        for k, (a, z) in enumerate(images.pixel_rows):
            h, w = images.llm_grids[k]
            rows, cols = self.crops(images, k)
            acc = tensor[z - 1].clone()
            if rows * cols:
                dev = tensor.device
                q = torch.arange(rows * cols, device=dev)[:, None]
                p = torch.arange(h * w, device=dev)[None, :]
                R = (q // cols) * h + p // w
                C = (q % cols) * w + p % w
                cell = ((2 * R + 1) * h).div(2 * rows * h, rounding_mode="floor") * w + \
                    ((2 * C + 1) * w).div(2 * cols * w, rounding_mode="floor")
                acc.index_add_(0, cell.reshape(-1), tensor[a:z - 1].reshape(-1, tensor.shape[-1]))
            out.append(acc)
        return out
