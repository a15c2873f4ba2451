"""Evidence per error: the features that separate the causes of a misalignment.

Three groups, each computed for every error row of a misalignment frame:

- **token evidence** (one teacher-forced pass with the image and one with every text position blocked from
  the image tokens in every layer): probability, greedy rank and entropy of the emitted token, its
  image-free probability, the PMI with the image and the image-knockout effect; image-attention mass of the
  query that emitted it relative to the other generated tokens of the same text.
- **probe evidence**: out-of-fold probe verdicts for the true value of *this* object at the encoder output
  (``projector.in``) and at the projector output (``projector.out``), from :func:`~lvlm_probe.probing.probe_sweep`.
- **data evidence**: training statistics (:mod:`lvlm_probe.tracing.stats`) and the error's position.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import pandas as pd
import torch

from lvlm_probe.misalignment import extract_claims
from lvlm_probe.schema import EVIDENCE_COLUMNS  # noqa: F401 - re-exported (the contract lives in schema)

#: Every non-image role: the "text blind to the image" knockout blocks all of them from the image tokens. ``separator``
#: (text markers a processor writes between an image's tiles, e.g. Idefics3's ``<row_1_col_2>``) is text too: left
#: out, it would read the image and pass it on to the other text tokens.
TEXT_ROLES: tuple[str, ...] = ("system", "template", "question", "answer", "generated", "separator")


def _nan(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def n_object_mentions(text: str, vocabulary: Any = None) -> int:
    """Number of distinct (non-negated) object mentions in ``text``."""
    return len({c.mention for c in extract_claims(text, vocabulary) if c.kind == "object" and not c.negated})


def mention_ordinal(text: str, row: dict, vocabulary: Any = None) -> tuple[int, list[str]]:
    """1-based object position of the error in the text and the classes mentioned before it.

    An omitted object (never mentioned) gets the position after the last mention.
    """
    claims = [c for c in extract_claims(text, vocabulary) if c.kind == "object" and not c.negated]
    start = row.get("claim_start")
    if _nan(start):
        start = row.get("start")
    if _nan(start):  # never mentioned: it would have come after every mention
        return len({c.mention for c in claims}) + 1, [c.subject for c in claims]
    before = [c for c in claims if c.claim_span[0] < int(start)]
    own = [c for c in claims if c.claim_span[0] <= int(start) < c.claim_span[1] or c.span[0] == int(start)]
    mention = own[0].mention if own else (max((c.mention for c in before), default=-1) + 1)
    return int(mention) + 1, [c.subject for c in before if c.mention < mention]


@torch.no_grad()
def token_evidence(model: Any, generation: Any, errors: pd.DataFrame, *, sampled: bool) -> pd.DataFrame:
    """Per-error token features of one generation batch.

    Parameters
    ----------
    model : LVLM
    generation : Generation
        The batch the errors were judged on (``errors.b`` indexes its items).
    errors : DataFrame
        Misalignment rows with ``b`` and ``first_token`` (nullable: omissions have no token).
    sampled : bool
        Whether the generation was sampled (non-greedy decoding).

    Returns
    -------
    DataFrame
        Indexed like ``errors``: ``emitted, position, step, n_generated, sampled, p_emit, rank,
        greedy_token, entropy, p_truth, p_noimg, p_knock, pmi_img, knockout_effect, img_use, deviation_step, img_attn,
        img_attn_ratio``. ``step`` t is the generated-token index (its query sits at sequence position
        ``prompt_length + t - 1``); ``p_truth`` the probability of the true value's word at the same step;
        ``p_noimg`` is the probability with the image replaced by noise (same
        token layout) and ``pmi_img = log p_emit - log p_noimg``; ``p_knock`` the probability with every text
        position blocked from every image token in every LLM layer and ``knockout_effect = 1 - p_knock /
        p_emit``; ``img_use`` the median ``|pmi_img|`` over all generated tokens of the item (does the model use
        the image at all?); ``deviation_step`` the first step whose token was not the greedy choice (-1: none).
    """
    out = pd.DataFrame(index=errors.index, columns=[
        "emitted", "position", "step", "n_generated", "sampled", "p_emit", "rank", "greedy_token", "entropy",
        "p_truth", "p_noimg", "p_knock", "pmi_img", "knockout_effect", "img_use", "deviation_step", "img_attn",
        "img_attn_ratio"], dtype=object)
    out["sampled"] = bool(sampled)
    out["n_generated"] = [len(generation.tokens[int(b)]) for b in errors.b]
    if not len(errors):
        return out
    logits, logp, logp0, logpk = _three_branches(model, generation.as_batch())
    use, dev = _image_use(generation, logits, logp, logp0, {int(x) for x in errors.b})
    out["img_use"] = [use[int(b)] for b in errors.b]
    out["deviation_step"] = [dev[int(b)] for b in errors.b]
    has = errors.first_token.notna()
    if not has.any():
        return out
    for i, r in errors[has].iterrows():
        _token_features(model, generation, r, (logits, logp, logp0, logpk), out, i)
    _attention_evidence(model, generation, errors[has], out)
    return out


def _three_branches(model: Any, batch: Any) -> tuple[torch.Tensor, ...]:
    """``logits`` [B, T, V] of the batch as it is, and the log-probabilities with the image (``logp``), with the
    image replaced by noise (``logp0``: N(0, 1) in the processor's normalised pixel space, same token layout) and
    with every text position blocked from every image token in every LLM layer (``logpk``)."""
    from lvlm_probe.attribution import block_attention

    logits = model.forward(batch).float()
    with block_attention(model, batch, from_roles="image", to_roles=list(TEXT_ROLES),
                         layers=range(model.adapter.n_llm_layers)):
        logits_k = model.forward(batch).float()
    rng = torch.Generator().manual_seed(0)
    pv = batch.pixel_values
    noise = torch.randn(pv.shape, generator=rng, dtype=torch.float32).to(device=pv.device, dtype=pv.dtype)
    logits0 = model.forward(replace(batch, pixel_values=noise)).float()
    return logits, logits.log_softmax(-1), logits0.log_softmax(-1), logits_k.log_softmax(-1)


def _image_use(generation: Any, logits: torch.Tensor, logp: torch.Tensor, logp0: torch.Tensor,
               rows: set[int]) -> tuple[dict[int, float], dict[int, int]]:
    """Per generated item ``b`` of ``rows``: the median |PMI with the image| over its generated tokens, and its
    first step whose token was not the greedy choice (-1: none)."""
    T = generation.prompt_length
    use, dev = {}, {}
    for b in rows:
        toks = torch.as_tensor(generation.tokens[b], dtype=torch.long)
        if not len(toks):
            use[b], dev[b] = float("nan"), -1
            continue
        pos = torch.arange(T - 1, T - 1 + len(toks))
        use[b] = float((logp[b, pos, toks] - logp0[b, pos, toks]).abs().median())
        off = (logits[b, pos].argmax(-1) != toks).nonzero()
        dev[b] = int(off[0]) if len(off) else -1
    return use, dev


def _token_features(model: Any, generation: Any, r: pd.Series, branches: tuple[torch.Tensor, ...],
                    out: pd.DataFrame, i: Any) -> None:
    """Fill row ``i`` of ``out`` with the token features of error ``r`` (its first token, ``r.first_token``)."""
    from lvlm_probe.attribution._common import word_token_id

    logits, logp, logp0, logpk = branches
    b, t = int(r.b), int(r.first_token)
    pos = generation.prompt_length + t - 1
    tid = int(generation.tokens[b][t])
    tok = model.tokenizer if hasattr(model, "tokenizer") else model.adapter.tokenizer
    lp, lp0 = logp[b, pos], logp0[b, pos]
    p, p0, pk = float(lp[tid].exp()), float(lp0[tid].exp()), float(logpk[b, pos, tid].exp())
    out.loc[i, ["emitted", "position", "step"]] = [tok.decode([tid]).strip(), pos, t]
    out.loc[i, "p_emit"] = p
    out.loc[i, "rank"] = int((logits[b, pos] > logits[b, pos, tid]).sum()) + 1
    out.loc[i, "greedy_token"] = tok.decode([int(logits[b, pos].argmax())]).strip()
    out.loc[i, "entropy"] = float(-(lp.exp() * lp).sum())
    truth = r.get("truth")
    if isinstance(truth, str) and truth and "|" not in truth:
        try:
            out.loc[i, "p_truth"] = float(lp[word_token_id(model, truth)].exp())
        except Exception:  # noqa: BLE001 - a truth word the tokenizer cannot map as one token
            pass
    out.loc[i, "p_noimg"] = p0
    out.loc[i, "p_knock"] = pk
    out.loc[i, "pmi_img"] = float(lp[tid] - lp0[tid])
    out.loc[i, "knockout_effect"] = 1.0 - pk / p if p > 0 else float("nan")


def _attention_evidence(model: Any, generation: Any, errors: pd.DataFrame, out: pd.DataFrame) -> None:
    """``img_attn`` and ``img_attn_ratio`` of each error with a token: the image-attention mass of the query that
    emitted it (mean over layers and heads), and its ratio to the mean over the item's other steps."""
    from lvlm_probe.attribution import image_attention

    att = image_attention(model, generation)
    img = att[att.to_role == "image"].groupby(["b", "step"]).mass.mean()
    for i, r in errors.iterrows():
        b, t = int(r.b), int(r.first_token)
        if (b, t) not in img.index:
            continue
        own = float(img.loc[(b, t)])
        rest = img.loc[b].drop(index=t, errors="ignore")
        out.loc[i, "img_attn"] = own
        out.loc[i, "img_attn_ratio"] = own / float(rest.mean()) if len(rest) and rest.mean() > 0 else float("nan")


def probe_evidence(errors: pd.DataFrame, predictions: pd.DataFrame, scenes: dict[str, Any], *,
                   enc_site: str = "projector.in", proj_site: str = "projector.out") -> pd.DataFrame:
    """Out-of-fold probe verdicts for the true value of each error's object.

    Parameters
    ----------
    errors : DataFrame
        Misalignment rows (``item_id`` is the item id).
    predictions : DataFrame
        :func:`~lvlm_probe.probing.probe_sweep` predictions (``return_predictions=True``) on labels from
        :func:`~lvlm_probe.probing.scene_labels` covering the erroneous items.
    scenes : dict
        item id → SceneGraph.

    Returns
    -------
    DataFrame
        Indexed like ``errors``: ``enc_p_true, proj_p_true, enc_site, proj_site``: the probability the
        probe at each site gives the true value (object errors: the presence or absence of the class;
        attribute errors: the object's true value; relation errors: the pair's true predicate). NaN when
        no probe covers the error.
    """
    out = pd.DataFrame(index=errors.index, columns=["enc_p_true", "proj_p_true", "enc_site", "proj_site"],
                       dtype=object)
    out["enc_site"], out["proj_site"] = enc_site, proj_site
    if predictions is None or not len(predictions) or not len(errors):
        return out
    pred = predictions[predictions.site.isin([enc_site, proj_site])]
    img = pred[pred.object_index.isna()].set_index(["site", "item_id", "concept"]).p_true
    img = img[~img.index.duplicated()]
    obj = pred[pred.object_index.notna() & pred.other_index.isna()]
    obj = obj.set_index(["site", "item_id", "concept", obj.object_index.astype(int)]).p_true
    obj = obj[~obj.index.duplicated()]
    pair = pred[pred.other_index.notna()]
    pair_idx = {}
    for s, it, a, o, p in zip(pair.site, pair.item_id, pair.object_index, pair.other_index, pair.p_true):
        pair_idx[(s, it, int(a), int(o))] = p
        pair_idx.setdefault((s, it, int(o), int(a)), p)
    for i, r in errors.iterrows():
        scene = scenes.get(str(r["item_id"]))
        for col, site in (("enc_p_true", enc_site), ("proj_p_true", proj_site)):
            v = float("nan")
            if r.kind == "object":
                v = _object_verdict(r, scene, site, obj, img)
            elif scene is not None and r.kind == "attribute":
                idx = scene.find(r.subject) if not _nan(r.subject) else []
                if idx:
                    v = obj.get((site, str(r["item_id"]), r.attribute, int(idx[0])), float("nan"))
            elif scene is not None and r.kind == "relation" and not _nan(r.object):
                a, o = scene.find(r.subject), scene.find(r.object)
                if a and o:
                    v = pair_idx.get((site, str(r["item_id"]), int(a[0]), int(o[0])), float("nan"))
            out.loc[i, col] = float(v)
    return out


def _object_verdict(r: Any, scene: Any, site: str, obj: pd.Series, img: pd.Series) -> float:
    """Probe verdict for an object error at ``site``.

    Omitted (present) object: P(its true class | the patches under its box) from the object-level ``class``
    probe. Hallucinated (absent) class: the smallest P(true class) over the scene's objects (how sure the probe
    is that every object is what it is, so none is the claimed class). Falls back to the image-level
    ``object:<class>`` presence probe.
    """
    item = str(r["item_id"])
    cls = r.subject if not _nan(r.subject) else r.claimed
    if scene is not None and len(scene.objects):
        if r.polarity == "omitted" or (not _nan(r.truth) and r.truth == cls):
            idx = scene.find(cls)
            vals = [obj.get((site, item, "class", int(i))) for i in idx]
        else:
            vals = [obj.get((site, item, "class", int(i))) for i in range(len(scene.objects))]
        vals = [float(v) for v in vals if v is not None and not _nan(v)]
        if vals:
            return max(vals) if r.polarity == "omitted" else min(vals)
    return float(img.get((site, item, f"object:{cls}"), float("nan")))


def as_float(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    """Cast evidence columns to float (object columns from row-wise filling)."""
    for c in cols:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df

