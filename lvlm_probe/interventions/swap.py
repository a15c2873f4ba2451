"""Swapping one front-end part for a reference model's: the confirmation of an encoder or projector cause.

An error born in the vision encoder or the projector never reaches the LLM as a fact, so no inference-time
re-weighting can restore it (methods.md §9). What can is the part itself: run the same input through a *reference*
model that shares this model's LLM (and tokenizer and image processor) and whose front end is known good, and let
this model's LLM read the reference's part instead of its own. :class:`SwapComponent` does that with two forward
hooks: ``part="encoder"`` replaces the projector's input (the vision features) with the reference's, so this
model's projector reads a good encoder; ``part="projector"`` replaces the projector's output (the image tokens) with
the reference projector applied to this model's own vision features. An error that disappears under the encoder
swap lived in the encoder; one that disappears under the projector swap but not the encoder swap lived in the
projector. This is activation patching across two models (model stitching, Bansal, Nakkiran & Barak, NeurIPS 2021,
https://arxiv.org/abs/2106.07682; causal tracing, Meng et al., NeurIPS 2022, https://arxiv.org/abs/2202.05262).

The zoo's front-end organisms (``encoder_blind``, ``small_object``, ``projector_bottleneck``) are built on ``clean``'s
checkpoint and name it as their reference (``model.run_defaults["reference"]``); a hub model has no such sibling, so
its encoder and projector diagnoses stay not tested.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch

from lvlm_probe.errors import InputError
from lvlm_probe.interventions.base import Intervention, Step
from lvlm_probe.models.records import Batch

#: The parts that can be swapped.
PARTS = ("encoder", "projector")


def _projector(model: Any) -> torch.nn.Module:
    """The raw HF projector module of ``model``, as its family adapter names it."""
    from lvlm_probe.errors import UnsupportedModelError

    try:
        return model.adapter.projector_module()
    except UnsupportedModelError:
        raise InputError(f"SwapComponent: the {model.family} adapter does not name its projector module; swap the "
                         "encoder instead") from None


@dataclass(frozen=True, eq=False)
class SwapComponent(Intervention):
    """Let the LLM read a reference model's encoder (``part="encoder"``) or projector (``part="projector"``).

    Parameters
    ----------
    reference : LVLM
        A model of the same family and sizes that shares this model's tokenizer and image processor (its batch is
        this model's batch); in the zoo, ``clean`` for the front-end organisms.
    part : {"encoder", "projector"}
    """

    reference: Any = None
    part: str = "encoder"
    name: ClassVar[str] = "swap_component"
    paper: ClassVar[str] = ("model stitching, Bansal, Nakkiran & Barak, NeurIPS 2021, https://arxiv.org/abs/2106.07682; "
                            "causal tracing, Meng et al., NeurIPS 2022, https://arxiv.org/abs/2202.05262")

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise InputError(f"SwapComponent part must be one of {PARTS}, got {self.part!r}")
        if self.reference is None or not hasattr(self.reference, "run_with_cache"):
            raise InputError("SwapComponent needs reference=LVLM (a model sharing this one's LLM, e.g. "
                             "lvlm_probe.load('organism:clean'))")

    def describe(self) -> dict:
        return {"method": self.name, "paper": self.paper, "part": self.part,
                "reference": str(getattr(self.reference, "name", self.reference))}

    @contextlib.contextmanager
    def session(self, model: Any, batch: Batch) -> Iterator[Step | None]:
        ref = self.reference
        if ref.family != model.family:
            raise InputError(f"SwapComponent: the reference is a {ref.family} model, this one {model.family}; "
                             "swap parts only between models of one family")
        if self.part == "encoder":
            _, cache = ref.run_with_cache(batch, ["projector.in"])
            feats = cache["projector.in"]

            def encoder(h: torch.Tensor, hook: Any = None) -> torch.Tensor:
                if tuple(h.shape) != tuple(feats.shape):
                    raise InputError(f"SwapComponent: this model's vision features are {tuple(h.shape)}, the "
                                     f"reference's {tuple(feats.shape)}; the two front ends do not match")
                return feats.to(h.device, h.dtype)

            hooks = [(model.hook_name("projector.in"), encoder)]
        else:
            ref_projector = _projector(ref)
            seen: dict[str, Any] = {"busy": False}

            def store(h: torch.Tensor, hook: Any = None) -> torch.Tensor:
                if not seen["busy"]:
                    seen["in"] = h
                return h

            def projector(h: torch.Tensor, hook: Any = None) -> torch.Tensor:
                if seen["busy"]:  # the reference is this very model: its projector runs through these hooks
                    return h
                p = next(ref_projector.parameters())
                seen["busy"] = True
                try:
                    with torch.no_grad():
                        out = ref_projector(seen["in"].to(p.device, p.dtype))
                finally:
                    seen["busy"] = False
                if tuple(out.shape) != tuple(h.shape):
                    raise InputError(f"SwapComponent: the reference projector gives {tuple(out.shape)}, this "
                                     f"model's {tuple(h.shape)}; the two front ends do not match")
                return out.to(h.device, h.dtype)

            hooks = [(model.hook_name("projector.in"), store), (model.hook_name("projector.out"), projector)]
        with model.hooks(hooks):
            yield None
