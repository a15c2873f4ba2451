"""The end-to-end demo behind ``make demo``: ``diagnose`` on the shipped ``organism:cooccurrence``.

The organism (a tiny real LLaVA with a planted co-occurrence bias: squares always came with circles in its
training data) describes world scenes, half of them circle-without-square scenes that trigger the bias;
every output is judged against its scene graph, every error gets its evidence and the cascade names its
cause. The report, tables, figures and manifest go to ``out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lvlm_probe._atomic import atomic_write_text


def run_demo(out: str | Path = "runs/demo", *, n: int = 48, model: str | None = None, batch_size: int = 16,
             max_new_tokens: int = 48, seed: int = 0, progress: bool = True) -> dict:
    """Run ``diagnose`` on the demo items and write its report under ``out``.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``): items, errors, errors per level and stage, the
        dominant level, the report path and the run time.
    """
    from lvlm_probe.organisms import default_items
    from lvlm_probe.report import render_diagnosis
    from lvlm_probe.tracing import DiagnoseConfig, diagnose

    t0 = time.time()
    model = model or "organism:cooccurrence"
    items = default_items(model, n, seed)  # an InputError pointing to `diagnose --items` for non-organisms
    cfg = DiagnoseConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed)
    rep = diagnose(model, items, cfg, out=out, progress=progress)
    report = render_diagnosis(rep, out)
    d = rep.diagnoses
    summary = {
        "model": model, "n_items": len(items), "n_errors": int(len(rep.errors)),
        "failed": rep.generations[rep.generations.failed.notna()].item_id.tolist(),
        "levels": d.level.value_counts().to_dict() if len(d) else {},
        "stages": d.stage.value_counts().to_dict() if len(d) else {},
        "dominant_level": rep.dominant("level"), "dominant_stage": rep.dominant("stage"),
        "report": str(report), "seconds": round(time.time() - t0, 1),
    }
    atomic_write_text(Path(out, "summary.json"), json.dumps(summary, indent=1))
    return summary
