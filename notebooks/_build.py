"""Write the notebooks in this folder from the cell sources below (nbformat v4, no outputs).

The .ipynb files are generated, not hand-edited: change a cell here and run

    .venv/bin/python notebooks/_build.py            # all notebooks
    .venv/bin/python notebooks/_build.py 01         # those whose name starts with 01

so that notebooks stay output-free and diff cleanly. Each notebook is a list of ("md" | "code", source)
cells; add a new one (02_probing, 03_attribution, 04_diagnosis) as another entry of NOTEBOOKS.
`make notebooks` executes them all (notebooks/_execute.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

Cells = list[tuple[str, str]]

# ------------------------------------------------------------------------------------------------ 01
QUICKSTART: Cells = [
    ("md", """\
# 01 · Quickstart: load, look, generate, judge, capture

This notebook walks the first half of lvlm_probe's data flow on `organism:clean`, a tiny but genuine
HF `LlavaForConditionalGeneration` (CLIP vision tower + Llama LM, ~0.5M parameters) that ships inside the
package and was trained on a synthetic world of shapes with exact scene graphs:

1. **load** the model through TransformerBridge (the same call loads `llava-hf/llava-1.5-7b-hf`);
2. make **items** from the scene world;
3. see the **token roles** — which position is which image patch — on the image;
4. **generate** captions and **judge** them against the scene graphs;
5. **capture** activations to a small on-disk store and read them back.

It runs offline on a CPU in well under a minute."""),
    ("code", """\
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import lvlm_probe as lp

torch.manual_seed(0)
pd.set_option("display.width", 140)"""),
    ("md", """\
## 1. Load an organism

`lp.load` takes a hub id, a local directory or `organism:NAME`. `device` and `dtype` are explicit."""),
    ("code", """\
model = lp.load("organism:clean", device="cpu", dtype="float32")
model"""),
    ("code", """\
lp.organisms.list_organisms()[["name", "cause", "level", "component", "shipped"]]"""),
    ("md", """\
## 2. Items from the scene world

`SceneWorld` draws 64×64 scenes of 1–5 shapes and knows their exact scene graph. With the organism's own
world config the images match what it was trained on. Each `Item` has an image, a prompt, the `SceneGraph`
and the expected answer."""),
    ("code", """\
world = lp.SceneWorld(lp.organisms.ZOO["clean"].world, seed=0)
items = world.items(8, "caption", seed=1)
item = items[0]
print(item.id, "|", item.prompt, "|", item.answer)
pd.DataFrame([{"object": k, "class": o.name, **o.attributes, "box": o.box} for k, o in enumerate(item.scene.objects)])"""),
    ("md", """\
## 3. Token roles

`prepare` renders the chat template, expands the image placeholder to one token per patch and returns a
left-padded `Batch` whose `roles` say what every position is (`image`, `system`, `template`, `question`,
`answer`, `generated`) and, for image tokens, which (image, row, col) patch they are."""),
    ("code", """\
batch = model.prepare([it.image for it in items], [it.prompt for it in items], item_ids=[it.id for it in items])
tokens = model.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
roles = batch.roles.table(0, tokens)
print(roles["role"].value_counts().to_dict(), "grid:", batch.roles.grids[0])
roles[roles["role"] != "image"]"""),
    ("code", """\
# The image tokens are exactly the positions holding the image token id.
assert torch.equal(batch.roles.image, batch.input_ids == model.image_token_id)
roles[roles["role"] == "image"].head(6)"""),
    ("md", """\
Drawn on the image: each cell of the LLM-side patch grid, labelled with the sequence position of its image
token. The strip below shows the role of every position of the prompt."""),
    ("code", """\
(rows, cols), = batch.roles.grids[0]
img = item.image
fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.5, 6.6), gridspec_kw={"height_ratios": [5, 1]})
ax.imshow(img, extent=(0, cols, rows, 0))
for r in range(rows + 1):
    ax.axhline(r, color="k", lw=0.5)
for c in range(cols + 1):
    ax.axvline(c, color="k", lw=0.5)
for t in roles[roles["role"] == "image"].itertuples():
    ax.text(t.col + 0.5, t.row + 0.5, str(t.position), ha="center", va="center", fontsize=9,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", alpha=0.7, lw=0))
ax.set_title(f"{item.id}: {rows}×{cols} patch grid → {rows * cols} image tokens")
ax.set_xticks([])
ax.set_yticks([])
names = list(lp.ROLE_NAMES)
ids = np.array([names.index(r) if r in names else -1 for r in roles["role"]])
cmap = plt.get_cmap("tab10")
ax2.imshow(ids[None, :], aspect="auto", cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
ax2.set_yticks([])
ax2.set_xlabel("sequence position")
present = [n for n in names if n in set(roles["role"])]
ax2.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=cmap(names.index(n))) for n in present], labels=present,
           ncol=len(present), loc="upper center", bbox_to_anchor=(0.5, -0.7), frameon=False)
fig.tight_layout()"""),
    ("md", """\
## 4. Generate and judge

`generate` is HF `generate` (KV cache, greedy by default) with the bridge hooks live; its output is identical
to HF's token for token. `judge_batch` extracts the object / attribute / relation claims of each caption and
compares them with the item's scene graph; one row per misalignment."""),
    ("code", """\
gen = model.generate(batch, max_new_tokens=24)
pd.DataFrame({"item": batch.item_ids, "true caption": [it.answer for it in items], "generated": gen.text})"""),
    ("code", """\
vocab = lp.Vocabulary.synthetic()
errors = lp.judge_batch(gen, items=items, vocabulary=vocab)
print(f"{len(errors)} misalignments in {len(items)} captions")
errors[["item", "kind", "polarity", "subject", "claimed", "truth", "text", "token_indices"]]"""),
    ("md", """\
`clean` is the unbiased reference, so its captions are mostly right. To see what an error record looks
like, judge a caption with one wrong colour, one wrong object and a missing object against the first scene:"""),
    ("code", """\
wrong = "a small red hourglass , a large yellow ring and a large yellow circle ."
print("truth:", item.answer)
bad = lp.misalignment.judge_frame(wrong, item.scene, vocabulary=vocab)
assert {"attribute", "object"} <= set(bad["kind"])
bad[["kind", "polarity", "subject", "attribute", "claimed", "truth", "text", "start", "end"]]"""),
    ("md", """\
## 5. Capture a small store

`capture` runs the model over the items (generating while it records), pools each selection on the
model's device and streams the result to sharded safetensors files with a JSON manifest."""),
    ("code", """\
out = Path(tempfile.mkdtemp()) / "store"
store = lp.capture(model, items, sites=["vision.resid_post.*", "projector.out", "llm.resid_post.*"],
                   select=["image_mean", "image_patches", "last_prompt", "generated"], generate=24,
                   out=out, batch_size=8, progress=False)
print(len(store), "items,", len(store.keys()), "keys, failed:", store.failed)
sorted(p.name for p in out.rglob("*") if p.is_file())"""),
    ("code", """\
X = store.get("llm.resid_post.*", "image_mean")          # [N, layers, d], rows follow store.item_ids
rows_, idx = store.get_rows("llm.resid_post.3", "image_patches")
print("image_mean:", tuple(X.shape), "| image_patches rows:", tuple(rows_.shape))
idx.head()"""),
    ("md", """\
The store holds exactly what the model computes: the pooled image-token mean of layer 3 equals a direct
`run_with_cache` on the same batch."""),
    ("code", """\
_, cache = model.run_with_cache(batch, ["llm.resid_post.3"])
direct = torch.stack([cache["llm.resid_post.3"][b][batch.roles.image[b]].mean(0) for b in range(len(items))])
assert torch.allclose(store.get("llm.resid_post.3", "image_mean"), direct, atol=1e-5)
print("max |store - direct| =", float((store.get("llm.resid_post.3", "image_mean") - direct).abs().max()))"""),
    ("code", """\
norms = []
for sel in ("image_mean", "last_prompt"):
    for layer, v in enumerate(store.get("llm.resid_post.*", sel).norm(dim=-1).mean(0).tolist()):
        norms.append({"layer": layer, "selection": sel, "mean_norm": v})
norms = pd.DataFrame(norms)
fig, ax = plt.subplots(figsize=(4.5, 3))
for sel, g in norms.groupby("selection"):
    ax.plot(g["layer"], g["mean_norm"], marker="o", label=sel)
ax.set_xticks(sorted(norms["layer"].unique()))
ax.set_xlabel("LLM layer")
ax.set_ylabel("mean ‖resid_post‖")
ax.legend(frameon=False)
fig.tight_layout()"""),
    ("md", """\
Next: `02_probing` decodes objects, attributes and relations from these activations layer by layer, and
the [documentation](../docs/index.md) explains sites, selections and the store layout."""),
]

# ------------------------------------------------------------------------------------------------ 05
REAL_MODELS: Cells = [
    ("md", """\
# 05 · Real models on a GPU

Everything in lvlm_probe takes the same path for a hub checkpoint as for the organisms. This notebook runs
the quickstart steps on **`llava-hf/llava-1.5-7b-hf`** (about 14 GB of GPU memory in float16) or, by setting
`LVLM_PROBE_MODEL`, on **Qwen2.5-VL** (`Qwen/Qwen2.5-VL-3B-Instruct`, use `bfloat16`).

When there is no GPU, or the weights are neither cached nor downloadable (`HF_HUB_OFFLINE=1`), it falls
back to a tiny random-init LLaVA built in a temporary directory — same architecture, same code path,
meaningless outputs — so that it still runs in CI."""),
    ("code", """\
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

import lvlm_probe as lp

MODEL = os.environ.get("LVLM_PROBE_MODEL", "llava-hf/llava-1.5-7b-hf")
DTYPE = os.environ.get("LVLM_PROBE_DTYPE", "bfloat16" if "qwen" in MODEL.lower() else "float16")"""),
    ("md", """\
## Load, or fall back

`lp.load` raises a clear error when the weights are not available offline; we catch it (and skip the
attempt entirely without CUDA) and build the stand-in instead."""),
    ("code", """\
def load_real_or_tiny(name: str, dtype: str) -> tuple[lp.LVLM, bool]:
    \"\"\"The hub model on CUDA if possible, else a tiny random-init LLaVA on CPU. Returns (model, is_real).\"\"\"
    if torch.cuda.is_available():
        try:
            return lp.load(name, device="cuda", dtype=dtype), True
        except (OSError, ValueError, lp.LvlmProbeError) as exc:   # not cached while offline, no access, ...
            print(f"could not load {name!r}: {type(exc).__name__}: {str(exc)[:200]}")
    else:
        print("no CUDA device")
    from lvlm_probe.models.tiny import build_tiny_llava

    path = build_tiny_llava(Path(tempfile.mkdtemp()) / "tiny_llava", init_std=0.2, seed=1)
    print(f"falling back to a tiny random-init LLaVA at {path}")
    return lp.load(path, device="cpu", dtype="float32"), False


model, is_real = load_real_or_tiny(MODEL, DTYPE)
pd.Series(model.info())"""),
    ("md", """\
## Sites and hooks

Canonical site names are the same for every family; `hook_name` shows the TransformerBridge hook behind
each."""),
    ("code", """\
sites = ["vision.resid_post.0", "projector.in", "projector.out", "llm.resid_post.0", "llm.attn_pattern.0", "llm.final_norm"]
pd.DataFrame({"site": sites, "bridge hook": [model.hook_name(s) for s in sites]})"""),
    ("md", """\
## Items, roles, generation

Scene-world images work with any model (the image processor resizes them); replace them with your own
`lp.Item(id=..., image="path.jpg", prompt=...)`s or `lp.read_items("items.jsonl")`."""),
    ("code", """\
world = lp.SceneWorld(lp.organisms.ZOO["clean"].world, seed=0)
items = world.items(4, "caption", seed=1)
for it in items:
    it.prompt = "Describe the image." if is_real else "describe the image ."
batch = model.prepare([it.image for it in items], [it.prompt for it in items], item_ids=[it.id for it in items])
table = batch.roles.table(0)
print("grid per image:", batch.roles.grids[0], "| roles:", table["role"].value_counts().to_dict())
assert int(batch.roles.image[0].sum()) == sum(r * c for r, c in batch.roles.grids[0])"""),
    ("code", """\
gen = model.generate(batch, max_new_tokens=48 if is_real else 12)
pd.DataFrame({"item": batch.item_ids, "true scene": [it.answer for it in items], "generated": gen.text})"""),
    ("md", """\
## Capture

On a GPU, selection and pooling happen on the device; only the pooled rows travel to the CPU. The store is
written in the model's dtype unless you pass `dtype=`."""),
    ("code", """\
out = Path(tempfile.mkdtemp()) / "store"
store = lp.capture(model, items, sites=["projector.out", "llm.resid_post.*"], select=["image_mean", "last_prompt"],
                   out=out, batch_size=4, dtype="float32", progress=False)
X = store.get("llm.resid_post.*", "last_prompt")      # [N, layers, d]
print(tuple(X.shape), store.model["name"])
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.plot(X.norm(dim=-1).mean(0).numpy(), marker="o")
ax.set_xticks(range(X.shape[1]))
ax.set_xlabel("LLM layer")
ax.set_ylabel("mean ‖resid_post‖ at last prompt position")
ax.set_title(model.name if is_real else "tiny stand-in (random weights)")
fig.tight_layout()"""),
    ("md", """\
## Notes for real runs

- Memory: LLaVA-1.5-7B needs ~14 GB in float16; `llm.resid_post.*` × `image_patches` stores 576 rows of
  4096 floats per item and layer — prefer pooled selections (`image_mean`, `last_prompt`) for thousands of items.
- Throughput: raise `batch_size` until memory is full; `benchmarks/capture_overhead.py` measures the cost of
  capture against plain generation.
- Qwen2.5-VL has a dynamic grid: `batch.roles.grids` differs per image, and `image_patches` rows carry each
  image's own (row, col).
- Reproducibility: the manifest records the model revision and config hash and the library versions."""),
]

NOTEBOOKS: dict[str, Cells] = {
    "01_quickstart.ipynb": QUICKSTART,
    "05_real_models.ipynb": REAL_MODELS,
}


def build(cells: Cells) -> nbformat.NotebookNode:
    """A v4 notebook with no outputs and no execution counts."""
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for kind, src in cells:
        if kind == "md":
            nb.cells.append(new_markdown_cell(src))
        elif kind == "code":
            nb.cells.append(new_code_cell(src))
        else:
            raise ValueError(f"cell kind must be 'md' or 'code', got {kind!r}")
    for k, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{k:02d}"  # stable ids: rebuilding an unchanged notebook gives the same bytes
    nbformat.validate(nb)
    return nb


def write(nb: nbformat.NotebookNode, path: Path) -> None:
    """Write atomically (temp file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            nbformat.write(nb, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    wanted = [n for n in NOTEBOOKS if not argv or any(n.startswith(a) for a in argv)]
    if not wanted:
        print(f"no notebook matches {argv}; known: {list(NOTEBOOKS)}", file=sys.stderr)
        return 2
    for name in wanted:
        write(build(NOTEBOOKS[name]), HERE / name)
        print(f"wrote notebooks/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
