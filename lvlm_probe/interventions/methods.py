"""The interventions and their controls (research notes: methods.md §3, §5, §9.2).

Methods: :class:`Greedy`, :class:`VCD`, :class:`ImageFreeContrast` (M3ID-style), :class:`PAI`,
:class:`ProjectAway`, :class:`EarlyReadout` (DeCo-style). Controls of "The Mirage of Performance Gains"
(Yin et al., 2025): :class:`Greedy`, :class:`PlausibilityOnly` and :class:`YesRatioMatched` (with
:func:`yes_ratio_shift`). Every knob is a dataclass field; nothing trains.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from lvlm_probe.errors import InputError
from lvlm_probe.interventions.base import (Intervention, Step, aux_logits, apc, check_fraction, image_blind,
                                          llm_layers, word_ids)
from lvlm_probe.models.records import Batch


@dataclass(frozen=True)
class Greedy(Intervention):
    """No intervention: ``model.generate`` as it is (the greedy baseline when decoding greedily)."""

    name = "greedy"
    paper = "control: Yin et al. 2025, The Mirage of Performance Gains, https://arxiv.org/abs/2504.10020"


@dataclass(frozen=True)
class PlausibilityOnly(Intervention):
    """The adaptive plausibility constraint alone (tokens with ``p < beta * max p`` removed), no contrast.

    The control that separates what a contrastive method gains from its APC truncation. Under greedy decoding it is
    the identity (the argmax always passes); it matters when sampling.
    """

    beta: float = 0.1
    name = "plausibility_only"
    paper = "control: APC of Leng et al. 2024 (https://arxiv.org/abs/2311.16922) as in Yin et al. 2025"

    def session(self, model: Any, batch: Batch) -> contextlib.AbstractContextManager[Step | None]:
        check_fraction("beta", self.beta)
        return contextlib.nullcontext(lambda ids, s: apc(s, s, self.beta))


def diffusion_noise(pixels: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """VCD's forward-diffusion noise ``sqrt(abar_T) v + sqrt(1 - abar_T) eps`` (methods.md §3.1).

    Parameters
    ----------
    pixels : torch.Tensor [...]
        Normalised pixel values as the model receives them (any layout).
    steps : int in [0, 999]
        ``T`` of a 1000-step sigmoid beta schedule (1e-5 .. 5e-3); 500 gives ``0.863 v + 0.505 eps``.
    seed : int
        Seeds ``eps`` (a private generator; the global RNG is untouched).

    Returns
    -------
    torch.Tensor
        Same shape, device and dtype as ``pixels``.
    """
    if not 0 <= steps < 1000:
        raise InputError(f"noise_steps must be in [0, 999], got {steps}")
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    abar = float(torch.cumprod(1 - betas, 0)[steps])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    eps = torch.randn(pixels.shape, generator=gen, dtype=torch.float32).to(pixels.device)
    return (math.sqrt(abar) * pixels.float() + math.sqrt(1 - abar) * eps).to(pixels.dtype)


@dataclass(frozen=True)
class VCD(Intervention):
    """Visual Contrastive Decoding: ``(1+alpha) l(v) - alpha l(v')`` against a diffusion-noised image ``v'``, with
    the adaptive plausibility constraint ``beta`` on ``l(v)``. Leng et al., CVPR 2024, https://arxiv.org/abs/2311.16922.

    Knobs: ``alpha`` = 1, ``beta`` = 0.1, ``noise_steps`` = 500 (of 1000), ``seed`` of the noise. ``alpha = 0``
    equals greedy. Cost: one extra full forward per step (no KV cache on the noised branch).
    """

    alpha: float = 1.0
    beta: float = 0.1
    noise_steps: int = 500
    seed: int = 0
    name = "vcd"
    paper = "Leng et al., CVPR 2024, https://arxiv.org/abs/2311.16922"

    @contextlib.contextmanager
    def session(self, model: Any, batch: Batch) -> Iterator[Step | None]:
        check_fraction("beta", self.beta)
        if batch.pixel_values is None:
            raise InputError("VCD contrasts against a noised image; the batch has no image")
        noisy = diffusion_noise(batch.pixel_values, self.noise_steps, self.seed)

        def step(ids: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            if self.alpha == 0:
                return apc(s, s, self.beta)
            s_noise = aux_logits(model, batch, ids, pixel_values=noisy)
            return apc(s, (1 + self.alpha) * s - self.alpha * s_noise, self.beta)

        yield step


@dataclass(frozen=True)
class ImageFreeContrast(Intervention):
    """M3ID-style contrast against the image-free model: ``l_c + w_t (l_c - l_u)`` on log-probabilities, APC ``beta``.

    ``l_u`` is the same sequence with every text query blocked from every image key in all LLM layers (attention
    knockout, M3ID variant (b) of methods.md §3.3): removing the image tokens would shift positions. ``w_t =
    min(cap, alpha + exp(lam t) - 1)`` at generated token ``t``; M3ID proper (Favero et al., CVPR 2024,
    https://arxiv.org/abs/2403.14003) is ``alpha = 0, lam = 0.02`` (no correction at the first token); the default
    ``alpha = 1`` adds a constant VCD-like weight so one-token answers are corrected too.
    """

    alpha: float = 1.0
    lam: float = 0.02
    cap: float = 5.0
    beta: float = 0.1
    name = "image_free"
    paper = "Favero et al., CVPR 2024 (M3ID), https://arxiv.org/abs/2403.14003"

    @contextlib.contextmanager
    def session(self, model: Any, batch: Batch) -> Iterator[Step | None]:
        check_fraction("beta", self.beta)
        T0 = batch.input_ids.shape[1]

        def step(ids: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            w = min(self.cap, self.alpha + math.expm1(self.lam * (ids.shape[1] - T0)))
            with image_blind(model, ids):
                lu = aux_logits(model, batch, ids).log_softmax(-1)
            lc = s.log_softmax(-1)
            return apc(lc, lc + w * (lc - lu), self.beta)

        yield step


@dataclass(frozen=True)
class PAI(Intervention):
    """Paying More Attention to Image: in ``layers``, the last query row's pre-softmax scores on image keys become
    ``a + alpha |a|``; the scores are then refined against the image-free branch, ``gamma s_c - (gamma - 1) s_u``
    (log-softmax, the image-free pass without amplification), APC ``beta``. Liu, Zheng & Chen, ECCV 2024,
    https://arxiv.org/abs/2407.21771.

    ``layers`` default: every layer from ``first_layer`` on (PAI: 2..31 of 32). Needs a bridge that honours edits
    of ``blocks.{l}.attn.hook_attn_scores`` (LLaVA family); elsewhere :func:`decode` raises.
    """

    alpha: float = 0.2
    layers: tuple[int, ...] | None = None
    first_layer: int = 2
    gamma: float = 1.1
    beta: float = 0.1
    name = "pai"
    paper = "Liu, Zheng & Chen, ECCV 2024, https://arxiv.org/abs/2407.21771"

    @contextlib.contextmanager
    def session(self, model: Any, batch: Batch) -> Iterator[Step | None]:
        check_fraction("beta", self.beta)
        nL = model.adapter.n_llm_layers
        layers = llm_layers(model, self.layers, range(min(self.first_layer, nL - 1), nL))
        state = {"on": True}
        hooks = [(f"blocks.{x}.attn.hook_attn_scores", amplify_image_attention(batch, self.alpha, state))
                 for x in layers]

        def step(ids: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            if self.gamma == 1:
                return apc(s, s, self.beta)
            state["on"] = False
            try:
                with image_blind(model, ids):
                    su = aux_logits(model, batch, ids).log_softmax(-1)
            finally:
                state["on"] = True
            sc = s.log_softmax(-1)
            return apc(sc, self.gamma * sc - (self.gamma - 1) * su, self.beta)

        with model.hooks(hooks):
            yield step


def amplify_image_attention(batch: Batch, alpha: float, state: dict | None = None) -> Any:
    """Hook on ``hook_attn_scores`` [B, H, Q, K]: last query row, finite image-key entries ``a -> a + alpha |a|``.

    Image keys are ``batch.roles.image`` (prompt positions; generated keys are never image). ``state["on"]`` False
    leaves scores untouched (the auxiliary branch). Returns a new tensor (the bridge uses the hook's return value).
    """
    img = batch.roles.image  # [B, T0]

    def fn(scores: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if state is not None and not state["on"]:
            return scores
        B, K = scores.shape[0], scores.shape[-1]
        cols = torch.zeros(B, K, dtype=torch.bool, device=scores.device)
        cols[:, :img.shape[1]] = img.to(scores.device)
        a = scores[..., -1, :]
        m = cols[:, None, :] & (a > torch.finfo(a.dtype).min / 2)
        out = scores.clone()
        out[..., -1, :] = torch.where(m, a + alpha * a.abs(), a)
        return out

    return fn


@dataclass(frozen=True)
class ProjectAway(Intervention):
    """Subtract an object word's text direction from the image tokens' residual (prefill only):
    ``h_i -= weight * relu(h_i . t / t . t) t`` at ``llm.resid_post.{layer}`` for every image position ``i``.
    ``t`` is the hidden state of the word's last token fed alone (BOS + word) at HF ``hidden_states[text_layer]``.
    Jiang et al., ICLR 2025, "Interpreting and Editing Vision-Language Representations to Mitigate
    Hallucinations", https://arxiv.org/abs/2410.02762 (defaults of their demo: text_layer 1, layer 2, weight 1.5).
    """

    words: tuple[str, ...] = ()
    layer: int = 2
    weight: float = 1.5
    text_layer: int = 1
    name = "project_away"
    paper = "Jiang et al., ICLR 2025, https://arxiv.org/abs/2410.02762"

    @contextlib.contextmanager
    def session(self, model: Any, batch: Batch) -> Iterator[Step | None]:
        words = (self.words,) if isinstance(self.words, str) else tuple(self.words)
        if not words:
            raise InputError("ProjectAway needs words=('object', ...): the hallucinated object(s) to erase")
        (layer,) = llm_layers(model, [self.layer], [])
        dirs = [word_direction(model, w, self.text_layer) for w in words]
        img, T0 = batch.roles.image, batch.input_ids.shape[1]

        def edit(h: torch.Tensor, hook: Any = None) -> torch.Tensor:
            if h.shape[1] != T0:  # decode steps (KV cache) hold no image position
                return h
            out = h.clone()
            m = img.to(h.device)
            for t in dirs:
                x = out[m]
                p = (x.float() @ t) / (t @ t)
                out[m] = (x.float() - self.weight * p.clamp(min=0)[:, None] * t).to(h.dtype)
            return out

        with model.hooks([(model.hook_name(f"llm.resid_post.{layer}"), edit)]):
            yield None


def word_direction(model: Any, word: str, text_layer: int) -> torch.Tensor:
    """Hidden state [d] float32 of ``word``'s last token fed alone (BOS + word, no image) at HF
    ``hidden_states[text_layer]`` (0: the embedding, k: output of decoder layer k-1)."""
    nL = model.adapter.n_llm_layers
    if not 0 <= text_layer <= nL:
        raise InputError(f"text_layer must be in 0..{nL}, got {text_layer}")
    site = "llm.resid_pre.0" if text_layer == 0 else f"llm.resid_post.{text_layer - 1}"
    b = model.prepare([None], [word], chat_template=False, item_ids=[f"word:{word}"])
    _, cache = model.run_with_cache(b, [site])
    return cache[site][0, -1].float()


@dataclass(frozen=True)
class EarlyReadout(Intervention):
    """DeCo-style earlier-layer readout: the logit lens (final norm + unembedding) of the last position at an
    earlier layer is mixed into the final scores, ``log p_N + alpha log p_a``, over the final layer's top-``top_k``
    candidates (others -inf). The anchor ``a`` is, per step, the layer of ``layers`` whose lens gives the
    candidates the highest probability. Wang et al., ICLR 2025, "MLLM can see? Dynamic Correction Decoding for
    Hallucination Mitigation" (DeCo), https://arxiv.org/abs/2410.11779; cf. DoLa, methods.md §3.7.

    ``layers`` default: from the middle of the LLM to its second-to-last layer.
    """

    alpha: float = 0.6
    layers: tuple[int, ...] | None = None
    top_k: int = 10
    name = "early_readout"
    paper = "Wang et al., ICLR 2025 (DeCo), https://arxiv.org/abs/2410.11779"

    @contextlib.contextmanager
    def session(self, model: Any, batch: Batch) -> Iterator[Step | None]:
        from lvlm_probe.probing.lens import lens_logits

        nL = model.adapter.n_llm_layers
        layers = llm_layers(model, self.layers, range(nL // 2, max(nL // 2, nL - 2) + 1))
        last: dict[int, torch.Tensor] = {}

        def grab(layer: int) -> Any:
            def fn(h: torch.Tensor, hook: Any = None) -> torch.Tensor:
                last[layer] = h[:, -1].detach()
                return h
            return fn

        def step(ids: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            top = s.topk(min(self.top_k, s.shape[-1]), dim=-1).indices  # [B, k]
            early = torch.stack([lens_logits(model, last[x]).log_softmax(-1) for x in layers])  # [L, B, V]
            pick = early.gather(-1, top[None].expand(len(layers), -1, -1)).amax(-1).argmax(0)  # [B]
            mixed = s.log_softmax(-1) + self.alpha * early[pick, torch.arange(s.shape[0])]
            keep = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, top, True)
            return mixed.masked_fill(~keep, float("-inf"))

        with model.hooks([(model.hook_name(f"llm.resid_post.{x}"), grab(x)) for x in layers]):
            yield step


@dataclass(frozen=True)
class YesRatioMatched(Intervention):
    """Yes-bias control for yes/no questions: ``shift`` is added to the logits of ``yes`` (and subtracted from
    ``no``, each half) at the first generated token, so greedy's yes-ratio moves to a method's; find the shift with
    :func:`yes_ratio_shift`. Yin et al. 2025, https://arxiv.org/abs/2504.10020 (methods.md §9.2, control 3)."""

    shift: float = 0.0
    yes: tuple[str, ...] = ("yes",)
    no: tuple[str, ...] = ("no",)
    name = "yes_ratio_matched"
    paper = "control: Yin et al. 2025, The Mirage of Performance Gains, https://arxiv.org/abs/2504.10020"

    def session(self, model: Any, batch: Batch) -> contextlib.AbstractContextManager[Step | None]:
        yes, no, T0 = word_ids(model, self.yes), word_ids(model, self.no), batch.input_ids.shape[1]

        def step(ids: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            if ids.shape[1] != T0:
                return s
            s = s.clone()
            s[:, yes] += self.shift / 2
            s[:, no] -= self.shift / 2
            return s

        return contextlib.nullcontext(step)


def yes_margins(model: Any, batch: Batch, yes: tuple[str, ...] = ("yes",), no: tuple[str, ...] = ("no",)
                ) -> torch.Tensor:
    """Greedy first-token margin ``max logit(yes) - max logit(no)`` per item, [B] float32 (exactly the logits
    ``model.generate`` sees)."""
    from lvlm_probe.interventions.base import decode

    s = decode(model, batch, Greedy(), max_new_tokens=1, output_scores=True).scores[:, 0]
    return s[:, word_ids(model, yes)].amax(-1) - s[:, word_ids(model, no)].amax(-1)


def yes_ratio_shift(margins: torch.Tensor, target: float) -> float:
    """The smallest-magnitude shift ``s`` with ``mean(margins + s > 0)`` closest to ``target`` (a yes-ratio).

    Parameters
    ----------
    margins : torch.Tensor [N]
        From :func:`yes_margins`.
    target : float in [0, 1]
    """
    check_fraction("target yes-ratio", target, low_open=False)
    m = margins.float().sort(descending=True).values
    k = int(round(target * len(m)))
    if len(m) == 0:
        raise InputError("yes_ratio_shift needs at least one margin")
    hi = float(m[k - 1]) if k > 0 else float(m[0]) + 1.0  # the k-th largest must end above 0
    lo = float(m[k]) if k < len(m) else float(m[-1]) - 1.0  # the (k+1)-th must end below 0
    return -(hi + lo) / 2


__all__ = ["EarlyReadout", "Greedy", "ImageFreeContrast", "PAI", "PlausibilityOnly", "ProjectAway", "VCD",
           "YesRatioMatched", "amplify_image_attention", "diffusion_noise", "word_direction", "yes_margins",
           "yes_ratio_shift"]
