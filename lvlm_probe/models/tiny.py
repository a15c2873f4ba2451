"""Build small random-init LVLM checkpoints on disk, exactly as a hub checkpoint is laid out.

They exercise the full loading path offline (tests, the demo, benchmarks) and are the base the
organism zoo trains. A directory holds ``config.json``, ``model.safetensors``, a word-level
tokenizer and the family's image processor, so ``lvlm_probe.load(dir)`` treats it like a hub model.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch

#: Default vocabulary: enough words for the demo prompts and simple scene captions.
DEFAULT_WORDS: tuple[str, ...] = (
    "what", "is", "in", "the", "image", "?", "a", "an", "there", "are", "and", "of", "to", "on", "yes", "no",
    "describe", "picture", "colour", "color", "shape", "left", "right", "above", "below", "next", "object",
    "objects", "red", "green", "blue", "yellow", "purple", "orange", "white", "black", "small", "large",
    "circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart", "one", "two", "three", "four",
    "five", ".", ",", "how", "many", "which", "does", "contain", "it", "this", "with",
)


#: ``build_tiny_llava`` settings of LLaVA-1.5-7B's shape (random weights): Llama-2-7B text model (hidden
#: 4096, 32 layers and heads, MLP 11008, vocabulary 32000) and CLIP ViT-L/14 at 336 px (hidden 1024, 24
#: layers, 16 heads, MLP 4096: 576 image tokens); 2-layer GELU projector, features of layer -2.
LLAVA_1_5_7B_SHAPE: dict[str, int] = {
    "image_size": 336, "patch_size": 14, "vision_hidden": 1024, "vision_layers": 24, "vision_heads": 16,
    "vision_intermediate": 4096, "text_hidden": 4096, "text_layers": 32, "text_heads": 32, "text_kv_heads": 32,
    "text_intermediate": 11008, "vocab_size": 32000, "max_positions": 4096,
}


def word_tokenizer(words: Sequence[str], *, specials: Sequence[str], bos: str | None, eos: str, pad: str,
                   unk: str = "<unk>", extra_special: Sequence[str] = (), template_words: Sequence[str] = (),
                   named_specials: dict[str, str] | None = None, added_words: Sequence[str] = ()):
    """A whitespace word-level fast tokenizer (HF ``PreTrainedTokenizerFast``), BOS added when given.

    ``named_specials`` (e.g. ``{"image_token": "<image_soft_token>"}``) become tokenizer attributes
    (``tok.image_token``, ``tok.image_token_id``) saved with it, as a family's processor may read them;
    ``added_words`` are non-special added tokens matched before whitespace splitting (e.g. ``"\\n\\n"``, which
    whitespace splitting would drop).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [pad, unk, *([bos] if bos else []), eos, *specials, *extra_special, *template_words, *words,
              *added_words]:
        if w not in vocab:
            vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    if bos:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    if added_words:
        from tokenizers import AddedToken

        tk.add_tokens([AddedToken(w, normalized=False, special=False) for w in added_words])
    kw = {"extra_special_tokens": dict(named_specials)} if named_specials else {}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, **kw,
    )
    extra = [s for s in [*specials, *extra_special] if s not in (bos, eos, pad, unk)]
    fast.add_special_tokens({"additional_special_tokens": extra})
    return fast


@dataclass(frozen=True, kw_only=True)
class TinyShape:
    """The sizes every tiny family has: width, depth and heads of the vision tower and of the LM.

    Each family's shape (:class:`LlavaShape`, :class:`Qwen2_5_VLShape`, ... in ``TINY_SHAPES``) adds the family's
    image settings and may change these defaults; its builder takes the fields as keyword arguments (``**shape``)
    and refuses any other with a ``TypeError`` naming the shape. Keyword-only, so a family can change a default
    without reordering fields.
    """

    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2


def _shape(cls: type[TinyShape], builder: str, shape: dict[str, Any]) -> Any:
    """``cls(**shape)``; a ``TypeError`` that names ``cls`` for a setting it lacks (a builder's ``**shape``)."""
    unknown = sorted(set(shape) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{builder} got unknown shape settings {unknown}; see {cls.__name__}")
    return cls(**shape)


@dataclass(frozen=True, kw_only=True)
class LlavaShape(TinyShape):
    """The shape of a random-init LLaVA (CLIP vision tower + Llama LM) for :func:`build_tiny_llava`.

    The image grid is ``(image_size // patch_size)²`` tokens per image. MLP widths default to
    ``intermediate_mult`` times the hidden size; ``vocab_size`` to the tokenizer's size (extra rows are ids no
    word maps to).
    """

    image_size: int = 32
    patch_size: int = 8
    vision_intermediate: int | None = None
    text_intermediate: int | None = None
    intermediate_mult: int = 2
    vocab_size: int | None = None
    max_positions: int = 512


def build_tiny_llava(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                     seed: int = 0, dtype: torch.dtype = torch.float32, init_device: str | torch.device | None = None,
                     **shape: int | None) -> Path:
    """Write a random-init ``LlavaForConditionalGeneration`` (CLIP vision + Llama LM) to ``out_dir``.

    ``build_tiny_llava(d, **LLAVA_1_5_7B_SHAPE, dtype=torch.bfloat16, init_device="cuda")`` writes a
    model of LLaVA-1.5-7B's shape (about 14 GB), for speed and memory measurements.

    Parameters
    ----------
    out_dir : path
    words : sequence of str
        The word-level tokenizer's vocabulary (besides special and chat-template tokens).
    init_std : float
        Standard deviation of the random weights.
    seed : int
    dtype : torch.dtype
        Dtype of the written weights.
    init_device : str or torch.device, optional
        Build the weights directly on this device in ``dtype`` (fast for large shapes; the values
        differ from a CPU build with the same seed). Default: built in float32 on the CPU, then
        cast to ``dtype``.
    **shape
        Fields of :class:`LlavaShape` (16 image tokens of a 2-layer LM at the defaults).

    Returns
    -------
    Path
        The directory, loadable with ``lvlm_probe.load``.
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    sh = _shape(LlavaShape, "build_tiny_llava", shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(words, specials=["<image>"], bos="<s>", eos="</s>", pad="<pad>",
                         template_words=["USER:", "ASSISTANT:"])
    cfg = llava_config(tok, sh, init_std=init_std)
    torch.manual_seed(seed)
    if init_device is None:
        model = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    else:
        with torch.device(init_device):  # allocate and initialise there, in dtype: no float32 copy on the CPU
            model = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    _save_with_tokenizer(model, tok, out)
    ip = _image_processor("clip", sh.image_size)
    ip.save_pretrained(out)
    # the processor config too, so HF's own pipeline (``AutoProcessor``) loads the directory as a hub checkpoint
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=sh.patch_size,
                   vision_feature_select_strategy="default", image_token="<image>",
                   num_additional_image_tokens=1).save_pretrained(out)
    return out


def llava_config(tok: Any, shape: LlavaShape | None = None, *, init_std: float = 0.02, **fields_: int | None):
    """The ``LlavaConfig`` :func:`build_tiny_llava` writes: CLIP vision, Llama text, GELU projector.

    Parameters
    ----------
    tok : transformers.PreTrainedTokenizerFast
        Gives the special token ids (``<image>``, pad, BOS, EOS) and the minimum vocabulary size.
    shape : LlavaShape, optional
        Or its fields as keyword arguments.
    init_std : float

    Returns
    -------
    transformers.LlavaConfig
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    sh = shape or LlavaShape(**fields_)
    vc = CLIPVisionConfig(
        hidden_size=sh.vision_hidden,
        intermediate_size=sh.vision_intermediate or sh.vision_hidden * sh.intermediate_mult,
        num_hidden_layers=sh.vision_layers, num_attention_heads=sh.vision_heads, image_size=sh.image_size,
        patch_size=sh.patch_size, projection_dim=sh.vision_hidden, initializer_range=init_std,
    )
    tc = LlamaConfig(
        vocab_size=max(len(tok), sh.vocab_size or 0), hidden_size=sh.text_hidden,
        intermediate_size=sh.text_intermediate or sh.text_hidden * sh.intermediate_mult,
        num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
        max_position_embeddings=sh.max_positions, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, initializer_range=init_std, tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_seq_length=(sh.image_size // sh.patch_size) ** 2, pad_token_id=tok.pad_token_id,
    )


@dataclass(frozen=True, kw_only=True)
class Qwen2_5_VLShape(TinyShape):
    """The shape of a random-init Qwen2.5-VL for :func:`build_tiny_qwen2_5_vl`.

    Images are resized to ``[min_pixels, max_pixels]`` pixels in multiples of ``patch_size · merge``; each
    ``merge × merge`` unit of patches is one LLM token; the vision blocks attend within windows of
    ``window_size`` pixels (the last block attends over the whole image).
    """

    patch_size: int = 14
    merge: int = 2
    window_size: int = 56
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112


def build_tiny_qwen2_5_vl(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                          seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``Qwen2_5_VLForConditionalGeneration`` to ``out_dir``.

    Images are resized within ``[min_pixels, max_pixels]`` so grids vary with aspect ratio, as in
    the real model; the last vision block uses full attention, the others windowed attention.

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`Qwen2_5_VLShape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    sh = _shape(Qwen2_5_VLShape, "build_tiny_qwen2_5_vl", shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = word_tokenizer(words, specials=specials, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                         template_words=["system", "user", "assistant", "You", "are", "helpful", "assistant."])
    head_dim = sh.text_hidden // sh.text_heads
    # mRoPE splits the rotary half-dim into temporal / height / width sections
    mrope = [head_dim // 2 - 2 * (head_dim // 8), head_dim // 8, head_dim // 8]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
            num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
            max_position_embeddings=1024, initializer_range=init_std, tie_word_embeddings=False,
            # the real Qwen ids (151643 ...) lie outside a word-level vocabulary
            bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=sh.vision_layers, hidden_size=sh.vision_hidden, intermediate_size=sh.vision_hidden * 2,
            num_heads=sh.vision_heads, out_hidden_size=sh.text_hidden, patch_size=sh.patch_size, spatial_merge_size=sh.merge,
            temporal_patch_size=2, window_size=sh.window_size, fullatt_block_indexes=[sh.vision_layers - 1],
            in_channels=3, initializer_range=init_std,
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    _save_with_tokenizer(model, tok, out, bos=False)
    ip = _image_processor("qwen2_vl", patch_size=sh.patch_size, merge=sh.merge, min_pixels=sh.min_pixels,
                          max_pixels=sh.max_pixels)
    ip.save_pretrained(out)
    return out


@dataclass(frozen=True, kw_only=True)
class Gemma3Shape(TinyShape):
    """The shape of a random-init Gemma3 for :func:`build_tiny_gemma3`.

    Every image is squashed to ``image_size`` square, ``(image_size / patch_size)²`` SigLIP patches pooled to
    ``tokens_per_image`` soft tokens (a square whose side divides the patch grid); the LM's sliding-window layers
    attend over ``sliding_window`` tokens.
    """

    image_size: int = 48
    patch_size: int = 8
    tokens_per_image: int = 9
    sliding_window: int = 24


def build_tiny_gemma3(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                      seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``Gemma3ForConditionalGeneration`` (SigLIP vision, Gemma3 LM) to ``out_dir``.

    Every image is resized to ``image_size`` square (``(image_size / patch_size)²`` SigLIP patches, no CLS)
    and the projector average-pools the patches to ``tokens_per_image`` soft tokens (a √n × √n grid; 3×3 at
    the defaults). Unlike the real checkpoints the unembedding is not tied to the embedding: a random model
    with tied weights only repeats its last input token. The LM alternates a sliding-window layer and a
    full-attention layer (Gemma3 interleaves them 5:1) with grouped-query attention. The tokenizer carries
    Gemma3's special tokens (turn markers, begin/end of image, the image soft token, and ``"\\n\\n"`` so
    that the blank lines around each image are tokens as in the real vocabulary); the processor and its chat
    template are saved beside it, so ``AutoProcessor.from_pretrained`` loads the directory offline.

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`Gemma3Shape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, Gemma3TextConfig,
                              SiglipVisionConfig)

    from lvlm_probe.models.gemma3 import GEMMA3_CHAT_TEMPLATE

    sh = _shape(Gemma3Shape, "build_tiny_gemma3", shape)
    side = int(round(sh.tokens_per_image ** 0.5))
    n_side = sh.image_size // sh.patch_size
    if side * side != sh.tokens_per_image or sh.image_size % sh.patch_size or n_side % side:
        raise ValueError(f"tokens_per_image={sh.tokens_per_image} must be a square whose side divides the "
                         f"{n_side}x{n_side} patch grid of image_size={sh.image_size}, patch_size={sh.patch_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_tokens = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                    "image_token": "<image_soft_token>"}
    tok = word_tokenizer(words, specials=["<start_of_turn>", "<end_of_turn>", *image_tokens.values()],
                         bos="<bos>", eos="<eos>", pad="<pad>", template_words=["user", "model"],
                         named_specials=image_tokens, added_words=["\n\n"])
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in image_tokens.items()}
    head_dim = sh.text_hidden // sh.text_heads
    tc = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
        num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
        head_dim=head_dim, query_pre_attn_scalar=head_dim, max_position_embeddings=512,
        sliding_window=sh.sliding_window,
        layer_types=["full_attention" if (k + 1) % 2 == 0 else "sliding_attention" for k in range(sh.text_layers)],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        initializer_range=init_std, tie_word_embeddings=False,
    )
    vc = SiglipVisionConfig(
        hidden_size=sh.vision_hidden, intermediate_size=sh.vision_hidden * 2, num_hidden_layers=sh.vision_layers,
        num_attention_heads=sh.vision_heads, image_size=sh.image_size, patch_size=sh.patch_size, num_channels=3,
        vision_use_head=False,
    )
    cfg = Gemma3Config(
        text_config=tc, vision_config=vc, mm_tokens_per_image=sh.tokens_per_image,
        boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"],
        initializer_range=init_std, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg).to(dtype).eval()
    with torch.no_grad():  # HF initialises the projection to zeros (every image would read the same)
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        proj.normal_(0.0, init_std)
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    _save_with_tokenizer(model, tok, out, eos=eos)
    ip = _image_processor("gemma3", sh.image_size)
    ip.save_pretrained(out)
    Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_CHAT_TEMPLATE,
                    image_seq_length=sh.tokens_per_image).save_pretrained(out)
    return out


@dataclass(frozen=True, kw_only=True)
class LlavaNextShape(TinyShape):
    """The shape of a random-init LLaVA-NeXT for :func:`build_tiny_llava_next`.

    A base view of ``image_size`` square (``(image_size / patch_size)²`` tokens) plus the crops of the best-fitting
    ``grid_pinpoints`` canvas (``(height, width)`` pairs, each a multiple of ``image_size``).
    """

    image_size: int = 32
    patch_size: int = 8
    grid_pinpoints: Sequence[Sequence[int]] = ((32, 64), (64, 32), (64, 64), (96, 32), (32, 96))


def build_tiny_llava_next(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                          seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``LlavaNextForConditionalGeneration`` (CLIP vision, Llama LM with grouped-query
    attention, any-resolution tiles) to ``out_dir``.

    Each image gives a base view squashed to ``image_size`` square (an ``(image_size / patch_size)²`` grid, 4×4
    at the defaults) plus the crops of the best-fitting ``grid_pinpoints`` canvas (the released pinpoints
    scaled by ``image_size / 336``: 2, 3 or 4 crops depending on the image's size and aspect), so images of
    different sizes give different token counts. The tokenizer carries ``<image>`` and the ``[INST]`` /
    ``[/INST]`` turn markers of llava-v1.6-mistral; the processor (``LlavaNextProcessor`` with the PIL image
    processor) and the chat template are saved beside it, so ``AutoProcessor.from_pretrained`` loads the
    directory offline.

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`LlavaNextShape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextProcessor)

    from lvlm_probe.models.llava_next import LLAVA_NEXT_CHAT_TEMPLATE

    sh = _shape(LlavaNextShape, "build_tiny_llava_next", shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pins = [[int(h), int(w)] for h, w in sh.grid_pinpoints]
    if sh.image_size % sh.patch_size or any(h % sh.image_size or w % sh.image_size for h, w in pins):
        raise ValueError(f"image_size={sh.image_size} must be a multiple of patch_size={sh.patch_size} and divide every "
                         f"grid pinpoint {pins}")
    tok = word_tokenizer(words, specials=["<image>"], bos="<s>", eos="</s>", pad="<pad>",
                         template_words=["[INST]", "[/INST]"])
    vc = CLIPVisionConfig(
        hidden_size=sh.vision_hidden, intermediate_size=sh.vision_hidden * 2, num_hidden_layers=sh.vision_layers,
        num_attention_heads=sh.vision_heads, image_size=sh.image_size, patch_size=sh.patch_size,
        projection_dim=sh.vision_hidden, initializer_range=init_std,
    )
    tc = LlamaConfig(
        vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
        num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
        max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, initializer_range=init_std, tie_word_embeddings=False,
    )
    cfg = LlavaNextConfig(
        vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
        image_grid_pinpoints=pins, image_seq_length=(sh.image_size // sh.patch_size) ** 2,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).to(dtype).eval()
    _save_with_tokenizer(model, tok, out)
    ip = _image_processor("llava_next", sh.image_size, grid_pinpoints=pins)
    ip.save_pretrained(out)
    LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=sh.patch_size,
                       vision_feature_select_strategy="default", image_token="<image>",
                       num_additional_image_tokens=1, chat_template=LLAVA_NEXT_CHAT_TEMPLATE).save_pretrained(out)
    return out


@dataclass(frozen=True, kw_only=True)
class LlavaOnevisionShape(LlavaNextShape):
    """The shape of a random-init LLaVA-OneVision for :func:`build_tiny_llava_onevision`: LLaVA-NeXT's views, and
    the high-resolution grid shrunk when it holds more than ``1.1² · anyres_max`` base grids."""

    anyres_max: int = 2


def build_tiny_llava_onevision(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                               seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``LlavaOnevisionForConditionalGeneration`` (SigLIP vision without CLS, Qwen2 LM with
    grouped-query attention, any-resolution tiles with the ``anyres_max`` shrink) to ``out_dir``.

    As :func:`build_tiny_llava_next`: a base view squashed to ``image_size`` square (4×4 tokens at the defaults)
    plus the crops of the best ``grid_pinpoints`` canvas (2, 3 or 4 crops by size and aspect). The unpadded
    high-resolution grid is shrunk (bilinear) when it holds more than ``1.1² · anyres_max`` base grids:
    ``vision_aspect_ratio = "anyres_max_{anyres_max}"`` (the released checkpoints use 9; 2 here, so a 3- or 4-crop
    image is shrunk and a 2-crop one is not). An item with several images gets each image's base view only
    (padded to a square), plus one newline token. The tokenizer has ``<image>``, ``<video>`` and the Qwen2 turn
    markers (``<|im_start|>``, ``<|im_end|>``, no BOS); the image processor, the chat template and a
    ``processor_config.json`` (``num_image_tokens``, ``vision_feature_select_strategy``, ``vision_aspect_ratio``)
    are saved beside it, so ``LlavaOnevisionProcessor.from_pretrained`` reads the directory offline (HF's
    ``AutoProcessor`` also wants a video processor, which needs torchvision).

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`LlavaOnevisionShape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    import json

    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config, \
        SiglipVisionConfig

    from lvlm_probe.models.llava_onevision import LLAVA_ONEVISION_CHAT_TEMPLATE

    sh = _shape(LlavaOnevisionShape, "build_tiny_llava_onevision", shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pins = [[int(h), int(w)] for h, w in sh.grid_pinpoints]
    if sh.image_size % sh.patch_size or any(h % sh.image_size or w % sh.image_size for h, w in pins):
        raise ValueError(f"image_size={sh.image_size} must be a multiple of patch_size={sh.patch_size} and divide every "
                         f"grid pinpoint {pins}")
    tok = word_tokenizer(words, specials=["<|im_start|>", "<image>", "<video>"], bos=None, eos="<|im_end|>",
                         pad="<|endoftext|>", template_words=["system", "user", "assistant"])
    tok.chat_template = LLAVA_ONEVISION_CHAT_TEMPLATE
    vc = SiglipVisionConfig(
        hidden_size=sh.vision_hidden, intermediate_size=sh.vision_hidden * 2, num_hidden_layers=sh.vision_layers,
        num_attention_heads=sh.vision_heads, image_size=sh.image_size, patch_size=sh.patch_size, vision_use_head=False,
    )
    tc = Qwen2Config(
        vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
        num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
        max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=None,
        eos_token_id=tok.eos_token_id, initializer_range=init_std, tie_word_embeddings=False,
    )
    aspect = f"anyres_max_{int(sh.anyres_max)}"
    cfg = LlavaOnevisionConfig(
        vision_config=vc, text_config=tc, image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"), projector_hidden_act="gelu",
        vision_feature_select_strategy="full", vision_feature_layer=-1, image_grid_pinpoints=pins,
        vision_aspect_ratio=aspect, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).to(dtype).eval()
    _save_with_tokenizer(model, tok, out, bos=False)
    _image_processor("llava_onevision", sh.image_size, grid_pinpoints=pins).save_pretrained(out)
    # the processor's own settings (ProcessorMixin.save_pretrained would also want a video processor)
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": (sh.image_size // sh.patch_size) ** 2,
        "vision_feature_select_strategy": "full", "vision_aspect_ratio": aspect, "image_token": "<image>",
        "video_token": "<video>"}, indent=2))
    return out


@dataclass(frozen=True, kw_only=True)
class Idefics3Shape(TinyShape):
    """The shape of a random-init Idefics3 for :func:`build_tiny_idefics3`.

    Views (crops and the global view) of ``image_size`` square, up to ``max_tiles_per_side`` crops per side
    (1..6); ``(image_size / patch_size)²`` patches per view merged ``scale_factor²`` at a time by the pixel
    shuffle (``image_size`` a multiple of ``patch_size · scale_factor``).
    """

    image_size: int = 32
    patch_size: int = 4
    scale_factor: int = 2
    max_tiles_per_side: int = 3


def build_tiny_idefics3(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                        seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``Idefics3ForConditionalGeneration`` (SigLIP-style vision, pixel-shuffle connector,
    Llama LM with grouped-query attention) to ``out_dir``.

    ``image_size`` is the side of every view (a crop or the global view; ``vision_config.image_size``). The
    processor resizes every image to a longest edge of ``max_tiles_per_side × image_size`` (upsampling small
    ones), cuts it into up to ``max_tiles_per_side²`` crops of ``image_size`` square plus a global view, so images
    of different sizes and aspect ratios give different crop counts (a 40 × 60 image: 2 × 3 crops). Each view has
    ``(image_size / patch_size)²`` patches (8 × 8 at the defaults) that the connector's pixel shuffle merges
    ``scale_factor²`` at a time into ``(image_size / patch_size / scale_factor)²`` tokens (4 × 4). The tokenizer
    carries SmolVLM's special tokens (``<fake_token_around_image>``, ``<image>``, ``<global-img>``, the 36
    ``<row_r_col_c>`` markers, ``<end_of_utterance>``) and ``"\\n"`` as a token (the processor writes newlines
    between crop rows); ``Idefics3Processor`` with the PIL image processor and the chat template is saved beside
    it, so ``AutoProcessor.from_pretrained`` loads the directory offline (no torchvision needed).

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`Idefics3Shape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, LlamaConfig

    from lvlm_probe.models.idefics3 import (END_OF_UTTERANCE, FAKE_TOKEN, GLOBAL_TOKEN, IDEFICS3_CHAT_TEMPLATE,
                                            MAX_CROPS_PER_SIDE, row_col_token)

    sh = _shape(Idefics3Shape, "build_tiny_idefics3", shape)
    if sh.image_size % (sh.patch_size * sh.scale_factor):
        raise ValueError(f"image_size={sh.image_size} must be a multiple of patch_size × scale_factor = "
                         f"{sh.patch_size} × {sh.scale_factor}")
    if not 1 <= sh.max_tiles_per_side <= MAX_CROPS_PER_SIDE:
        raise ValueError(f"max_tiles_per_side={sh.max_tiles_per_side}: the processor marks 1..{MAX_CROPS_PER_SIDE}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    row_col = [row_col_token(r, c) for r in range(1, MAX_CROPS_PER_SIDE + 1) for c in range(1, MAX_CROPS_PER_SIDE + 1)]
    tok = word_tokenizer(words, specials=[FAKE_TOKEN, "<image>", GLOBAL_TOKEN, *row_col], bos="<|im_start|>",
                         eos=END_OF_UTTERANCE, pad="<|endoftext|>", template_words=["User:", "Assistant:", "System:"],
                         added_words=["\n"])
    tc = LlamaConfig(
        vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
        num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
        max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, initializer_range=init_std, tie_word_embeddings=False,
    )
    cfg = Idefics3Config(
        vision_config=dict(hidden_size=sh.vision_hidden, intermediate_size=sh.vision_hidden * 2,
                           num_hidden_layers=sh.vision_layers, num_attention_heads=sh.vision_heads, image_size=sh.image_size,
                           patch_size=sh.patch_size, initializer_range=init_std),
        text_config=tc.to_dict(), image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=sh.scale_factor,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(cfg).to(dtype).eval()
    _save_with_tokenizer(model, tok, out)
    ip = _image_processor("idefics3", sh.image_size, grid_pinpoints=None, max_tiles=sh.max_tiles_per_side)
    ip.save_pretrained(out)
    Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=(sh.image_size // sh.patch_size // sh.scale_factor) ** 2,
                      chat_template=IDEFICS3_CHAT_TEMPLATE).save_pretrained(out)
    return out


def _qwen_tokenizer(words: Sequence[str], *, default_system: bool) -> Any:
    """Word-level tokenizer with the Qwen-VL special tokens (``<|im_end|>`` ends a turn, no BOS)."""
    specials = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    extra = ["You", "are", "helpful", "assistant."] if default_system else []
    return word_tokenizer(words, specials=specials, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                          template_words=["system", "user", "assistant", *extra])


def _qwen_ids(tok: Any) -> dict[str, int]:
    return {"image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
            "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
            "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>")}


@dataclass(frozen=True, kw_only=True)
class Qwen3VLShape(TinyShape):
    """The shape of a random-init Qwen3-VL for :func:`build_tiny_qwen3_vl` (3 vision and 3 LM layers by default).

    Images are resized to ``[min_pixels, max_pixels]`` pixels in multiples of ``patch_size · merge``; DeepStack
    mergers read the vision blocks ``deepstack_visual_indexes`` (fewer than the LM's layers).
    """

    vision_layers: int = 3
    text_layers: int = 3
    patch_size: int = 16
    merge: int = 2
    min_pixels: int = 64 * 64
    max_pixels: int = 128 * 128
    deepstack_visual_indexes: Sequence[int] = (0, 1)


def build_tiny_qwen3_vl(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                        seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``Qwen3VLForConditionalGeneration`` to ``out_dir``.

    Images are resized within ``[min_pixels, max_pixels]`` to multiples of ``patch_size · merge`` (grids vary
    with aspect ratio, as in the real model); the vision tower has a learned 8×8 position grid resampled to
    each image, and DeepStack mergers on blocks ``deepstack_visual_indexes`` whose features the LM adds at image
    tokens after its first ``len(deepstack_visual_indexes)`` layers (the default leaves the last LM layer
    without one). The LM is Qwen3-style (per-head q/k RMSNorm, grouped-query attention, interleaved mRoPE).
    The tokenizer carries Qwen3-VL's chat template.

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`Qwen3VLShape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from lvlm_probe.models.qwen3_vl import QWEN3_VL_CHAT_TEMPLATE

    sh = _shape(Qwen3VLShape, "build_tiny_qwen3_vl", shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _qwen_tokenizer(words, default_system=False)
    tok.chat_template = QWEN3_VL_CHAT_TEMPLATE
    head_dim = sh.text_hidden // sh.text_heads
    mrope = [head_dim // 2 - 2 * (head_dim // 8), head_dim // 8, head_dim // 8]
    cfg = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
            num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
            head_dim=head_dim, max_position_embeddings=1024, initializer_range=init_std,
            bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "mrope_interleaved": True,
                             "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=sh.vision_layers, hidden_size=sh.vision_hidden, intermediate_size=sh.vision_hidden * 2,
            num_heads=sh.vision_heads, out_hidden_size=sh.text_hidden, patch_size=sh.patch_size, spatial_merge_size=sh.merge,
            temporal_patch_size=2, num_position_embeddings=64, in_channels=3, initializer_range=init_std,
            deepstack_visual_indexes=list(sh.deepstack_visual_indexes),
        ),
        **_qwen_ids(tok), tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg).to(dtype).eval()
    _save_with_tokenizer(model, tok, out, bos=False)
    _image_processor("qwen2_vl", patch_size=sh.patch_size, merge=sh.merge, min_pixels=sh.min_pixels,
                     max_pixels=sh.max_pixels).save_pretrained(out)
    return out


@dataclass(frozen=True, kw_only=True)
class Qwen2VLShape(TinyShape):
    """The shape of a random-init Qwen2-VL for :func:`build_tiny_qwen2_vl`.

    Images are resized to ``[min_pixels, max_pixels]`` pixels in multiples of ``patch_size · merge``; each
    ``merge × merge`` unit of patches is one LLM token.
    """

    patch_size: int = 14
    merge: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112


def build_tiny_qwen2_vl(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                        seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``Qwen2VLForConditionalGeneration`` to ``out_dir``.

    Images are resized within ``[min_pixels, max_pixels]`` so grids vary with aspect ratio; the vision blocks
    use full attention per image (no windows, unlike Qwen2.5-VL) and the merger (LayerNorm + 2-layer MLP) maps
    each ``merge × merge`` unit to one LLM token. The LM is Qwen2 with grouped-query attention and mRoPE.

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`Qwen2VLShape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    sh = _shape(Qwen2VLShape, "build_tiny_qwen2_vl", shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _qwen_tokenizer(words, default_system=True)
    head_dim = sh.text_hidden // sh.text_heads
    mrope = [head_dim // 2 - 2 * (head_dim // 8), head_dim // 8, head_dim // 8]
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
            num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
            max_position_embeddings=1024, initializer_range=init_std, tie_word_embeddings=False,
            bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        ),
        vision_config=dict(
            depth=sh.vision_layers, embed_dim=sh.vision_hidden, hidden_size=sh.text_hidden, mlp_ratio=2,
            num_heads=sh.vision_heads, patch_size=sh.patch_size, spatial_merge_size=sh.merge, temporal_patch_size=2,
            in_channels=3, initializer_range=init_std,
        ),
        **_qwen_ids(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).to(dtype).eval()
    _save_with_tokenizer(model, tok, out, bos=False)
    _image_processor("qwen2_vl", patch_size=sh.patch_size, merge=sh.merge, min_pixels=sh.min_pixels,
                     max_pixels=sh.max_pixels).save_pretrained(out)
    return out


@dataclass(frozen=True, kw_only=True)
class Mistral3Shape(TinyShape):
    """The shape of a random-init Mistral3 for :func:`build_tiny_mistral3`.

    Images keep their aspect ratio: scaled down to a longest edge of ``longest_edge`` px when larger (never up),
    each side rounded up to a multiple of ``patch_size · merge`` px; each ``merge × merge`` block of Pixtral patches
    is one LLM token. ``vision_feature_layer`` is the tower layer the projector reads (-1: the last).
    """

    patch_size: int = 4
    merge: int = 2
    longest_edge: int = 64
    vision_feature_layer: int = -1


def build_tiny_mistral3(out_dir: str | os.PathLike, *, words: Sequence[str] = DEFAULT_WORDS, init_std: float = 0.02,
                        seed: int = 0, dtype: torch.dtype = torch.float32, **shape: Any) -> Path:
    """Write a random-init ``Mistral3ForConditionalGeneration`` (Pixtral vision with 2-D rotary positions, RMSNorm +
    patch merger + MLP projector, Mistral LM with grouped-query attention) to ``out_dir``.

    Images are not squashed: a 40 × 60 (h × w) image stays 40 × 64 after rounding (8-px tokens at the defaults), a
    5 × 8 token grid; a larger one is scaled to a longest edge of ``longest_edge``. The tokenizer carries Mistral's
    ``[INST]`` / ``[/INST]``, ``[SYSTEM_PROMPT]`` / ``[/SYSTEM_PROMPT]`` and the image tokens ``[IMG]``,
    ``[IMG_BREAK]``, ``[IMG_END]``, with the chat template; the PIL image processor and a ``processor_config.json``
    (``PixtralProcessor``: ``patch_size``, ``spatial_merge_size``) are saved beside it. HF's ``PixtralProcessor``
    module imports torchvision, so ``AutoProcessor`` reads the directory only where torchvision imports; lvlm_probe
    needs none.

    ``words``, ``init_std``, ``seed`` and ``dtype`` as in :func:`build_tiny_llava`; ``**shape``: fields of
    :class:`Mistral3Shape` (its defaults otherwise; any other name is a ``TypeError``).
    """
    import json

    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from lvlm_probe.models.mistral3 import IMAGE_BREAK, IMAGE_END, IMAGE_TOKEN, MISTRAL3_CHAT_TEMPLATE

    sh = _shape(Mistral3Shape, "build_tiny_mistral3", shape)
    if sh.longest_edge % (sh.patch_size * sh.merge):
        raise ValueError(f"longest_edge={sh.longest_edge} must be a multiple of patch_size × merge = "
                         f"{sh.patch_size} × {sh.merge}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = word_tokenizer(words, specials=["[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", IMAGE_TOKEN,
                                          IMAGE_BREAK, IMAGE_END], bos="<s>", eos="</s>", pad="<pad>")
    tok.chat_template = MISTRAL3_CHAT_TEMPLATE
    cfg = Mistral3Config(
        text_config=dict(
            model_type="mistral", vocab_size=len(tok), hidden_size=sh.text_hidden, intermediate_size=sh.text_hidden * 2,
            num_hidden_layers=sh.text_layers, num_attention_heads=sh.text_heads, num_key_value_heads=sh.text_kv_heads,
            head_dim=sh.text_hidden // sh.text_heads, max_position_embeddings=1024, sliding_window=None,
            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            initializer_range=init_std, tie_word_embeddings=False,
        ),
        vision_config=dict(
            model_type="pixtral", hidden_size=sh.vision_hidden, intermediate_size=sh.vision_hidden * 2,
            num_hidden_layers=sh.vision_layers, num_attention_heads=sh.vision_heads,
            head_dim=sh.vision_hidden // sh.vision_heads, image_size=sh.longest_edge, patch_size=sh.patch_size,
            initializer_range=init_std,
        ),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN), spatial_merge_size=sh.merge,
        vision_feature_layer=sh.vision_feature_layer, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Mistral3ForConditionalGeneration(cfg).to(dtype).eval()
    _save_with_tokenizer(model, tok, out)
    _image_processor("pixtral", sh.longest_edge, patch_size=sh.patch_size).save_pretrained(out)
    # the processor's own settings (PixtralProcessor.save_pretrained needs the class, whose module needs torchvision)
    (out / "processor_config.json").write_text(json.dumps({
        "processor_class": "PixtralProcessor", "patch_size": sh.patch_size, "spatial_merge_size": sh.merge,
        "image_token": IMAGE_TOKEN, "image_break_token": IMAGE_BREAK, "image_end_token": IMAGE_END}, indent=2))
    return out


def _save_with_tokenizer(model: Any, tok: Any, out: Path, *, eos: Any = None, bos: bool = True) -> None:
    """Put the tokenizer's special ids on the generation config (``eos``: another end-of-turn id or list; ``bos``:
    set the begin id too) and save model and tokenizer to ``out``."""
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id if eos is None else eos
    if bos:
        model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _image_processor(kind: str, image_size: int = 32, patch_size: int = 14, merge: int = 2,
                     min_pixels: int = 0, max_pixels: int = 0, grid_pinpoints: list | None = None,
                     max_tiles: int = 1):
    """The family's PIL image processor (no torchvision needed)."""
    import transformers

    if kind == "clip":
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    if kind == "llava_next":  # base view squashed to image_size square + crops of the best pinpoint canvas
        cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
        return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                   image_grid_pinpoints=grid_pinpoints)
    if kind == "idefics3":  # longest edge max_tiles tiles (small images upsampled), crops of image_size + global view
        cls = getattr(transformers, "Idefics3ImageProcessorPil", None) or transformers.Idefics3ImageProcessor
        return cls(size={"longest_edge": max_tiles * image_size}, max_image_size={"longest_edge": image_size},
                   do_image_splitting=True)
    if kind == "llava_onevision":  # as llava_next; a multi-image item's images are padded to a square instead
        cls = getattr(transformers, "LlavaOnevisionImageProcessorPil", None) or \
            transformers.LlavaOnevisionImageProcessor
        return cls(size={"height": image_size, "width": image_size}, image_grid_pinpoints=grid_pinpoints)
    if kind == "pixtral":  # aspect kept: longest edge image_size (never upscaled), sides rounded up to patches
        cls = getattr(transformers, "PixtralImageProcessorPil", None) or transformers.PixtralImageProcessor
        return cls(size={"longest_edge": image_size}, patch_size={"height": patch_size, "width": patch_size})
    if kind == "gemma3":  # squashes any image to image_size square (no crop); pan-and-scan off, as by default
        cls = getattr(transformers, "Gemma3ImageProcessorPil", None) or transformers.Gemma3ImageProcessor
        return cls(size={"height": image_size, "width": image_size})
    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    return cls(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=merge,
               temporal_patch_size=2)


#: Tiny-checkpoint builders by family name (``lvlm-probe make-tiny --family``); a new family adds its builder here,
#: its shape to ``TINY_SHAPES`` and its benchmark settings to ``BENCH_SHAPES``.
TINY_BUILDERS = {"llava": build_tiny_llava, "qwen2_5_vl": build_tiny_qwen2_5_vl, "gemma3": build_tiny_gemma3,
                 "llava_next": build_tiny_llava_next, "qwen3_vl": build_tiny_qwen3_vl, "qwen2_vl": build_tiny_qwen2_vl,
                 "idefics3": build_tiny_idefics3, "llava_onevision": build_tiny_llava_onevision,
                 "mistral3": build_tiny_mistral3}
#: The ``**shape`` dataclass of each family's builder (its fields are the settings the builder accepts).
TINY_SHAPES: dict[str, type[TinyShape]] = {
    "llava": LlavaShape, "qwen2_5_vl": Qwen2_5_VLShape, "gemma3": Gemma3Shape, "llava_next": LlavaNextShape,
    "qwen3_vl": Qwen3VLShape, "qwen2_vl": Qwen2VLShape, "idefics3": Idefics3Shape,
    "llava_onevision": LlavaOnevisionShape, "mistral3": Mistral3Shape,
}
#: The family ``make-tiny`` builds when none is named.
TINY_DEFAULT = "llava"

#: Per family, the image settings ``benchmarks/capture_overhead.py --family`` adds to its common sizes (its
#: ``MODEL_SIZES``: 224-px images, 14-px patches, 256 image tokens for llava); the benchmark passes a builder only
#: the settings its ``TINY_SHAPES`` dataclass has (the Qwen builders size images in pixels, not ``image_size``).
#: LLaVA-NeXT's pinpoints are the released ``[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]``
#: scaled to 224 px.
BENCH_SHAPES: dict[str, dict[str, Any]] = {
    "llava": {},
    "llava_next": {"grid_pinpoints": [[224, 448], [448, 224], [448, 448], [672, 224], [224, 672]]},
    # Idefics3: 224-px views, longest edge 448 px (a square image: 2 x 2 crops + the global view), pixel shuffle 2
    "idefics3": {"scale_factor": 2, "max_tiles_per_side": 2},
    # Gemma3: SigLIP on 224 px / 14 px patches, no pooling (256 soft tokens, as llava's 256 image tokens)
    "gemma3": {"tokens_per_image": 256},
    # Qwen families: images resized to 448 px (Qwen2-VL, Qwen2.5-VL: 14-px patches) or 512 px (Qwen3-VL: 16-px
    # patches), so the 2 x 2 merge gives 256 tokens per image
    "qwen2_5_vl": {"min_pixels": 448 * 448, "max_pixels": 448 * 448},
    "qwen2_vl": {"min_pixels": 448 * 448, "max_pixels": 448 * 448},
    "qwen3_vl": {"patch_size": 16, "min_pixels": 512 * 512, "max_pixels": 512 * 512},
    # the same scaled pinpoints with the released anyres_max_9 (a 224 px square: base view + 2 crops, no shrink)
    "llava_onevision": {"grid_pinpoints": [[224, 448], [448, 224], [448, 448], [672, 224], [224, 672]],
                        "anyres_max": 9},
    # Mistral3: longest edge 224 px (Pixtral never upscales), 14-px patches, the released 2 x 2 merge: a 224 px square
    # is 16 x 16 = 256 Pixtral patches and 8 x 8 = 64 LLM tokens (+ 8 [IMG_BREAK] / [IMG_END])
    "mistral3": {"longest_edge": 224},
}
