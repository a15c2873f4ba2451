"""Internal-state features of each claim, read where the claim's first token was emitted.

For a claim whose first token is generated token ``t`` of item ``b``, the query that emitted it sits at sequence
position ``T + t - 1`` (T the padded prompt length). There the features are:

- the residual stream after every LLM layer, ``resid`` [n_claims, n_layers, d] (probes in the style of HALP /
  hidden-state detectors, see research/methods.md §4.4);
- the output-only scores ``p_emit`` (probability of the emitted token) and ``entropy`` of the next-token
  distribution, and ``rank``;
- ``pmi_img``: ``log p_emit - log p_noimg``, the image's pointwise mutual information with the token (the image
  replaced by noise, same token layout), and ``knockout_effect`` (every text position blocked from the image);
- ``img_attn`` / ``img_attn_ratio``: the image-attention mass of the emitting query (mean over layers and heads)
  and its ratio to the item's other steps;
- ``internal_confidence``: the largest logit-lens probability of the claim's word over every image token and LLM
  layer (Jiang et al., ICLR 2025, https://arxiv.org/abs/2410.02762), low when the model never "sees" the object;
- ``p_present``: what a presence probe on the model's own image tokens says of the claimed class or attribute value
  (:mod:`lvlm_probe.detection.presence`; NaN for relations and without probes).

None of these needs the ground truth, so the same features score claims of items without a scene graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from lvlm_probe.detection.presence import claim_presence

#: Token evidence kept beside the features (the truth-free part of the cascade's evidence, for tracing).
TRACE_COLUMNS: tuple[str, ...] = ("emitted", "position", "step", "n_generated", "sampled", "greedy_token", "p_noimg",
                                  "p_knock", "img_use", "deviation_step")
#: Scalar feature columns (besides ``resid``), in the order the detector uses them.
SCALAR_FEATURES: tuple[str, ...] = ("p_emit", "entropy", "rank", "pmi_img", "knockout_effect", "img_attn",
                                    "img_attn_ratio", "internal_confidence", "p_present")


def claim_features(model: Any, generation: Any, claims: pd.DataFrame, presence: Any = None
                   ) -> tuple[pd.DataFrame, np.ndarray]:
    """Features of the claims of one generation batch.

    Parameters
    ----------
    model : LVLM
    generation : Generation
        The batch the claims were read from (``claims.b`` indexes its items).
    claims : DataFrame
        :func:`~lvlm_probe.detection.claims.claim_table` rows of this batch.
    presence : PresenceProbes, optional
        Fitted presence probes of this model (else ``p_present`` is NaN).

    Returns
    -------
    scalars : DataFrame
        Indexed like ``claims``: :data:`SCALAR_FEATURES` (float; NaN where not measurable), then
        :data:`TRACE_COLUMNS`.
    resid : numpy.ndarray [n_claims, n_layers, d]
        float32 residual stream after each LLM layer at the emitting query.
    """
    from lvlm_probe.tracing.evidence import token_evidence

    n_layers = model.adapter.n_llm_layers
    if not len(claims):
        return (pd.DataFrame(columns=[*SCALAR_FEATURES, *TRACE_COLUMNS], dtype=float),
                np.zeros((0, n_layers, 0), np.float32))
    rows = claims.assign(truth=None)
    tok = token_evidence(model, generation, rows, sampled=False)
    scalars = tok.reindex(columns=list(SCALAR_FEATURES[:-2])).astype(float)
    scalars["internal_confidence"] = _internal_confidence(model, generation, claims)
    scalars["p_present"] = claim_presence(presence, model, generation, claims)
    out = pd.concat([scalars[list(SCALAR_FEATURES)], tok[list(TRACE_COLUMNS)]], axis=1)
    return out, _residuals(model, generation, claims, n_layers)


def _residuals(model: Any, generation: Any, claims: pd.DataFrame, n_layers: int) -> np.ndarray:
    batch = generation.as_batch()
    sites = [f"llm.resid_post.{k}" for k in range(n_layers)]
    _, cache = model.run_with_cache(batch, sites)
    b = claims.b.astype(int).to_numpy()
    pos = generation.prompt_length + claims.first_token.astype(int).to_numpy() - 1
    bi, pi = torch.as_tensor(b.copy()), torch.as_tensor(pos.copy())
    out = np.stack([cache[s][bi, pi].float().cpu().numpy() for s in sites], axis=1)
    return out.astype(np.float32)


def _internal_confidence(model: Any, generation: Any, claims: pd.DataFrame) -> np.ndarray:
    """Max lens probability of each claim's word over the image tokens and LLM layers of its item."""
    from lvlm_probe.probing.lens import internal_confidence, word_probability

    words = [sorted({str(w) for w in claims.word[claims.b == b] if isinstance(w, str) and w})
             for b in range(len(generation.text))]
    if not any(words):
        return np.full(len(claims), np.nan)
    for b, ws in enumerate(words):
        if not ws:
            words[b] = ["the"]  # a placeholder: word_probability wants a list per item
    conf = internal_confidence(word_probability(model, generation, words, positions="image"))
    best = {(int(r.b), str(r.word)): float(r.confidence) for r in conf.itertuples()}
    return np.array([best.get((int(b), str(w)), np.nan) for b, w in zip(claims.b, claims.word)], dtype=float)
