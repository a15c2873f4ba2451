"""`patch_attribution`: captum attributions of a target token to image patches.

Gradient methods (IntegratedGradients, InputXGradient, Saliency) attribute to ``pixel_values`` and sum
over the pixels of each LLM patch; ``layer_ig`` (captum LayerIntegratedGradients) attributes to the
projector output, one value per image token; ``occlusion`` / ``feature_ablation`` (captum
FeatureAblation) replace one patch's pixels at a time by the baseline (feature mask = the patch grid).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lvlm_probe.attribution._common import (TargetSpec, forward_last, item_ids, resolve_input, resolve_targets,
                                            token_str)
from lvlm_probe.attribution._pixels import ItemPixels, cells_to_maps, image_rows, split_items
from lvlm_probe.errors import InputError
from lvlm_probe.models.records import Batch, Generation

#: Method name → what it computes.
METHODS: dict[str, str] = {
    "integrated_gradients": "captum IntegratedGradients on pixel values, summed over each patch's pixels",
    "input_x_gradient": "captum InputXGradient on pixel values, summed over each patch's pixels",
    "saliency": "captum Saliency (|gradient|) on pixel values, summed over each patch's pixels",
    "layer_ig": "captum LayerIntegratedGradients on the projector output, summed over the hidden dimension",
    "occlusion": "captum FeatureAblation with the patch grid as feature mask (one patch replaced at a time)",
    "feature_ablation": "same as occlusion",
}
_ALIASES = {"ig": "integrated_gradients", "ixg": "input_x_gradient"}
#: Scalar the attributions explain.
OUTPUTS = ("logprob", "prob", "logit")

FRAME_COLUMNS = ["b", "item_id", "image", "method", "target", "target_id", "row", "col", "value"]


@dataclass
class PatchAttribution:
    """Result of :func:`patch_attribution`.

    Attributes
    ----------
    method : str
    output : str
        The explained scalar (``logprob``, ``prob`` or ``logit`` of the target at the last position).
    item_ids : list of str
    targets : list of int
        Target token id per item.
    maps : list of torch.Tensor
        Per item a float64 tensor [n_images, rows, cols] on the item's LLM patch grid (rows/cols as
        in ``TokenRoles.patch_coords``); NaN-padded when an item's images have different grids.
    delta : torch.Tensor [B]
        IG convergence delta per item: sum of attributions − (f(input) − f(baseline)); NaN for
        methods without one.
    f_input, f_baseline : torch.Tensor [B]
        The explained scalar on the input and on the baseline.
    target_tokens : list of str
    """

    method: str
    output: str
    item_ids: list[str]
    targets: list[int]
    maps: list[torch.Tensor]
    delta: torch.Tensor
    f_input: torch.Tensor
    f_baseline: torch.Tensor
    target_tokens: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"PatchAttribution({self.method}, {len(self.item_ids)} items, output {self.output}, targets "
                f"{self.target_tokens[:4]}{' ...' if len(self.target_tokens) > 4 else ''})")

    def _repr_html_(self) -> str:
        """Notebook view: one row per item (target, f(input), f(baseline), IG delta, the map's strongest patch)
        and a heatmap thumbnail of the first item's first image."""
        import base64
        import html

        rows = []
        for b, (iid, tok) in enumerate(zip(self.item_ids, self.target_tokens)):
            m = self.maps[b][0]
            k = int(torch.nan_to_num(m, nan=-float("inf")).argmax())
            rows.append({"item_id": iid, "target": tok, "f_input": float(self.f_input[b]),
                         "f_baseline": float(self.f_baseline[b]), "delta": float(self.delta[b]),
                         "top patch (row, col)": divmod(k, m.shape[1])})
        table = pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.3g}")
        thumb = ""
        if self.maps:
            from lvlm_probe.plotting._common import map_thumbnail_png  # rendering stays in plotting

            png = map_thumbnail_png(self.maps[0][0].numpy(), f"{self.item_ids[0]}: {self.target_tokens[0]}")
            thumb = f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
        return (f"<b>PatchAttribution</b> {html.escape(self.method)} ({html.escape(self.output)}), "
                f"{len(self.item_ids)} items{table}{thumb}")

    def __len__(self) -> int:
        return len(self.maps)

    def frame(self) -> pd.DataFrame:
        """One row per (b, image, row, col): columns ``b, item_id, image, method, target, target_id,
        row, col, value`` (``b`` the row in the batch)."""
        parts = []
        for b, m in enumerate(self.maps):
            n, R, C = m.shape
            img, row, col = np.meshgrid(np.arange(n), np.arange(R), np.arange(C), indexing="ij")
            v = m.numpy().ravel()
            keep = ~np.isnan(v)
            parts.append(pd.DataFrame({
                "b": b, "item_id": self.item_ids[b], "image": img.ravel()[keep], "method": self.method,
                "target": self.target_tokens[b] if self.target_tokens else str(self.targets[b]),
                "target_id": self.targets[b], "row": row.ravel()[keep], "col": col.ravel()[keep], "value": v[keep],
            }))
        if not parts:
            return pd.DataFrame(columns=FRAME_COLUMNS)
        return pd.concat(parts, ignore_index=True)[FRAME_COLUMNS]


def _scalar(logits_last: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    """[n, V] logits, [n] targets → [n] explained scalar."""
    lg = logits_last.float()
    if output == "logit":
        return lg.gather(1, targets[:, None]).squeeze(1)
    lp = lg.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    return lp if output == "logprob" else lp.exp()


def _copies_forward(model: Any, batch: Batch, target: int, output: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x): x [s, *pixel_values.shape] → [s], the explained scalar of ``s`` copies of the one-item batch."""
    pv0 = batch.pixel_values
    tgt = torch.tensor([target], device=batch.input_ids.device)

    def f(x: torch.Tensor) -> torch.Tensor:
        s = x.shape[0]
        pv = x.reshape(s * pv0.shape[0], *pv0.shape[1:])
        # every other input (attention mask, per-image and per-token extras) is repeated per copy
        kw = {k: torch.cat([v] * s, 0) for k, v in batch.model_inputs().items() if k != "pixel_values"}
        out = model.hf_model(input_ids=batch.input_ids.repeat(s, 1), pixel_values=pv, **kw, use_cache=False)
        return _scalar(out.logits[:, -1], tgt.repeat(s), output)

    return f


def _projector_layer(model: Any) -> torch.nn.Module:
    name = model.hook_name("projector.out")
    hp = model.bridge.hook_dict.get(name)
    if hp is None:
        raise InputError(f"the bridge has no hook point {name!r} for projector.out; layer_ig cannot run on this model")
    return hp


def _layer_to_cells(model: Any, item: ItemPixels, attr: torch.Tensor) -> torch.Tensor:
    """Projector-output attributions (bridge layout) → item-local cell values [n_cells]."""
    per_row = attr.detach().float().sum(-1, keepdim=True)  # LLaVA [n_img, n_tok, 1]; Qwen [n_units, 1]
    site = model.adapter.parse_site("projector.out")
    parts = model.adapter.grid_sums(site, per_row, item.batch.image_inputs)  # every row, onto the item's grids
    return torch.cat([p.reshape(-1) for p in parts])


def patch_attribution(
    model: Any,
    inputs: Batch | Generation,
    target: TargetSpec = None,
    method: str = "integrated_gradients",
    *,
    step: int | None = None,
    output: str = "logprob",
    baseline: float | str | torch.Tensor | None = None,
    n_steps: int = 50,
    internal_batch_size: int = 8,
    progress: bool = True,
) -> PatchAttribution:
    """Attribute a target token's score to image patches.

    Parameters
    ----------
    model : LVLM
    inputs : Batch or Generation
        A prepared batch (the last position is explained), or a Generation with ``step=t``: the
        generation is teacher-forced on its prefix and generated token ``t`` (0-based) is explained.
    target : None, int, str or a list of those (one per item)
        Token id or word (its first token). None: the generated token at ``step`` for a Generation,
        the model's argmax next token for a Batch.
    method : str
        One of :data:`METHODS` (``ig`` and ``ixg`` are accepted aliases).
    step : int, optional
        Generated-token index for a Generation.
    output : {"logprob", "prob", "logit"}
        The scalar explained (of the target at the last position).
    baseline : float, "background", Tensor or None
        Pixel-space baseline (IG path start, occlusion fill, and for ``layer_ig`` the image whose projector
        output starts the path), in normalised pixel units. ``"background"`` fills each image with its own
        per-channel median colour (the background of a scene image), so occluding a patch removes what is on it
        instead of adding a dark square. Default (None): ``"background"`` for occlusion / feature ablation, -1
        (a uniform dark image, about one std below the processor's mean colour) for the gradient methods. 0 (the
        mean colour) makes Qwen2.5-VL's bias-free patch embedding zero, and its RMSNorm then turns the IG path
        into a step near the baseline (large ``delta``). A tensor must broadcast to one item's ``pixel_values``.
    n_steps : int
        Integration steps (IG methods). A warning names the items whose completeness gap ``|delta|`` exceeds
        10% of ``|f(input) - f(baseline)|`` and the ``n_steps`` to try.
    internal_batch_size : int
        Model copies per forward (IG steps or occlusion perturbations per evaluation): bounds memory.
    progress : bool
        Show a tqdm bar over items.

    Returns
    -------
    PatchAttribution
        ``.maps`` per item [n_images, rows, cols] aligned with ``TokenRoles.patch_coords``; ``.frame()``.

    Notes
    -----
    Pixel-space methods need the family adapter's pixel ↔ cell rule (``FamilyAdapter.pixel_cells``: image
    tensors, and Qwen2.5-VL's flattened merge-unit patches); ``layer_ig`` works for every family. Items run one
    at a time (``Batch.select``).
    """
    method = _ALIASES.get(method, method)
    if method not in METHODS:
        raise InputError(f"unknown attribution method {method!r}; methods are {sorted(METHODS)}")
    if output not in OUTPUTS:
        raise InputError(f"unknown output {output!r}; use one of {OUTPUTS}")
    if internal_batch_size < 1 or n_steps < 1:
        raise InputError("internal_batch_size and n_steps must be >= 1")
    batch, forced = resolve_input(model, inputs, step)
    model.check_batch(batch)
    last = forward_last(model, batch) if (target is None and forced is None) or (
        isinstance(target, (list, tuple)) and any(t is None for t in target)) else None
    targets = resolve_targets(model, target, len(batch), forced, last)
    items = split_items(model, batch)
    ids = item_ids(batch)

    if baseline is None:
        baseline = "background" if method in ("occlusion", "feature_ablation") else -1.0
    if isinstance(baseline, str) and baseline != "background":
        raise InputError(f"baseline={baseline!r}: give a number, a tensor or 'background'")
    maps: list[torch.Tensor] = []
    deltas, f_in, f_base = [], [], []
    for b, item in enumerate(tqdm(items, desc=f"patch_attribution[{method}]", disable=not progress)):
        f = _copies_forward(model, item.batch, targets[b], output)
        x = item.batch.pixel_values.detach().unsqueeze(0)
        base = _baseline(model, item, x, baseline)
        with torch.no_grad():
            fx, fb = f(x).double().item(), f(base).double().item()
        cell_vals, attr_sum = _attribute_item(model, item, f, x, base, method, n_steps, internal_batch_size)
        delta = attr_sum - (fx - fb) if method in ("layer_ig", "integrated_gradients") else float("nan")
        maps.append(cells_to_maps(cell_vals, item.grids))
        deltas.append(delta)
        f_in.append(fx)
        f_base.append(fb)
    _warn_unconverged(ids, deltas, f_in, f_base, n_steps)
    return PatchAttribution(
        method=method, output=output, item_ids=ids, targets=targets, maps=maps,
        delta=torch.tensor(deltas, dtype=torch.float64), f_input=torch.tensor(f_in, dtype=torch.float64),
        f_baseline=torch.tensor(f_base, dtype=torch.float64), target_tokens=[token_str(model, t) for t in targets],
    )


def _attribute_item(model: Any, item: ItemPixels, f: Callable, x: torch.Tensor, base: torch.Tensor, method: str,
                    n_steps: int, internal_batch_size: int) -> tuple[torch.Tensor, float]:
    """One item's captum attribution reduced to its LLM patch cells, and the sum of the raw attributions."""
    from captum.attr import (FeatureAblation, InputXGradient, IntegratedGradients, LayerIntegratedGradients,
                             Saliency)

    n_cells = item.n_cells
    if method == "layer_ig":
        layer = _projector_layer(model)
        with torch.no_grad():
            rows = _layer_rows(model, layer, f, x)
        attr = LayerIntegratedGradients(f, layer).attribute(x, baselines=base, n_steps=n_steps,
                                                            internal_batch_size=internal_batch_size * rows)
        attr = attr[0] if isinstance(attr, (list, tuple)) else attr
        return _layer_to_cells(model, item, attr), float(attr.double().sum().item())
    if method in ("occlusion", "feature_ablation"):
        attr = FeatureAblation(f).attribute(x, baselines=base, feature_mask=item.cells.unsqueeze(0),
                                            perturbations_per_eval=internal_batch_size)
        return _cell_mean(attr[0], item.cells, n_cells), float(attr.double().sum().item())
    if method == "integrated_gradients":
        attr = IntegratedGradients(f).attribute(x, baselines=base, n_steps=n_steps,
                                                internal_batch_size=internal_batch_size)
    elif method == "input_x_gradient":
        attr = InputXGradient(f).attribute(x.clone().requires_grad_(True))
    else:
        attr = Saliency(f).attribute(x.clone().requires_grad_(True), abs=True)
    return _cell_sum(attr[0], item.cells, n_cells), float(attr.double().sum().item())


def _baseline(model: Any, item: ItemPixels, x: torch.Tensor, baseline: float | str | torch.Tensor) -> torch.Tensor:
    """The baseline input of one item, shaped like ``x`` [1, *pixel_values.shape]."""
    if isinstance(baseline, str):  # "background": each image's per-channel median colour
        base = torch.empty_like(x[0])
        rows = image_rows(model, item.batch)
        for r0, r1 in rows:
            view = model.adapter.channel_view(x[0, r0:r1])
            med = view.transpose(0, 1).reshape(view.shape[1], -1).median(dim=1).values
            model.adapter.channel_view(base[r0:r1])[:] = med[None, :, None]
        return base.unsqueeze(0)
    return torch.zeros_like(x) + (baseline.to(x.device, x.dtype) if torch.is_tensor(baseline) else baseline)


def _warn_unconverged(ids: Sequence[str], deltas: list[float], f_in: list[float], f_base: list[float],
                      n_steps: int) -> None:
    """One warning for the items whose IG completeness gap exceeds 10% of f(input) - f(baseline)."""
    bad = [(iid, d, fx - fb) for iid, d, fx, fb in zip(ids, deltas, f_in, f_base)
           if not math.isnan(d) and abs(fx - fb) > 1e-8 and abs(d) > 0.1 * abs(fx - fb)]
    if bad:
        shown = ", ".join(f"{iid!r} (|delta| {abs(d):.3g} vs |f(x)-f(baseline)| {abs(g):.3g})" for iid, d, g in bad[:3])
        warnings.warn(f"integrated gradients did not converge for {len(bad)} item(s): {shown}; the attributions do "
                      f"not add up to the output change. Try n_steps={n_steps * 4} (or more)", stacklevel=3)


def _layer_rows(model: Any, layer: torch.nn.Module, f: Callable, x: torch.Tensor) -> int:
    """Rows (dim 0) of the projector output for one copy: captum batches layer-IG steps in such rows."""
    seen: list[int] = []
    h = layer.register_forward_hook(lambda m, i, o: seen.append(int(o.shape[0])))
    try:
        f(x)
    finally:
        h.remove()
    if not seen:
        raise InputError("the projector hook point did not fire; the model has no projector.out activations")
    return seen[0]


def _cell_sum(attr: torch.Tensor, cells: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float64, device=attr.device)
    return out.index_add_(0, cells.reshape(-1), attr.detach().reshape(-1).double())


def _cell_mean(attr: torch.Tensor, cells: torch.Tensor, n: int) -> torch.Tensor:
    """FeatureAblation gives every element of a feature the feature's effect: take the mean, not the sum."""
    cnt = torch.zeros(n, dtype=torch.float64, device=attr.device).index_add_(
        0, cells.reshape(-1), torch.ones(cells.numel(), dtype=torch.float64, device=attr.device))
    return _cell_sum(attr, cells, n) / cnt.clamp_min(1)


def attribution_methods() -> dict[str, str]:
    """``{method: description}`` of :func:`patch_attribution`."""
    return dict(METHODS)


__all__: Sequence[str] = ["PatchAttribution", "patch_attribution", "attribution_methods", "METHODS"]
