"""The forward-hook fallback: canonical sites on plain PyTorch hooks of the HF modules, for a family the installed
TransformerLens has no TransformerBridge adapter for (TransformerLens 4.3: Qwen2-VL).

:class:`HookBackend` stands where :class:`~lvlm_probe.models.LVLM` keeps its bridge and offers the few things
lvlm_probe uses of one: ``original_model``, ``hooks(fwd_hooks=[(name, fn)])`` (a context manager; ``fn(tensor,
hook=point)`` returns the tensor, or a replacement), ``hook_dict`` (hook name → the module it sits on) and
``blocks[l].attn`` (the attention module whose ``attention_mask`` keyword knockout edits). Hook names are the
bridge's own (``blocks.{l}.hook_resid_post``, ``vision_projector.hook_out``, … from the adapter's ``hook_name``), so
capture, attribution and interventions run unchanged. Which HF module holds a site is an adapter fact
(:meth:`~lvlm_probe.models.base.FamilyAdapter.hook_module`). PyTorch hooks are the library doing the job; only
the table below is written here.

Per site (a ``kind`` of the table; every one reads exactly what the bridge reads, checked against HF's
``output_hidden_states`` and against the bridge on Qwen2.5-VL in tests):

- ``llm.resid_pre.{l}``: input of decoder layer l (forward pre-hook); editable.
- ``llm.resid_mid.{l}``: input of layer l's ``post_attention_layernorm`` (pre-hook); read-only (SiteError on an
  edit): the layer adds the MLP to its own copy of the residual, which an edit of the norm's input misses.
- ``llm.resid_post.{l}``: output of decoder layer l; editable.
- ``llm.attn_out.{l}``: output[0] of layer l's ``self_attn``; editable.
- ``llm.mlp_out.{l}``: output of layer l's ``mlp``; editable.
- ``llm.attn_pattern.{l}``: output[1] of layer l's ``self_attn`` (eager weights); read-only (already applied).
- ``llm.final_norm``: output of the final norm; editable.
- ``vision.resid_post.{l}``: output of vision block l; editable.
- ``projector.in`` / ``projector.out``: input / output of the projector; editable.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Sequence

import torch

from lvlm_probe.errors import SiteError, UnsupportedModelError

#: Sites whose hook only reads: a hook function that returns another tensor raises SiteError.
READ_ONLY = {"mid": "the decoder layer adds the MLP to its own copy of the residual, so an edit of the norm's input "
                    "would not reach the residual stream; edit llm.resid_pre / llm.attn_out instead",
             "weights": "the attention weights are already applied to the values when the module returns them; "
                        "edit attention through knockout (lvlm_probe.attribution.block_attention) instead"}


@dataclass(frozen=True)
class HookPointSpec:
    """Where one hook name reads: ``module`` and ``kind`` (``out``, ``in``, ``mid``, ``weights``)."""

    name: str
    site: str
    module: torch.nn.Module
    kind: str


@dataclass(frozen=True)
class _Point:
    """What a hook function receives as ``hook`` (bridge hook functions read ``hook.name``)."""

    name: str


class HookBackend:
    """Canonical sites on forward hooks of the HF modules (see the module docstring for the table)."""

    backend = "hooks"

    def __init__(self, hf_model: Any, adapter: Any) -> None:
        self.original_model = hf_model
        self.adapter = adapter
        self.points: dict[str, HookPointSpec] = {}
        #: site → why the fallback cannot offer it (an adapter without that module)
        self.unavailable: dict[str, str] = {}
        for name in adapter.all_sites():
            site = adapter.parse_site(name)
            try:
                module, kind = adapter.hook_module(site)
            except UnsupportedModelError as err:
                self.unavailable[name] = str(err)
                continue
            hook = adapter.hook_name(site)
            self.points[hook] = HookPointSpec(hook, name, module, kind)
        layers = adapter.llm_layer_modules()
        self.blocks = [SimpleNamespace(attn=adapter.attention_module(layer)) for layer in layers]

    # ---- what LVLM and the rooms use of a bridge -----------------------------------------------
    @property
    def hook_dict(self) -> dict[str, torch.nn.Module]:
        """Hook name → the HF module it sits on (for ``out`` points the module's output is the site)."""
        return {h: p.module for h, p in self.points.items()}

    def eval(self) -> HookBackend:
        self.original_model.eval()
        return self

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Logits of a forward (hooks added with :meth:`hooks` fire)."""
        return self.original_model(input_ids=input_ids, **kwargs).logits

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, Callable]] = ()) -> Iterator[HookBackend]:
        """Add forward hooks by hook name for the duration; removed on exit, also on error."""
        handles = []
        try:
            self.check_hooks([name for name, _ in fwd_hooks])
            for name, fn in fwd_hooks:
                p = self.points[name]
                handles.append(self._install(p, fn))
            yield self
        finally:
            for h in handles:
                h.remove()

    def check_hooks(self, names: Sequence[str]) -> None:
        """Raise SiteError, with the reason, for hook names this backend does not offer."""
        missing = [n for n in names if n not in self.points]
        if not missing:
            return
        by_hook = {self.adapter.hook_name(self.adapter.parse_site(s)): s for s in self.unavailable}
        why = "; ".join(f"{by_hook[n]} ({n}): {self.unavailable[by_hook[n]]}" if n in by_hook else f"{n}: no such hook"
                        for n in missing)
        raise SiteError(f"the forward-hook backend of {self.adapter.family} does not offer {why}")

    # ---- the table ---------------------------------------------------------------------------
    def _install(self, p: HookPointSpec, fn: Callable) -> Any:
        point = _Point(p.name)

        def call(t: torch.Tensor) -> torch.Tensor | None:
            new = fn(t, hook=point)
            if new is None or new is t:
                return None
            if p.kind in READ_ONLY:
                raise SiteError(f"site {p.site!r} can be read but not edited with the forward-hook backend: "
                                f"{READ_ONLY[p.kind]}")
            return new

        if p.kind in ("in", "mid"):
            def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
                if args:
                    new = call(args[0])
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = call(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})

            return p.module.register_forward_pre_hook(pre, with_kwargs=True)

        index = 1 if p.kind == "weights" else 0

        def post(module: torch.nn.Module, args: tuple, output: Any) -> Any:
            value = output[index] if isinstance(output, tuple) else output
            if value is None:  # attention weights of a non-eager implementation
                raise SiteError(f"site {p.site!r}: the attention module returned no weights; load the model with "
                                "eager attention (lp.load does)")
            new = call(value)
            if new is None:
                return None
            if isinstance(output, tuple):
                return (*output[:index], new, *output[index + 1:])
            return new

        return p.module.register_forward_hook(post)
