"""Presence probes: what the model's own image tokens say is in the image.

A hallucinated object is often one the language model names confidently (a co-occurrence prior) although the image
tokens it was given carry no trace of it. A linear probe per concept (object class, attribute value), trained on the
mean image-token state of labelled probe images, reads that trace: for a claim, ``p_present`` is the probe's
probability that the claimed class (or attribute value) is in the image. The probe needs labelled images once (the
organisms' probe world, or any annotated set such as COCO for a hub model), never the truth of the items it scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from lvlm_probe.data.items import Item
from lvlm_probe.errors import InputError

#: Default site: the image tokens as the language model receives them (the projector's output in the LLM stream).
PRESENCE_SITE = "llm.resid_pre.0"


def image_token_means(model: Any, batch: Any, site: str = PRESENCE_SITE) -> np.ndarray:
    """Mean over each item's image tokens of the residual stream at ``site``.

    Returns
    -------
    numpy.ndarray [B, d] float32
    """
    _, cache = model.run_with_cache(batch, [site])
    mask = batch.roles.image.to(cache[site].device)
    R = cache[site].float()
    mean = (R * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    return mean.cpu().numpy().astype(np.float32)


def _concepts(item: Item, vocab: Any) -> set[str]:
    objs = item.scene.objects
    out = {vocab.canonical_object(o.name) for o in objs}
    out |= {vocab.canonical_value(str(v)) for o in objs for v in o.attributes.values()}
    return out


@dataclass
class PresenceProbes:
    """One logistic probe per concept (class or attribute value) on mean image-token states.

    Attributes
    ----------
    site : str
    probes : dict of str -> LogisticRegression
        Concepts present in some but not all probe images.
    """

    site: str = PRESENCE_SITE
    probes: dict = field(default_factory=dict)

    def fit(self, model: Any, items: Sequence[Item], *, vocabulary: Any = None, batch_size: int = 32
            ) -> PresenceProbes:
        """Fit on labelled probe items (each with a scene graph)."""
        from lvlm_probe.misalignment.vocab import default_vocabulary

        vocab = vocabulary or default_vocabulary()
        items = [it for it in items if it.scene is not None]
        if len(items) < 10:
            raise InputError(f"presence probes need at least 10 probe items with scene graphs, got {len(items)}")
        X = np.concatenate([image_token_means(model, model.prepare_items(items[k:k + batch_size]), self.site)
                            for k in range(0, len(items), batch_size)])
        sets = [_concepts(it, vocab) for it in items]
        self.probes = {}
        for c in sorted(set().union(*sets)):
            y = np.array([c in s for s in sets])
            if 3 <= y.sum() <= len(y) - 3:
                self.probes[c] = LogisticRegression(C=1.0, max_iter=3000).fit(X, y)
        return self

    def presence(self, model: Any, batch: Any, concepts: Sequence[Sequence[str]]) -> list[list[float]]:
        """``p_present`` of each item's concepts (NaN for a concept without a probe)."""
        X = image_token_means(model, batch, self.site)
        out = []
        for x, cs in zip(X, concepts):
            out.append([float(self.probes[c].predict_proba(x[None])[0, 1]) if c in self.probes else float("nan")
                        for c in cs])
        return out


def claim_presence(probes: PresenceProbes | None, model: Any, generation: Any, claims: Any) -> np.ndarray:
    """``p_present`` of each claim: its object class (object claims) or its attribute value (attribute claims);
    NaN for relations and without probes."""
    out = np.full(len(claims), np.nan)
    if probes is None or not len(claims):
        return out
    concept = [str(c.subject) if c.kind == "object" else str(c.value) if c.kind == "attribute" else ""
               for c in claims.itertuples()]
    per_item = [[c for c, b in zip(concept, claims.b) if int(b) == k and c] for k in range(len(generation.text))]
    with torch.no_grad():
        got = probes.presence(model, generation.batch, per_item)
    lookup = {(k, c): p for k, (cs, ps) in enumerate(zip(per_item, got)) for c, p in zip(cs, ps)}
    for i, (c, b) in enumerate(zip(concept, claims.b)):
        if c:
            out[i] = lookup.get((int(b), c), np.nan)
    return out
