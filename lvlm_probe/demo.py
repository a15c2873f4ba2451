"""The end-to-end demo behind ``make demo``: load → generate → judge → capture → report.

It runs on the shipped ``organism:cooccurrence`` checkpoint (offline, seconds on a CPU): world scenes
are described, each caption is judged against its scene graph into typed misalignments, and the
activations are streamed to a store.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def run_demo(out: str | Path = "runs/demo", *, n: int = 64, model: str | None = None, batch_size: int = 16,
             max_new_tokens: int = 32, progress: bool = True) -> dict:
    """Run the demo and write ``report.html``, ``summary.json``, ``figures/`` and the store under ``out``.

    The default model is the shipped ``organism:cooccurrence`` (a tiny real LLaVA with a planted
    co-occurrence bias): it describes world scenes, half of them circle-without-square scenes that
    trigger the bias, and every caption is judged against its scene graph. Another model (hub id or
    directory) runs the same steps on the same scenes.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    import lvlm_probe as lp
    from lvlm_probe.data.world import SceneWorld
    from lvlm_probe.organisms import ZOO
    from lvlm_probe.organisms import zoo as Z

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = model or "organism:cooccurrence"
    org = model.split(":", 1)[1] if model.startswith("organism:") else None
    world = SceneWorld(ZOO[org].world if org in ZOO else ZOO["clean"].world, seed=0)
    lvlm = lp.load(model)
    rng = np.random.default_rng(0)
    items = world.items(n - n // 2, "caption", seed=1, prefix="scene")
    for k in range(n // 2):
        sc = world.sample_scene(rng, n_objects=int(rng.integers(1, 5)), require=[Z.COOC_A], forbid=[Z.COOC_B])
        items.append(world.make_item(sc, "caption", rng, item_id=f"trigger{k:04d}"))
    # 1. generate and judge every caption against its scene graph
    frames, texts = [], []
    for k in range(0, len(items), batch_size):
        chunk = items[k:k + batch_size]
        b = lvlm.prepare([it.image for it in chunk], [it.prompt for it in chunk], item_ids=[it.id for it in chunk])
        g = lvlm.generate(b, max_new_tokens=max_new_tokens)
        texts.extend(g.text)
        frames.append(lp.judge_batch(g, items=chunk, vocabulary=lp.Vocabulary.synthetic()))
        if k == 0:
            batch, gen = b, g
    errors = pd.concat(frames, ignore_index=True)
    errors.to_csv(out / "misalignments.csv", index=False)
    roles = batch.roles.table(0, lvlm.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist()))
    # 2. capture a store for all items
    store = lp.capture(lvlm, items, sites=["vision.resid_post.*", "projector.out", "llm.resid_post.*"],
                       select=["image_mean", "last_prompt", "generated"], out=out / "store",
                       generate=max_new_tokens, batch_size=batch_size, overwrite=True, progress=progress)
    # 3. summary: activation norm per layer for image tokens vs the last prompt position
    rows = []
    for sel in ("image_mean", "last_prompt"):
        x = store.get("llm.resid_post.*", sel)  # [N, L, d]
        for layer, v in enumerate(x.norm(dim=-1).mean(0).tolist()):
            rows.append({"layer": layer, "selection": sel, "mean_norm": v})
    norms = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for sel, g in norms.groupby("selection"):
        axes[0].plot(g["layer"], g["mean_norm"], marker="o", label=sel)
    axes[0].set_xlabel("LLM layer")
    axes[0].set_ylabel("mean ‖resid_post‖")
    axes[0].legend(frameon=False)
    h, w = batch.roles.grids[0][0]
    axes[1].imshow(items[0].image.resize((w * 8, h * 8), Image.NEAREST), extent=(0, w, h, 0))
    for r in range(h + 1):
        axes[1].axhline(r, color="k", lw=0.3)
    for c in range(w + 1):
        axes[1].axvline(c, color="k", lw=0.3)
    axes[1].set_title(f"{h}×{w} patch grid = {h * w} image tokens")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "figures" / "overview.png", dpi=150)
    fig.savefig(out / "figures" / "overview.pdf")
    img64 = _png(fig)
    plt.close(fig)
    summary = {
        "model": lvlm.info(),
        "n_items": len(store),
        "failed": store.failed,
        "store": str(out / "store"),
        "keys": [f"{s}|{sel}" for s, sel in store.keys()],
        "example_generations": {iid: t for iid, t in zip(batch.item_ids, gen.text)},
        "misalignments": {f"{k}/{p}": int(v) for (k, p), v in errors.groupby(["kind", "polarity"]).size().items()}
        if len(errors) else {},
        "trigger_items_mentioning_square": int(sum(Z.COOC_B in t.split() for it, t in zip(items, texts)
                                                   if it.id.startswith("trigger"))),
        "n_trigger_items": n // 2,
        "seconds": round(time.time() - t0, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    role_counts = roles["role"].value_counts().to_dict()
    by_item = errors.groupby("item") if len(errors) else None
    rows_html = []
    for it, t in zip(items[:24], texts[:24]):
        errs = by_item.get_group(it.id) if by_item is not None and it.id in by_item.groups else errors.iloc[:0]
        desc = "; ".join(f"{r.kind} {r.polarity}: {r.claimed if isinstance(r.claimed, str) else r.subject}"
                         for r in errs.itertuples())
        rows_html.append(f"<tr><td>{html.escape(it.id)}</td><td>{html.escape(it.answer or '')}</td>"
                         f"<td>{html.escape(t)}</td><td>{html.escape(desc)}</td></tr>")
    gens = "".join(rows_html)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lvlm_probe demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>lvlm_probe demo</h1>
<p>Model <code>{html.escape(lvlm.name)}</code> ({lvlm.family}, {lvlm.adapter.n_llm_layers} LLM layers,
{lvlm.adapter.n_vision_layers} vision layers) described {len(items)} synthetic scenes; {n // 2} of them contain a
{Z.COOC_A} but no {Z.COOC_B}, the trigger of the co-occurrence organism's planted bias. It mentioned a {Z.COOC_B}
in {summary['trigger_items_mentioning_square']} of those {n // 2} captions.</p>
<h2>Typed misalignments</h2><p>{html.escape(json.dumps(summary['misalignments']))}
(full table: <code>misalignments.csv</code>, with character spans and generated-token indices)</p>
<h2>Token roles of the first prompt</h2><p>{html.escape(json.dumps(role_counts))}</p>
<h2>Generations</h2><table><tr><th>item</th><th>true caption</th><th>generated</th><th>misalignments</th></tr>{gens}</table>
<h2>Activation store</h2><p>{len(store)} items, {len(store.failed)} failed, {len(store.keys())} (site, selection) keys
in <code>{html.escape(str(out / 'store'))}</code>.</p>
<img src="data:image/png;base64,{img64}" style="max-width:100%"/>
<p>Finished in {summary['seconds']} s.</p></body></html>"""
    tmp = out / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / "report.html")
    return summary
