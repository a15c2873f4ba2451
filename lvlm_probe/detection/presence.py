"""Presence probes: what the model's own image tokens say about a claim, token by token.

A hallucinated object is often one the language model names confidently (a co-occurrence prior) although the image
tokens it was given carry no trace of it; a wrong colour is often one the image tokens of that object contradict.
Linear probes read, at **each image token** (default ``llm.resid_pre.0``: the image as the language model receives
it), which object class covers that token (or none) and, for an object token, each attribute's value. A claim is
then checked against the tokens:

- an object claim "a circle": ``max_t p(class = circle | t)``;
- an attribute claim "a red circle": ``max_t p(class = circle | t) · p(colour = red | t)`` (the colour of *that*
  object, not of anything red in the image);
- a geometric relation "the circle is left of the square": both objects found (the product of their best token
  probabilities) and the best circle token lying left of the best square token on the token grid;
- a negated claim ("no", there is no circle): one minus the above.

``p_present`` is that probability: how far the model's own image tokens support the claim. The probes need
images with boxes once (the organisms' probe world, or an annotated set such as COCO for a hub model), never the
truth of the items they score. Reading localised tokens rather than the image mean is what makes the attribute
check possible: on the organisms (tuning seeds 0 and 1) the mean-token probe ranked attribute claims at AUROC 0.77,
the token-level one at 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from lvlm_probe.data.items import Item, load_image
from lvlm_probe.data.scene import GEOMETRIC_RELATIONS
from lvlm_probe.errors import InputError

#: Default site: the image tokens as the language model receives them (the projector's output in the LLM stream).
PRESENCE_SITE = "llm.resid_pre.0"
#: Label of a token no object covers.
NO_OBJECT = "none"
#: Grid step (row, col) of each geometric predicate: the subject lies that way from the object.
_STEP: dict[str, tuple[int, int]] = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


def image_token_states(model: Any, batch: Any, site: str = PRESENCE_SITE) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each item's image-token states at ``site`` with their coordinates.

    Returns
    -------
    list of (states [n_tokens, d] float32, coords [n_tokens, 3] int: image, row, col), one per item
    """
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, [site])
    R = cache[site].float().cpu()
    mask, coords = batch.roles.image.cpu(), batch.roles.patch_coords.cpu()
    return [(R[b][mask[b]].numpy().astype(np.float32), coords[b][mask[b]].numpy()) for b in range(R.shape[0])]


def _token_labels(item: Item, coords: np.ndarray, grids: Sequence[tuple[int, int]], vocab: Any,
                  min_overlap: float) -> list[Any]:
    """The scene object covering each image token (its cell under the object's box), or None."""
    from lvlm_probe.probing.labels import box_patches

    if any(o.box is None for o in item.scene.objects):
        raise InputError(f"probe item {item.id!r}: an object has no box; presence probes label image tokens "
                         "by the boxes of the scene's objects")
    width, height = load_image(item.image, item_id=item.id).size
    cover: dict[tuple[int, int], Any] = {}
    for o in item.scene.objects:  # image 0: probe items carry one image
        for rc in box_patches(o.box, (width, height), grids[0], min_overlap=min_overlap):
            cover[tuple(rc)] = o
    return [cover.get((int(r), int(c))) if int(k) == 0 else None for k, r, c in coords]


@dataclass
class PresenceProbes:
    """Token-level probes on image-token states: object class (or none) and each attribute's value.

    Attributes
    ----------
    site : str
    min_overlap : float
        A token is labelled with an object when the object's box covers more than this share of its cell.
    classes : LogisticRegression or None
        Multinomial probe: the class of the object under a token, or ``"none"``.
    attributes : dict of str -> LogisticRegression
        Per attribute (colour, size, ...): the value of the object under a token (fitted on object tokens).
    """

    site: str = PRESENCE_SITE
    min_overlap: float = 0.3
    classes: Any = None
    attributes: dict = field(default_factory=dict)

    def fit(self, model: Any, items: Sequence[Item], *, vocabulary: Any = None, batch_size: int = 32
            ) -> PresenceProbes:
        """Fit on labelled probe items (each with a scene graph whose objects have boxes)."""
        from lvlm_probe.misalignment.vocab import default_vocabulary

        vocab = vocabulary or default_vocabulary()
        items = [it for it in items if it.scene is not None]
        if len(items) < 10:
            raise InputError(f"presence probes need at least 10 probe items with scene graphs, got {len(items)}")
        X, cls, att = [], [], {}
        for k in range(0, len(items), batch_size):
            chunk = items[k:k + batch_size]
            batch = model.prepare_items(chunk)
            for b, (states, coords) in enumerate(image_token_states(model, batch, self.site)):
                for x, o in zip(states, _token_labels(chunk[b], coords, batch.roles.grids[b], vocab,
                                                      self.min_overlap)):
                    X.append(x)
                    cls.append(vocab.canonical_object(o.name) if o is not None else NO_OBJECT)
                    for a, v in (o.attributes.items() if o is not None else ()):
                        att.setdefault(str(a), []).append((len(X) - 1, vocab.canonical_value(str(v))))
        X_ = np.asarray(X)
        if len(set(cls)) < 2:
            raise InputError(f"the {len(items)} probe items give one token label only ({cls[0]!r}); give probe "
                             "images with objects and background")
        self.classes = LogisticRegression(C=1.0, max_iter=3000).fit(X_, cls)
        self.attributes = {}
        for a, rows in att.items():
            idx, y = [i for i, _ in rows], [v for _, v in rows]
            if len(set(y)) > 1:
                self.attributes[a] = LogisticRegression(C=1.0, max_iter=3000).fit(X_[idx], y)
        return self

    def claim_probability(self, states: np.ndarray, coords: np.ndarray, claim: Any, vocab: Any) -> float:
        """How far an item's image tokens support one claim (``claim``: a claim-table row); NaN when the probes
        do not know its class, value or predicate."""
        if self.classes is None or not len(states):
            return float("nan")
        p = self._support(self.classes.predict_proba(states), list(self.classes.classes_), states, coords, claim,
                          vocab)
        negated = isinstance(claim.negated, (bool, np.bool_)) and bool(claim.negated)
        return 1.0 - p if negated and np.isfinite(p) else p

    def _support(self, pc: np.ndarray, classes: list, states: np.ndarray, coords: np.ndarray, claim: Any,
                 vocab: Any) -> float:
        subj = vocab.canonical_object(str(claim.subject)) if isinstance(claim.subject, str) else None
        if subj not in classes:
            return float("nan")
        p = pc[:, classes.index(subj)]
        if claim.kind == "object":
            return float(p.max())
        if claim.kind == "attribute":
            probe = self.attributes.get(str(claim.attribute))
            value = vocab.canonical_value(str(claim.value))
            if probe is None or value not in list(probe.classes_):
                return float("nan")
            return float((p * probe.predict_proba(states)[:, list(probe.classes_).index(value)]).max())
        return self._relation(p, pc, classes, coords, claim, vocab)

    @staticmethod
    def _relation(p: np.ndarray, pc: np.ndarray, classes: list, coords: np.ndarray, claim: Any, vocab: Any
                  ) -> float:
        pred = _predicate(claim) if claim.kind == "relation" else None
        other = vocab.canonical_object(str(claim.object)) if isinstance(claim.object, str) else None
        if pred is None or other not in classes:
            return float("nan")
        q = pc[:, classes.index(other)]
        a, b = coords[int(p.argmax())], coords[int(q.argmax())]
        if a[0] != b[0]:
            return float("nan")  # the two objects were found in different images
        dr, dc = _STEP[pred]
        on_side = (int(a[1]) - int(b[1])) * dr + (int(a[2]) - int(b[2])) * dc > 0
        return float(p.max() * q.max()) if on_side else 0.0


def _predicate(claim: Any) -> str | None:
    """The relation claim's geometric predicate: its value (a caption's "left of") or, for a yes/no question, the
    predicate its word starts (``"left"`` → ``"left of"``); None for other predicates."""
    value = " ".join(claim.value.lower().split()) if isinstance(claim.value, str) else ""
    if value in GEOMETRIC_RELATIONS:
        return value
    word = claim.word.lower().split()[:1] if isinstance(claim.word, str) else []
    return {k.split()[0]: k for k in GEOMETRIC_RELATIONS}.get(word[0]) if word else None


def claim_presence(probes: PresenceProbes | None, model: Any, generation: Any, claims: Any,
                   vocabulary: Any = None) -> np.ndarray:
    """``p_present`` of each claim of one generation batch (:meth:`PresenceProbes.claim_probability`); NaN
    without probes."""
    from lvlm_probe.misalignment.vocab import default_vocabulary

    out = np.full(len(claims), np.nan)
    if probes is None or not len(claims):
        return out
    vocab = vocabulary or default_vocabulary()
    tokens = image_token_states(model, generation.batch, probes.site)
    for i, c in enumerate(claims.itertuples()):
        states, coords = tokens[int(c.b)]
        out[i] = probes.claim_probability(states, coords, c, vocab)
    return out
