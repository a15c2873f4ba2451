"""Generate on items, read every claim and its internal-state features: a :class:`ClaimSet`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lvlm_probe.data.items import Item
from lvlm_probe.detection.claims import claim_table
from lvlm_probe.detection.features import SCALAR_FEATURES, claim_features
from lvlm_probe.detection.presence import PresenceProbes
from lvlm_probe.errors import InputError
from lvlm_probe.models.lvlm import LVLM
from lvlm_probe.tracing.collect import default_probe_items
from lvlm_probe.tracing.config import DiagnoseConfig


@dataclass
class ClaimSet:
    """Claims of one or more models with their features.

    Attributes
    ----------
    table : DataFrame
        One row per claim: :data:`~lvlm_probe.detection.claims.CLAIM_COLUMNS`, ``model`` (the model's name) and
        :data:`~lvlm_probe.detection.features.SCALAR_FEATURES`. ``misaligned`` is 1.0 / 0.0 where the item had a
        scene graph, NaN where it had none.
    resid : numpy.ndarray [n_claims, n_layers, d]
        Residual stream after each LLM layer at the query that emitted the claim's first token.
    generations : DataFrame
        ``model, item_id, task, text`` per generated item.
    """

    table: pd.DataFrame
    resid: np.ndarray
    generations: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        lab = self.table.misaligned.dropna()
        return (f"ClaimSet({len(self)} claims of {self.table.model.nunique()} model(s), {int(lab.sum())} misaligned "
                f"of {len(lab)} labelled, layers={self.resid.shape[1]})")

    def labelled(self) -> ClaimSet:
        """The claims with a label (items that had a scene graph)."""
        return self.subset(self.table.misaligned.notna().to_numpy())

    def subset(self, mask: Any) -> ClaimSet:
        """The claims where ``mask`` (bool array over rows) holds."""
        m = np.asarray(mask, dtype=bool)
        return ClaimSet(self.table[m].reset_index(drop=True), self.resid[m], self.generations)

    @staticmethod
    def concat(parts: Sequence[ClaimSet]) -> ClaimSet:
        """Claim sets of models with the same residual width, stacked."""
        widths = {p.resid.shape[1:] for p in parts if len(p)}
        if len(widths) > 1:
            raise InputError(f"claim sets have residuals of different shapes {sorted(widths)}; a detector reads one "
                             "model family's width")
        return ClaimSet(pd.concat([p.table for p in parts], ignore_index=True),
                        np.concatenate([p.resid for p in parts], axis=0),
                        pd.concat([p.generations for p in parts], ignore_index=True))


def collect_claims(model: LVLM, items: Sequence[Item], config: DiagnoseConfig | None = None, *,
                   presence: PresenceProbes | str | None = "auto", vocabulary: Any = None, progress: bool = True
                   ) -> ClaimSet:
    """Generate on ``items`` (greedy unless the config says otherwise), then read every claim's features.

    Parameters
    ----------
    model : LVLM
    items : sequence of Item
        With scene graphs the claims are labelled by the judge (training and evaluation data); without, they are
        not (what :class:`~lvlm_probe.detection.detector.HallucinationDetector` scores).
    config : DiagnoseConfig, optional
        ``max_new_tokens``, ``batch_size``, ``decoding``; ``n_probe_items`` and ``seed`` for the presence probes.
    presence : PresenceProbes, "auto" or None
        Presence probes of this model; ``"auto"`` fits them on ``config.n_probe_items`` fresh scenes of the probe
        world in the model's run defaults (organisms name one), else none (``p_present`` NaN).
    vocabulary : Vocabulary, optional

    Returns
    -------
    ClaimSet
    """
    items = list(items)
    labelled = all(it.scene is not None for it in items)
    cfg = (config or DiagnoseConfig()).resolve(model)
    if isinstance(presence, str):
        if presence != "auto":
            raise InputError(f"presence={presence!r}; give fitted PresenceProbes, 'auto' or None")
        probe_items = default_probe_items(model, cfg.n_probe_items, cfg.seed)
        presence = PresenceProbes().fit(model, probe_items, vocabulary=vocabulary) if probe_items else None
    tables, resids, gens = [], [], []
    for chunk, gen, errors in _generations(model, items, cfg, labelled, vocabulary, progress):
        claims = claim_table(gen, chunk, errors, vocabulary=vocabulary)
        scalars, resid = claim_features(model, gen, claims, presence)
        tables.append(pd.concat([claims, scalars.set_index(claims.index)], axis=1))
        resids.append(resid)
        gens.append(pd.DataFrame({"item_id": [it.id for it in chunk], "task": [it.task for it in chunk],
                                  "text": list(gen.text)}))
    n_layers = model.adapter.n_llm_layers
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(SCALAR_FEATURES))
    table.insert(0, "model", model.name)
    resid = np.concatenate(resids, axis=0) if resids else np.zeros((0, n_layers, 0), np.float32)
    generations = pd.concat(gens, ignore_index=True) if gens else pd.DataFrame()
    generations.insert(0, "model", model.name)
    return ClaimSet(table, resid, generations)


def _generations(model: LVLM, items: list[Item], cfg: DiagnoseConfig, labelled: bool, vocabulary: Any,
                 progress: bool):
    """Yield ``(items, Generation, errors or None)`` per batch; judged when every item has a scene graph."""
    from lvlm_probe.misalignment import judge_batch

    kw = cfg.generate_kwargs()
    chunks = [items[k:k + cfg.batch_size] for k in range(0, len(items), cfg.batch_size)]
    for chunk in tqdm(chunks, desc="claims", disable=not progress):
        batch = model.prepare_items(chunk)
        gen = model.generate(batch, **kw)
        errors = judge_batch(gen, items=chunk, vocabulary=vocabulary) if labelled else None
        yield chunk, gen, errors
