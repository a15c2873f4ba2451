"""The interventions room's common interface: an :class:`Intervention` and :func:`decode`.

An intervention is parameter-frozen: it changes activations (bridge hooks, removed on exit also on error) and/or the
next-token scores (an HF ``LogitsProcessor`` that may run a second, auxiliary forward pass). :func:`decode` runs it
inside :meth:`LVLM.generate <lvlm_probe.models.LVLM.generate>`, so the main branch is HF ``generate`` with its KV
cache, exactly as an unmodified run; with no hooks and no processor it *is* ``model.generate``.

Auxiliary branches (VCD's noised image, the image-free branch of M3ID / PAI) are recomputed at every step **without
a KV cache**: one full forward of the prompt plus the tokens generated so far (cheap for small models; for LLaVA-7B
it is O(T^2) per caption). They use :meth:`LVLM.forward`'s position convention, which equals ``generate``'s for
unpadded rows; decode items of equal prompt length together (or one at a time) for exact two-branch arithmetic.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch

from lvlm_probe.errors import InputError
from lvlm_probe.models.records import Batch, Generation

#: A step function: (input_ids [B, T+t], scores [B, V] float32) -> new scores [B, V].
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Intervention:
    """Base class: a named, parameter-frozen decoding intervention with the paper it follows.

    Subclasses are frozen dataclasses whose fields are the knobs; they implement :meth:`session`.
    """

    name: ClassVar[str] = "intervention"
    paper: ClassVar[str] = ""

    def session(self, model: Any, batch: Batch) -> contextlib.AbstractContextManager[Step | None]:
        """Context manager that installs this intervention's hooks for ``batch`` and yields its step function
        (``None``: scores untouched). Every hook is removed on exit, also when an exception is raised inside."""
        return contextlib.nullcontext(None)

    def generate(self, model: Any, batch: Batch, **generate_kwargs: Any) -> Generation | None:
        """A decoding strategy that is more than one ``generate`` call (several generations, changed inputs)
        returns its :class:`Generation` here; ``None`` (the default): :func:`decode` runs ``model.generate``
        inside :meth:`session`."""
        return None

    def describe(self) -> dict:
        """JSON-able ``{"method", "paper", **knobs}``."""
        return {"method": self.name, "paper": self.paper, **asdict(self)}


def check_text_strategy(name: str, what: str, model: Any, batch: Batch, generate_kwargs: dict) -> None:
    """Refuse, in one line each, what a strategy of several generations cannot do (``RegionRestart``,
    ``VerifyObjects``): per-step scores (``output_scores`` is popped from ``generate_kwargs``; the text it returns
    was never one forward run), and a pixel layout other than one ``[C, H, W]`` tensor per item (``what`` says why
    there are no scores, e.g. "joins several generations")."""
    if generate_kwargs.pop("output_scores", False):
        raise InputError(f"{name} {what}, so it has no per-step scores; decode it with output_scores=False")
    px = batch.pixel_values
    if px is None or px.dim() != 4 or any(n != 1 for n in batch.n_images) or px.shape[0] != len(batch):
        raise InputError(f"{name} needs one image per item as a [n_images, C, H, W] pixel tensor "
                         f"({model.family} gives {None if px is None else tuple(px.shape)}); use a LLaVA-1.5 "
                         "family model")


class _Processor:
    """An HF ``LogitsProcessor`` around a step function (HF only needs ``__call__``)."""

    def __init__(self, step: Step) -> None:
        self.step = step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.step(input_ids, scores.float()).to(scores.dtype)


def decode(model: Any, batch: Batch, method: Intervention | None = None, *, max_new_tokens: int,
           do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           seed: int | None = None, output_scores: bool = False) -> Generation:
    """Generate under an intervention; same record type as :meth:`LVLM.generate`.

    Parameters
    ----------
    model : LVLM
    batch : Batch
        From ``model.prepare``.
    method : Intervention, optional
        Default :class:`~lvlm_probe.interventions.Greedy` (plain ``model.generate``).
    max_new_tokens, do_sample, temperature, top_p, top_k, seed, output_scores :
        As :meth:`LVLM.generate` (greedy by default); a step function acts before sampling.

    Returns
    -------
    Generation
        ``settings["intervention"]`` holds ``method.describe()``.
    """
    if method is None:
        from lvlm_probe.interventions.methods import Greedy

        method = Greedy()
    if not isinstance(method, Intervention):
        raise InputError(f"method must be an Intervention (e.g. lp.interventions.VCD()), got {type(method).__name__}")
    model.check_batch(batch)
    own = method.generate(model, batch, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                          top_p=top_p, top_k=top_k, seed=seed, output_scores=output_scores)
    if own is not None:
        own.settings["intervention"] = method.describe()
        return own
    with warnings.catch_warnings(record=True) as caught, method.session(model, batch) as step:
        warnings.simplefilter("always")
        procs = [_Processor(step)] if step is not None else None
        gen = model.generate(batch, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                             top_p=top_p, top_k=top_k, seed=seed, output_scores=output_scores,
                             logits_processor=procs)
    for w in caught:
        if "edit is discarded" in str(w.message):
            raise InputError(f"{method.name}: this model's bridge ignores edits of attention scores ({model.family} "
                             "delegates attention to the HF module), so the intervention would do nothing; use a "
                             "LLaVA-family model")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    gen.settings["intervention"] = method.describe()
    return gen


# ---- shared pieces --------------------------------------------------------------------------------------------
def apc(main: torch.Tensor, scores: torch.Tensor, beta: float) -> torch.Tensor:
    """Adaptive plausibility constraint (Leng et al. 2024, §3.1): ``scores`` set to -inf where
    ``main < log(beta) + max(main)``, i.e. where ``p_main < beta * max p_main``.

    Parameters
    ----------
    main : torch.Tensor [B, V]
        Raw logits (or log-probabilities) of the main branch.
    scores : torch.Tensor [B, V]
    beta : float in (0, 1]
    """
    cut = main.max(-1, keepdim=True).values + math.log(beta)
    return scores.masked_fill(main < cut, float("-inf"))


def check_fraction(name: str, value: float, *, low_open: bool = True) -> None:
    """One-line error for a knob that must lie in (0, 1]."""
    if not (0 < value <= 1) if low_open else not (0 <= value <= 1):
        raise InputError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")


def aux_logits(model: Any, batch: Batch, input_ids: torch.Tensor, **replace: Any) -> torch.Tensor:
    """Last-position logits [B, V] float32 of the auxiliary branch: the prompt plus the tokens generated so far,
    one full forward without a KV cache; ``replace`` overrides model inputs (e.g. ``pixel_values``)."""
    B, T0 = batch.input_ids.shape
    G = input_ids.shape[1] - T0
    kw = batch.model_inputs()
    kw["attention_mask"] = torch.cat([batch.attention_mask, batch.attention_mask.new_ones(B, G)], dim=1)
    kw.update(replace)
    with torch.no_grad():
        out = model.hf_model(input_ids=input_ids, **kw, use_cache=False)
    return out.logits[:, -1].float()


@contextlib.contextmanager
def image_blind(model: Any, input_ids: torch.Tensor) -> Iterator[None]:
    """While active, no non-image query reads an image key in any LLM layer (forwards of ``input_ids``' shape):
    the image-free counterfactual with unchanged positions (M3ID variant (b), methods.md §3.3).

    Edits the additive 4-D attention mask each bridge attention component receives (as
    :func:`lvlm_probe.attribution.block_attention` does); removed on exit, also on error.
    """
    img = input_ids == model.image_token_id  # [B, T]
    block = (~img)[:, None, :, None] & img[:, None, None, :]  # [B, 1, Q, K]

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        am = kwargs.get("attention_mask")
        if am is None or am.dim() != 4 or tuple(am.shape[-2:]) != tuple(block.shape[-2:]):
            raise InputError("the image-free branch needs eager attention's 4-D additive mask of the full sequence; "
                             f"got {None if am is None else tuple(am.shape)}")
        kwargs = dict(kwargs, attention_mask=am.masked_fill(block.to(am.device), torch.finfo(am.dtype).min))
        return args, kwargs

    handles = []
    try:
        for blk in model.bridge.blocks:
            handles.append(blk.attn.register_forward_pre_hook(pre_hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def word_ids(model: Any, words: Sequence[str]) -> list[int]:
    """First token id of each word and of its capitalised form (deduplicated, unknown forms skipped).

    Raises
    ------
    InputError
        No form of any word is in the tokenizer's vocabulary.
    """
    tok, out = model.tokenizer, []
    unk = getattr(tok, "unk_token_id", None)
    for w in words:
        for form in {w, w.capitalize()}:
            ids = tok(form, add_special_tokens=False)["input_ids"]
            if ids and ids[0] != unk and ids[0] not in out:
                out.append(int(ids[0]))
    if not out:
        raise InputError(f"none of {list(words)} is in the tokenizer's vocabulary")
    return out


def llm_layers(model: Any, layers: Sequence[int] | None, default: Sequence[int]) -> list[int]:
    """Validated LLM layer indices (``default`` when None); negative indices count from the top."""
    nL = model.adapter.n_llm_layers
    out = [int(x) + nL if int(x) < 0 else int(x) for x in (default if layers is None else layers)]
    bad = [x for x in out if not 0 <= x < nL]
    if bad or not out:
        raise InputError(f"layers {list(layers or [])} out of range; the LLM has layers 0..{nL - 1}")
    return out
