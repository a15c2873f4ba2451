"""The end-to-end demo behind ``make demo``: load → prepare → generate → capture → summary report.

Until the organism zoo ships trained checkpoints, the demo builds a tiny random-init LLaVA
locally (the same on-disk layout as a hub checkpoint), so every stage runs offline in seconds.
Its generations are therefore noise; the report shows the machinery, not a diagnosis.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def shape_image(seed: int, size: int = 64) -> tuple[Image.Image, list[tuple[str, str]]]:
    """A small synthetic scene with 1–2 coloured shapes; returns the image and its (colour, shape) list."""
    rs = np.random.RandomState(seed)
    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    objs = []
    for k in range(rs.randint(1, 3)):
        colour = list(COLOURS)[rs.randint(len(COLOURS))]
        shape = SHAPES[rs.randint(len(SHAPES))]
        r = size // 6
        cx = (k * 2 + 1) * size // 4 + rs.randint(-3, 4)
        cy = size // 2 + rs.randint(-10, 11)
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle":
            d.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            d.rectangle(box, fill=COLOURS[colour])
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        objs.append((colour, shape))
    return img, objs


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def run_demo(out: str | Path = "runs/demo", *, n: int = 64, model: str | None = None, batch_size: int = 8,
             max_new_tokens: int = 8, progress: bool = True) -> dict:
    """Run the demo and write ``report.html``, ``summary.json``, ``figures/`` and the store under ``out``.

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
    from lvlm_probe.models.tiny import build_tiny_llava

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if model is None:
        model_dir = out / "model"
        if not (model_dir / "config.json").exists():
            build_tiny_llava(model_dir, image_size=64, patch_size=8, text_hidden=96, text_layers=4,
                             vision_hidden=48, vision_layers=3, init_std=0.2)
        model = str(model_dir)
    lvlm = lp.load(model)
    items = []
    for k in range(n):
        img, objs = shape_image(k)
        items.append(lp.Item(id=f"scene{k:04d}", image=img, prompt="what is in the image ?",
                             answer=" and ".join(f"a {c} {s}" for c, s in objs)))
    # 1. one batch by hand: roles, generation
    batch = lvlm.prepare([it.image for it in items[:4]], [it.prompt for it in items[:4]],
                         item_ids=[it.id for it in items[:4]])
    gen = lvlm.generate(batch, max_new_tokens=max_new_tokens)
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
    axes[1].imshow(items[0].image.resize((w * 8, h * 8)), extent=(0, w, h, 0))
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
        "seconds": round(time.time() - t0, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    role_counts = roles["role"].value_counts().to_dict()
    gens = "".join(f"<tr><td>{html.escape(i)}</td><td>{html.escape(items[k].answer or '')}</td>"
                   f"<td>{html.escape(t)}</td></tr>" for k, (i, t) in enumerate(zip(batch.item_ids, gen.text)))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lvlm_probe demo</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>lvlm_probe demo</h1>
<p>Model <code>{html.escape(lvlm.name)}</code> ({lvlm.family}, {lvlm.adapter.n_llm_layers} LLM layers,
{lvlm.adapter.n_vision_layers} vision layers). This is a random-init model built locally, so its text is noise:
the report shows the pipeline (load, token roles, generation, streaming capture), not a diagnosis.</p>
<h2>Token roles of the first prompt</h2><p>{html.escape(json.dumps(role_counts))}</p>
<h2>Generations</h2><table><tr><th>item</th><th>scene</th><th>generated</th></tr>{gens}</table>
<h2>Activation store</h2><p>{len(store)} items, {len(store.failed)} failed, {len(store.keys())} (site, selection) keys
in <code>{html.escape(str(out / 'store'))}</code>.</p>
<img src="data:image/png;base64,{img64}" style="max-width:100%"/>
<p>Finished in {summary['seconds']} s.</p></body></html>"""
    tmp = out / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / "report.html")
    return summary
