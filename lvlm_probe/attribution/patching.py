"""Activation patching (causal tracing): restore clean activations in a corrupt run, per site × token group."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from lvlm_probe.attribution._common import (TargetSpec, forward_last, group_mask, item_ids, resolve_targets,
                                            target_stats, token_str)
from lvlm_probe.errors import InputError, SiteError
from lvlm_probe.models.records import Batch

PATCH_COLUMNS = ["b", "item_id", "site", "layer", "group", "p_clean", "p_corrupt", "p_patched", "effect", "target",
                 "target_id"]
#: |p_clean - p_corrupt| below this gives effect NaN.
EFFECT_EPS = 1e-6


def check_same_layout(clean: Batch, corrupt: Batch) -> None:
    """Raise InputError unless both batches have the same shape, padding and token roles.

    Token ids may differ (e.g. a replaced word of the same length); roles and image-token coordinates
    must match position for position, so a position means the same thing in both runs.
    """
    if clean.input_ids.shape != corrupt.input_ids.shape:
        raise InputError(f"clean batch has shape {tuple(clean.input_ids.shape)} but corrupt "
                         f"{tuple(corrupt.input_ids.shape)}; build both with the same prompts and image sizes")
    ids = item_ids(clean)
    ra, rb = clean.roles.role_ids(), corrupt.roles.role_ids()
    for b in range(len(clean)):
        if not torch.equal(clean.attention_mask[b], corrupt.attention_mask[b]):
            raise InputError(f"item {ids[b]!r}: clean and corrupt prompts have different lengths (padding differs); "
                             "use prompts with the same number of tokens")
        if not torch.equal(ra[b], rb[b]):
            t = int((ra[b] != rb[b]).nonzero()[0])
            raise InputError(f"item {ids[b]!r}: token roles differ at position {t} between clean and corrupt; "
                             "clean and corrupt must have the same token layout")
        if not torch.equal(clean.roles.patch_coords[b], corrupt.roles.patch_coords[b]):
            raise InputError(f"item {ids[b]!r}: image grids differ between clean and corrupt (different image sizes); "
                             "resize the corrupt image to the clean one's size")


def _sites(model: Any, sites: Sequence[str] | str) -> list[Any]:
    parsed = model.adapter.expand_sites([sites] if isinstance(sites, str) else list(sites))
    bad = [s.name for s in parsed if s.kind != "llm"]
    if bad:
        raise SiteError(f"site(s) {bad} are not LLM sequence sites; patch_activations patches [B, T, d] tensors "
                        "(llm.resid_pre/mid/post, llm.attn_out, llm.mlp_out, llm.final_norm). To patch the image "
                        "tokens' projector output use llm.resid_pre.0 with group 'image'")
    return parsed


@contextlib.contextmanager
def patched(model: Any, site: str, source: torch.Tensor, mask: torch.Tensor) -> Iterator[Any]:
    """Context manager: at canonical ``site``, positions where ``mask`` [B, T] is True take ``source`` [B, T, d].

    Hooks are removed on exit, also on error.
    """
    name = model.hook_name(site)

    def fn(t: torch.Tensor, hook: Any = None) -> torch.Tensor:
        if t.shape != source.shape:
            raise InputError(f"{site}: activation {tuple(t.shape)} does not match the clean one {tuple(source.shape)}")
        return torch.where(mask[..., None].to(t.device), source.to(t.device, t.dtype), t)

    with model.hooks([(name, fn)]):
        yield model


def patch_activations(
    model: Any,
    clean: Batch,
    corrupt: Batch,
    sites: Sequence[str] | str,
    *,
    target: TargetSpec = None,
    groups: Sequence[str] | Mapping[str, torch.Tensor] = ("image", "question", "last", "all"),
    progress: bool = True,
) -> pd.DataFrame:
    """Causal tracing: how much restoring clean activations at (site, token group) restores the target.

    Parameters
    ----------
    model : LVLM
    clean, corrupt : Batch
        Same token layout (checked): e.g. the same prompt with an image differing in one attribute
        (:func:`counterfactual_pair`), or a prompt with one word replaced by another single token.
    sites : str or sequence of str
        Canonical LLM sites, ``*`` expands (e.g. ``"llm.resid_pre.*"``).
    target : None, int, str or list
        Default: the clean run's predicted token per item.
    groups : sequence of str or mapping name -> bool Tensor [B, T]
        Token groups: role names, ``"last"``, ``"all"``, or explicit masks.

    Returns
    -------
    DataFrame
        ``b, item_id, site, layer, group, p_clean, p_corrupt, p_patched, effect, target, target_id``, one row
        per (b, site, group), ``b`` the row in the batch; ``effect = (p_patched - p_corrupt) / (p_clean - p_corrupt)`` (NaN when the
        denominator is below 1e-6).
    """
    check_same_layout(clean, corrupt)
    model.check_batch(clean)
    model.check_batch(corrupt)
    parsed = _sites(model, sites)
    if isinstance(groups, Mapping):
        gmasks = {str(k): torch.as_tensor(v, dtype=torch.bool, device=clean.device) for k, v in groups.items()}
        for k, v in gmasks.items():
            if tuple(v.shape) != tuple(clean.input_ids.shape):
                raise InputError(f"group {k!r}: mask shape {tuple(v.shape)} != batch {tuple(clean.input_ids.shape)}")
    else:
        gmasks = {g: group_mask(clean, g) for g in ([groups] if isinstance(groups, str) else groups)}
    logits, cache = model.run_with_cache(clean, [s.name for s in parsed])
    targets = resolve_targets(model, target, len(clean), None, logits[:, -1])
    pc, _ = target_stats(logits[:, -1], targets)
    px, _ = target_stats(forward_last(model, corrupt), targets)
    ids = item_ids(clean)
    rows = []
    jobs = [(s, g) for s in parsed for g in gmasks]
    for s, g in tqdm(jobs, desc="patch_activations", disable=not progress):
        with patched(model, s.name, cache[s.name], gmasks[g]):
            pp, _ = target_stats(forward_last(model, corrupt), targets)
        for b in range(len(clean)):
            den = float(pc[b] - px[b])
            eff = float(pp[b] - px[b]) / den if abs(den) > EFFECT_EPS else float("nan")
            rows.append({"b": b, "item_id": ids[b], "site": s.name, "layer": -1 if s.layer is None else s.layer,
                         "group": g, "p_clean": float(pc[b]), "p_corrupt": float(px[b]), "p_patched": float(pp[b]),
                         "effect": eff, "target": token_str(model, targets[b]), "target_id": targets[b]})
    return pd.DataFrame(rows, columns=PATCH_COLUMNS)


@dataclass
class CounterfactualPair:
    """A scene and its minimal edit, rendered.

    Attributes
    ----------
    clean_scene, corrupt_scene : SceneGraph
    clean_image, corrupt_image : PIL.Image.Image
    change : dict
        What was changed: ``{"object": index, "attribute": name, "from": old, "to": new}``.
    """

    clean_scene: Any
    corrupt_scene: Any
    clean_image: Image.Image
    corrupt_image: Image.Image
    change: dict

    def prepare(self, model: Any, prompt: str, **kw: Any) -> tuple[Batch, Batch]:
        """``(clean, corrupt)`` batches of one prompt (same token layout by construction)."""
        return (model.prepare([self.clean_image], [prompt], item_ids=["clean"], **kw),
                model.prepare([self.corrupt_image], [prompt], item_ids=["corrupt"], **kw))


def counterfactual_pair(world: Any, scene: Any, change: Mapping[str, Any]) -> CounterfactualPair:
    """Edit one object of a SceneGraph (colour, class or size) and render both scenes.

    Parameters
    ----------
    world : SceneWorld
    scene : SceneGraph
    change : mapping
        ``{"object": i, "color": "blue"}``, ``{"object": i, "name": "ring"}`` (class) or
        ``{"object": i, "size": "small"}``; ``object`` defaults to 0. The box stays (size changes re-centre it).

    Returns
    -------
    CounterfactualPair
    """
    from lvlm_probe.data.world import SIZES

    ch = dict(change)
    i = int(ch.pop("object", 0))
    if not 0 <= i < len(scene.objects):
        raise InputError(f"object index {i} out of range; the scene has {len(scene.objects)} objects")
    if len(ch) != 1:
        raise InputError(f"change one thing: give exactly one of 'color', 'name', 'size' (got {sorted(ch)})")
    (key, value), = ch.items()
    cfg = world.config
    new = copy.deepcopy(scene)
    obj = new.objects[i]
    if key == "name":
        if value not in cfg.classes:
            raise InputError(f"class {value!r} is not in the world; classes are {list(cfg.classes)}")
        old = obj.name
        obj.name = str(value)
    elif key in ("color", "size"):
        allowed = cfg.colors if key == "color" else cfg.sizes
        if value not in allowed:
            raise InputError(f"{key} {value!r} is not in the world; use one of {list(allowed)}")
        old = obj.attributes.get(key)
        obj.attributes[key] = str(value)
        if key == "size" and obj.box is not None:
            cx, cy = obj.center
            s = SIZES[str(value)]
            x0, y0 = round(cx - s / 2), round(cy - s / 2)
            obj.box = (float(x0), float(y0), float(x0 + s), float(y0 + s))
            new = new.derive_relations()
    else:
        raise InputError(f"cannot change {key!r}; change 'color', 'name' or 'size'")
    if old == value:
        raise InputError(f"object {i} already has {key}={value!r}; pick a different value")
    return CounterfactualPair(scene, new, world.render(scene), world.render(new),
                              {"object": i, "attribute": key, "from": old, "to": value})
