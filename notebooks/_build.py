"""Write the notebooks in this folder from the cell sources below (nbformat v4, no outputs).

The .ipynb files are generated, not hand-edited: change a cell here and run

    .venv/bin/python notebooks/_build.py            # all notebooks
    .venv/bin/python notebooks/_build.py 01         # those whose name starts with 01

so that notebooks stay output-free and diff cleanly. Each notebook is a list of ("md" | "code", source)
cells; add a new one as another entry of NOTEBOOKS.
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
pd.DataFrame({"item_id": batch.item_ids, "true caption": [it.answer for it in items], "generated": gen.text})"""),
    ("code", """\
vocab = lp.Vocabulary.synthetic()
errors = lp.judge_batch(gen, items=items, vocabulary=vocab)
print(f"{len(errors)} misalignments in {len(items)} captions")
errors[["item_id", "kind", "polarity", "subject", "claimed", "truth", "text", "token_indices"]]"""),
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

# ------------------------------------------------------------------------------------------------ 02
PROBING: Cells = [
    ("md", """\
# 02 · Probing: where does the model lose a fact?

A linear **probe** asks whether a property can be read off a layer's activations. Swept over every vision
layer, the projector and every LLM layer, it shows where a fact is present and where it disappears.

Here we compare two organisms that differ in one planted factor:

- `organism:clean`, the unbiased reference;
- `organism:encoder_blind`, whose patch-embedding weights are kept orthogonal to the red − orange colour
  difference, so the vision encoder gives **the two hues identical embeddings**.

On ~200 scene-world images we capture the patch activations at every site, build object-level colour and
size labels from the scene graphs (`scene_labels`), and run cross-validated probes (`probe_sweep`). The
prediction: on `encoder_blind` the *red vs orange* probe is at chance from the first encoder layer on —
the information never enters the model — while size and the other colours stay decodable."""),
    ("code", """\
import tempfile
from pathlib import Path

import pandas as pd
import torch

import lvlm_probe as lp
from lvlm_probe.plotting import plot_probe_curves
from lvlm_probe.probing import probe_sweep, scene_labels

torch.manual_seed(0)
pd.set_option("display.width", 140)"""),
    ("md", """\
## 1. Items and labels

Both organisms were trained on the same world, so one set of items serves both. `scene_labels` turns the
scene graphs into a tidy labels frame: one row per object and attribute (`color`, `size`), with the
object's box, so the probe's feature is the mean of the image patches under the box."""),
    ("code", """\
world = lp.SceneWorld(lp.organisms.ZOO["clean"].world, seed=0)
items = world.items(200, "caption", seed=1)
labels = scene_labels(items, families=("attribute",))
print(len(labels), "label rows;", labels.concept.value_counts().to_dict())
labels[["item_id", "concept", "value", "object_index", "name", "x0", "y0", "x1", "y1"]].head()"""),
    ("md", """\
The planted blindness concerns one pair of hues, which a 7-way colour probe would dilute. A labels frame is
just a DataFrame, so we add a binary concept of our own: the objects that are red or orange, labelled with
which of the two they are."""),
    ("code", """\
BLIND = lp.organisms.zoo.BLIND_PAIR                        # ("red", "orange")
pair = labels[(labels.concept == "color") & labels.value.isin(BLIND)].assign(concept="red vs orange")
labels = pd.concat([labels, pair], ignore_index=True)
print(len(pair), "red or orange objects;", pair.value.value_counts().to_dict())"""),
    ("md", """\
## 2. Capture and sweep

`image_patches` keeps one row per image token (with its patch row and column) at every vision layer, both
sides of the projector and every LLM layer. `probe_sweep` fits a `LinearProbe` per (site, concept) with
5 folds split by item, a random-label **control task** (dashed lines below) and a bootstrap interval over
items."""),
    ("code", """\
SITES = ["vision.resid_post.*", "projector.in", "projector.out", "llm.resid_post.*"]
tmp = Path(tempfile.mkdtemp())
sweeps = []
for name in ("clean", "encoder_blind"):
    model = lp.load(f"organism:{name}", device="cpu", dtype="float32")
    store = lp.capture(model, items, sites=SITES, select=["image_patches"], out=tmp / name, batch_size=32,
                       progress=False)
    res = probe_sweep(store, labels, cv=5, n_permutations=0, n_bootstrap=50, seed=0, progress=False)
    sweeps.append(res.assign(organism=name))
sweep = pd.concat(sweeps, ignore_index=True)
sweep[["organism", "site", "component", "depth", "concept", "score", "ci_low", "ci_high", "control_score",
       "majority"]].head(8)"""),
    ("md", """\
## 3. Probe curves

One panel per organism, depth runs through vision encoder → projector → LLM."""),
    ("code", """\
fig = plot_probe_curves(sweep, concepts=["color", "size", "red vs orange"], panels="organism")"""),
    ("md", """\
On `clean` every concept is decodable everywhere. On `encoder_blind` size is untouched, the 7-way colour
probe loses about half of the red-or-orange objects (a third of all objects; between those two hues it can
only guess), and the *red vs orange* probe sits on its control line at every depth: what the encoder does
not encode, no later component can recover. The table at the encoder output
(`projector.in`) makes it concrete: chance is the majority rate."""),
    ("code", """\
at_enc = sweep[sweep.site == "projector.in"].pivot(index="concept", columns="organism", values="score")
at_enc["majority"] = sweep[(sweep.site == "projector.in") & (sweep.organism == "clean")].set_index("concept").majority
print(at_enc.round(3))
assert at_enc.loc["red vs orange", "clean"] >= 0.95
assert at_enc.loc["red vs orange", "encoder_blind"] <= at_enc.loc["red vs orange", "majority"] + 0.1
assert at_enc.loc["size", "encoder_blind"] >= 0.95"""),
    ("md", """\
This is the evidence the cause cascade uses for its **encoder** rule: an out-of-fold probe at the encoder
output that cannot recover the true value of *this* object (see `04_diagnosis` and the
[cascade page](../docs/cascade.md)). Next: `03_attribution` asks which patches a word comes from."""),
]

# ------------------------------------------------------------------------------------------------ 03
ATTRIBUTION: Cells = [
    ("md", """\
# 03 · Attribution: which patches, which layers, which edges

Probes say what *could* be read from a layer. Attribution asks what the model *did* read for one output
token:

1. **patch attribution** (captum integrated gradients and occlusion on the image): which patches drive the
   word, drawn over the image with the scene-graph boxes;
2. **attention to the image** per LLM layer, for `clean` and for `visual_neglect`, an organism trained with
   mismatched images 90 % of the time so that it leans on the text;
3. **knockout**: block the attention edges from the image tokens in a window of layers and watch the word's
   probability."""),
    ("code", """\
import matplotlib.pyplot as plt
import pandas as pd
import torch

import lvlm_probe as lp
from lvlm_probe.attribution import image_attention, knockout, patch_attribution
from lvlm_probe.plotting import plot_image_attention, plot_patch_heatmap
from lvlm_probe.probing import box_patches

torch.manual_seed(0)
pd.set_option("display.width", 140)"""),
    ("code", """\
model = lp.load("organism:clean", device="cpu", dtype="float32")
world = lp.SceneWorld(lp.organisms.ZOO["clean"].world, seed=0)
items = world.items(4, "caption", seed=3)
batch = model.prepare([it.image for it in items], [it.prompt for it in items], item_ids=[it.id for it in items])
gen = model.generate(batch, max_new_tokens=24)
pd.DataFrame({"item_id": batch.item_ids, "true caption": [it.answer for it in items], "generated": gen.text})"""),
    ("md", """\
## 1. Patch attribution

Item 2 has four objects, and its caption names them in raster order of the 4×4 grid of cells the world
places them in. We explain the first object word with integrated gradients: its log-probability, a dark
image as baseline (`-1` in the processor's normalised units), the attribution summed over the pixels of
each LLM-side patch. The generation is teacher-forced on its own prefix up to that word (`step=t`)."""),
    ("code", """\
b = 2
item = items[b]
one = model.generate(model.prepare([item.image], [item.prompt], item_ids=[item.id]), max_new_tokens=24)
words = model.tokenizer.convert_ids_to_tokens(one.tokens[0])
classes = {o.name for o in item.scene.objects}
steps = [t for t, w in enumerate(words) if w in classes]
first = steps[0]
ig = patch_attribution(model, one, step=first, method="integrated_gradients", n_steps=1024, progress=False)
print(f"word {words[first]!r} at step {first}; f(input) = {float(ig.f_input[0]):.3f}, "
      f"f(baseline) = {float(ig.f_baseline[0]):.3f}, IG delta = {float(ig.delta[0]):.3f}")
fig = plot_patch_heatmap(item.image, ig.frame(), boxes=item.scene, colorbar_label="IG (log p)",
                         title=f"integrated gradients: '{words[first]}'")"""),
    ("md", """\
The attribution sits on the patch under the circle's box, and the IG delta (sum of attributions minus
f(input) − f(baseline)) is a small fraction of the difference it explains. That needs many steps here: the
organisms' image tokens enter the LLM at 40× the scale stage 1 aligned them to, so the log-probability
changes steeply along the path. On the first recipe's `clean`, 64 steps left a delta larger than the difference
itself (13.2 against 9.8); with 1,024 steps it is below 0.001 here. Checked, not eyeballed:"""),
    ("code", """\
m = ig.maps[0][0]
grid = tuple(m.shape)
W, H = item.image.size
top = divmod(int(m.argmax()), grid[1])
obj = next(o for o in item.scene.objects if o.name == words[first])
under = box_patches(obj.box, (W, H), grid)
print(f"top patch {top}; patches under the {obj.name}'s box {under}")
assert top in under
assert abs(float(ig.delta[0])) < 0.1 * abs(float(ig.f_input[0] - ig.f_baseline[0]))"""),
    ("md", """\
**Occlusion** is the perturbation view: replace one patch by the baseline and measure the drop in the
word's probability (one forward per patch, no gradients). Its default baseline is each image's background
colour (the per-channel median), so occluding a patch removes what is on it. To see how much the answer
depends on the baseline, take the dark baseline (`-1`) for the *second* object word: the caption follows
raster order, so the word after "circle ," is the next occupied cell. Could darkening an *empty* cell before
the hourglass make that cell look occupied, so that the model names something else there?"""),
    ("code", """\
second = steps[1]
occ = patch_attribution(model, one, step=second, method="occlusion", output="prob", baseline=-1.0, progress=False)
fig, axes = plt.subplots(1, 2, figsize=(5.4, 2.6))
plot_patch_heatmap(item.image, patch_attribution(model, one, step=first, method="occlusion", output="prob",
                                                 baseline=-1.0, progress=False).frame(),
                   boxes=item.scene, ax=axes[0], colorbar=False, title=f"occlusion: '{words[first]}'")
plot_patch_heatmap(item.image, occ.frame(), boxes=item.scene, ax=axes[1], colorbar=False,
                   title=f"occlusion: '{words[second]}'")
fig.tight_layout()
print(pd.DataFrame(occ.maps[0][0].numpy().round(2)))"""),
    ("code", """\
cells = {tuple(int(v) for v in c) for o in item.scene.objects for c in box_patches(o.box, (W, H), grid)}
own = box_patches(next(o for o in item.scene.objects if o.name == words[second]).box, (W, H), grid)[0]
before = [(r, c) for r in range(grid[0]) for c in range(grid[1]) if (r, c) < own and (r, c) not in cells]
after = [(r, c) for r in range(grid[0]) for c in range(grid[1]) if (r, c) > own]
om = occ.maps[0][0]
print("own cell", own, "Δp", round(float(om[own]), 3), "| empty cells before it", before)
print({rc: round(float(om[rc]), 2) for rc in before})
assert om[own] > 0.5 and all(abs(om[rc]) < 0.1 for rc in before + after)
bg = patch_attribution(model, one, step=second, method="occlusion", output="prob", progress=False).maps[0][0]
print("background baseline: own cell Δp", round(float(bg[own]), 3), "| empty cells before it",
      {rc: round(float(bg[rc]), 2) for rc in before})
assert bg[own] > 0.5 and all(float(bg[rc]) == 0.0 for rc in before)"""),
    ("md", """\
Not for this organism: with either baseline only the word's own patch matters, and a dark empty cell stays
empty (its vision tower learned every cell's class, "empty" included, before the LLM was trained). The first
recipe's tower, trained a quarter as long, was fooled: darkening the empty cells of the first row removed the
word. With the default background baseline an occluded empty cell is unchanged (exactly zero effect). Which
cells an attribution shows can depend on the baseline; look at more than one method, and at `delta`."""),
    ("md", """\
## 2. Attention to the image, per layer

`image_attention` sums each query's post-softmax attention over the keys of each role (image, template,
question, generated, ...), for every generated step, layer and head. Below: the mean over steps and items
of the image share, with the spread over heads, for `clean` and `visual_neglect` on the same items."""),
    ("code", """\
neglect = lp.load("organism:visual_neglect", device="cpu", dtype="float32")
gen_n = neglect.generate(neglect.prepare([it.image for it in items], [it.prompt for it in items],
                                         item_ids=[it.id for it in items]), max_new_tokens=24)
att = {"clean": image_attention(model, gen), "visual_neglect": image_attention(neglect, gen_n)}
fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.6), sharey=True)
for ax, (name, a) in zip(axes, att.items()):
    plot_image_attention(a, by="layer", to_role=["image", "generated"], ax=ax)
    ax.set_title(name)
fig.tight_layout()
pd.DataFrame({name: a[a.to_role == "image"].groupby("layer").mass.mean() for name, a in att.items()}).round(3)"""),
    ("md", """\
`visual_neglect` gives the image less attention than `clean` in every layer, most clearly in layers 1 and 2
(about 0.33 against 0.6). Still, attention mass is not information flow (a head can attend to image tokens and
copy nothing that matters); the causal test is to cut the edges."""),
    ("md", """\
## 3. Knockout

`knockout` blocks attention from the image tokens to the chosen queries in a sliding window of layers
(here one layer at a time, image → the last position) and reports the change of the target word's
probability."""),
    ("code", """\
ko = knockout(model, gen, step=3, from_roles="image", to_roles="last", window=1)
print(ko[ko.layer_start == 0][["item_id", "target", "p_base"]].to_string(index=False))
ko.pivot(index="item_id", columns="layer_start", values="delta_p").round(3)"""),
    ("md", """\
The last position hardly reads the image directly: cutting its image edge in one layer leaves three of the
four words in place, and only the ring depends on it (Δp −0.47 in layer 0, −0.99 in the last layer). The
other text positions read the image (in this recipe a fixed head in layer 0 copies each object's attributes
and position to the words that name it) and pass it on. Blocking the image from *every* text position in
every layer removes the words (mean Δp about −0.9). The same test on `visual_neglect`:"""),
    ("code", """\
rows = []
for name, m, g in (("clean", model, gen), ("visual_neglect", neglect, gen_n)):
    r = knockout(m, g, step=3, from_roles="image", to_roles=["template", "question", "generated", "last"])
    rows.append(r.assign(organism=name))
ko_all = pd.concat(rows, ignore_index=True)
print(ko_all.groupby("organism").delta_p.mean().round(3).to_dict())
vn = ko_all[ko_all.organism == "visual_neglect"]
assert vn.p_base.max() < 0.3 and vn.delta_p.abs().max() < 0.1  # a guess, whatever the image
assert ko_all[ko_all.organism == "clean"].delta_p.mean() < -0.5
ko_all[["organism", "item_id", "target", "p_base", "p_knock", "delta_p"]]"""),
    ("md", """\
`clean` loses its object words without the image. `visual_neglect` names its first object with a guess
(p ≈ 0.14 on every image, where a uniform guess over the 8 classes is 0.125), and cutting the image moves that
probability by less than 0.07: it does not read the objects from the image tokens. The cascade's noise-image
test (`pmi_img`, `img_use`: the same tokens with a uniform-noise image) measures the same dependence without
touching the attention.

These are the instruments behind the cascade's *llm fusion* evidence (`img_attn_ratio`, `p_knock`,
`knockout_effect` in the evidence frame); `04_diagnosis` puts them together per error."""),
]

# ------------------------------------------------------------------------------------------------ 04
DIAGNOSIS: Cells = [
    ("md", """\
# 04 · Diagnosis: from misaligned outputs to their causes

`lp.diagnose` runs the whole pipeline on a model and items with scene graphs: generate, judge every claim
against the scene graph, compute evidence per error (token probabilities with and without the image,
knockout, attention, out-of-fold probes at the encoder and projector outputs, training statistics,
position), and run the **cause cascade** that names a level (data / model / inference) and a stage for
each error.

We diagnose two organisms with known planted causes, then check the diagnosis against the plant over
fresh scenes (the planted-cause benchmark, small here; `python benchmarks/planted_causes.py` runs the full
one)."""),
    ("code", """\
import pandas as pd
import torch

import lvlm_probe as lp
from lvlm_probe.organisms import default_items
from lvlm_probe.organisms.validate import planted_cause_benchmark
from lvlm_probe.plotting import plot_cause_bars, plot_confusion, plot_evidence_panel

torch.manual_seed(0)
pd.set_option("display.width", 160)
pd.set_option("display.max_colwidth", 80)"""),
    ("md", """\
## 1. The three steps, one at a time

A diagnosis is three public steps, each taking and returning documented frames; any of them can be run
alone or replaced (your own judge, your own evidence). `default_items` gives an organism's default item set:
half scenes that trigger its planted behaviour, half ordinary captions. `DiagnoseConfig` holds every setting:
here few probe scenes (`n_probe_items`, fresh scenes of the organism's probe world, which travels with its
checkpoint as `model.run_defaults`) and no probe curves."""),
    ("code", """\
model = lp.load("organism:cooccurrence", device="cpu")
items = default_items("organism:cooccurrence", n=24, seed=0)
cfg = lp.DiagnoseConfig(n_probe_items=80, curve_sites=None)

run = lp.generate_and_judge(model, items, cfg, progress=False)        # step 1: generations + judged errors
print(run)
run.errors[["error_id", "kind", "polarity", "claimed", "truth", "text"]].head()"""),
    ("code", """\
ev = lp.collect_evidence(model, items, run, cfg, progress=False)      # step 2: token, data and probe evidence
ev.frame[["error_id", "p_emit", "p_noimg", "pmi_img", "enc_p_true", "proj_p_true", "prior_train", "prior_lift"]].head()"""),
    ("code", """\
diagnoses = lp.cascade(ev.frame, cfg.thresholds)                       # step 3: the cause cascade
diagnoses.stage.value_counts()"""),
    ("md", """\
`lp.diagnose` composes the same steps (and with `out=DIR` writes each step's tables with a hash of its
settings, so a rerun resumes where it stopped). The probe curves over every layer are computed for
`encoder_blind` only."""),
    ("code", """\
reps = {"cooccurrence": lp.diagnose(model, items, cfg, progress=False)}
assert reps["cooccurrence"].diagnoses.stage.tolist() == diagnoses.stage.tolist()
blind = lp.load("organism:encoder_blind", device="cpu")
reps["encoder_blind"] = lp.diagnose(blind, default_items("organism:encoder_blind", n=24, seed=0),
                                    lp.DiagnoseConfig(n_probe_items=80, curve_sites="auto"), progress=False)
for name, rep in reps.items():
    print(name, rep)"""),
    ("code", """\
reps["cooccurrence"].summary()"""),
    ("code", """\
reps["encoder_blind"].summary()"""),
    ("md", """\
`rep.diagnoses` has one row per error: the error (`kind`, `polarity`, `claimed`, `truth`), the verdict
(`level`, `stage`, `confidence`, every cause whose rule holds in `causes`, and the deciding `rule` with its
numbers), a `score_<stage>` per stage, and all evidence columns. The `rule` says which numbers decided:
for a co-occurrence verdict, the training probability of the square given a circle and the image-free
probability of the word next to its probability with the image."""),
    ("code", """\
d = reps["cooccurrence"].diagnoses
d[["item_id", "kind", "polarity", "claimed", "truth", "level", "stage", "confidence", "rule"]]"""),
    ("md", """\
**Self-calibrated evidence.** The same run's correct claims get the same evidence as the errors
(`rep.reference`, the reference set), and each error carries its features as quantiles among them
(`q_pmi`: how much this token used the image compared with the model's correct words; `ref_pmi`: the median
image PMI of the correct claims, in nats). Most invented squares sit at the bottom of the reference (the
image barely moves them: a language prior); some depend on the image as much as correct words do, because the
circle in it calls them up (`context_in_image`: a visual co-occurrence, which the prior rule also accepts)."""),
    ("code", """\
rep = reps["cooccurrence"]
print(len(rep.reference), "correct claims in the reference;", rep.reference.kind.value_counts().to_dict())
rep.evidence[["error_id", "claimed", "pmi_img", "q_pmi", "ref_pmi", "n_reference", "prior_context",
              "context_in_image"]].head()"""),
    ("code", """\
both = pd.concat([r.diagnoses.assign(organism=n) for n, r in reps.items()], ignore_index=True)
fig = plot_cause_bars(both, by="stage")"""),
    ("md", """\
## 2. One error's evidence

`plot_evidence_panel` draws one error: the image with the object's box, the generated text with the
wrong span highlighted, and the per-stage scores with the diagnosed stage highlighted. Here the first
error of `encoder_blind` traced to the encoder (falling back to its first error)."""),
    ("code", """\
rep = reps["encoder_blind"]
ev = rep.evidence.set_index("error_id")
dd = rep.diagnoses
row = dd[dd.stage == "encoder"].iloc[0] if (dd.stage == "encoder").any() else dd.iloc[0]
full = {**ev.loc[row.error_id].to_dict(), **row.to_dict()}
item = next(it for it in rep.items if it.id == row.item_id)
text = rep.generations.set_index("item_id").text[row.item_id]
obj = item.scene.find(full["subject"]) if isinstance(full.get("subject"), str) else []
box = item.scene.objects[obj[0]].box if obj else None
fig = plot_evidence_panel(full, item.image, text=text, box=box)
pd.Series({k: full.get(k) for k in ("claimed", "truth", "enc_p_true", "proj_p_true", "p_emit", "p_noimg",
                                    "pmi_img", "prior_train", "rule")})"""),
    ("md", """\
The probe curves computed during diagnosis (out-of-fold, per site) are in `rep.probe_curves`, the same
frame as `02_probing`'s sweep. `rep.write(out)` writes the tables (and `DiagnosisReport.read(out)` reads them
back); `lp.render_diagnosis(rep, out)` renders the HTML report and its figures without touching this
notebook's matplotlib backend."""),
    ("code", """\
import tempfile
from pathlib import Path

out = Path(tempfile.mkdtemp()) / "diag"
rep.write(out)
path = lp.render_diagnosis(rep, out)
print(path, sorted(p.name for p in (out / "figures").glob("*.png")))"""),
    ("md", """\
## 3. Does the diagnosis find the planted cause?

`planted_cause_benchmark` diagnoses each organism on fresh triggering scenes, keeps the errors that show
the organism's planted pattern and that `clean` does not make on the same scenes, and compares the
diagnosed stage with the planted one. At `n=12` scenes per organism it is a smoke test; the full benchmark
(`python benchmarks/planted_causes.py`, all organisms, `n=40`) reports the balanced accuracy over the zoo."""),
    ("code", """\
bench = planted_cause_benchmark(names=["cooccurrence", "encoder_blind"], n=12, progress=False)
print(f"balanced accuracy (stage): {bench['balanced_accuracy']:.2f}, (level): {bench['level_balanced_accuracy']:.2f}")
bench["per_organism"]"""),
    ("code", """\
fig = plot_confusion(bench["confusion"])"""),
    ("md", """\
## 4. Confirming a cause by intervention

Every verdict above is correlational. `confirm=True` runs, for each diagnosed error, the intervention that
should remove it if the named stage is right (asking the model about the object it named and deleting it if
denied for co-occurrence, PAI for the attribute prior, an early-layer readout for fusion, greedy decoding for a
decoding error, a region restart for long generation, swapping the part back for an encoder or projector cause of
an organism built on `clean`) and records
`confirmed`: True only when the error is gone *and* the claim is still made where it has to be (a question
answered, an object's true colour stated), so a garbled answer confirms nothing. The confidence then comes from
the map that also reads it. `organism:drift` learned captions of at most three objects and drops the middle of longer
lists: describing each quarter of the image in its own short enumeration names them."""),
    ("code", """\
from lvlm_probe.interventions import RegionRestart, decode
from lvlm_probe.tracing.confirm import confirmation_summary

drift = lp.load("organism:drift", device="cpu")
long_items = [it for it in default_items("organism:drift", n=16, seed=1) if it.id.startswith("trig-long")][:4]
rep = lp.diagnose(drift, long_items, lp.DiagnoseConfig(n_probe_items=60, curve_sites=None, confirm=True),
                  progress=False)
batch = drift.prepare_items(long_items[:1])
print("plain:  ", drift.generate(batch, max_new_tokens=32).text[0])
print("restart:", decode(drift, batch, RegionRestart(), max_new_tokens=32).text[0])
confirmation_summary(rep.diagnoses)"""),
    ("md", """\
How each cause is decided, and where the implemented order differs from the design notes, is on the
[cascade page](../docs/cascade.md); the frames and columns are on the [tracing page](../docs/tracing.md); which
intervention fixes which planted cause, with the controls that keep the comparison honest, is on the
[interventions page](../docs/interventions.md)."""),
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
pd.DataFrame({"item_id": batch.item_ids, "true scene": [it.answer for it in items], "generated": gen.text})"""),
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


# ------------------------------------------------------------------------------------------------ 06
DETECTION: Cells = [
    ("md", """\
# 06 · Detection: finding hallucinations without ground truth

The judge needs a scene graph for every item. Here the model's own internal states flag the misaligned claims
instead (`lvlm_probe.detection`, [docs](../docs/detection.md)):

1. **claims** of judged generations (items with scene graphs), with the features read where each claim's first
   token was emitted;
2. a **detector** fitted on some organisms and evaluated on one it never saw, beside output-only baselines;
3. what the features see: the co-occurrence organism names an invented square *confidently*, but its own image
   tokens say there is no square;
4. **tracing without ground truth**: items with no scene graph, flagged claims traced with truth-free evidence;
5. one `diagnose` run over items with and without scene graphs, the detector saved and read back as JSON.

Runs offline on a CPU in about a minute."""),
    ("code", """\
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import lvlm_probe as lp
from lvlm_probe.detection import ClaimSet, HallucinationDetector, collect_claims, detection_sweep, trace_claims
from lvlm_probe.organisms import default_items

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=UserWarning)
pd.set_option("display.width", 140)"""),
    ("md", """\
## 1. Claims and their features

Every object, attribute and relation of a caption (and a question's answer) is a row, right or wrong; the judge
labels it where the item has a scene graph. `resid` holds the residual stream after every LLM layer at the
emitting query; the table holds the scalar features."""),
    ("code", """\
def claims_of(name, n, seed):
    cs = collect_claims(lp.load(f"organism:{name}", device="cpu"), default_items(f"organism:{name}", n=n, seed=seed),
                        progress=False).labelled()
    cs.table["model"] = name
    return cs

others = ("clean", "attribute_prior", "encoder_blind", "projector_bottleneck", "visual_neglect", "drift")
train = ClaimSet.concat([claims_of(n, 32, seed=0) for n in others])
print(train, train.resid.shape)
train.table[["model", "item_id", "kind", "value", "misaligned", "p_emit", "entropy", "pmi_img",
             "internal_confidence", "p_present"]].head(8)"""),
    ("md", """\
## 2. A detector on an organism it never saw

The detector averages two experts, logistic regressions on the scalar features (as quantiles within each model
and as raw values): one reads the output distribution, one the image grounding.
`detection_sweep` scores the held-out organism's claims (another seed: other scenes) with it, with the residual
stream of each layer added, and with single-feature baselines; the bars show 95% bootstrap intervals.

Read the bars against each other: on this organism the output probability does worse than the presence probe
(`p_emit` about 0.83 against `p_present` 1.0), because it names the invented square as confidently as a real
object (section 3). The presence probe separates its errors, and the grounding expert carries it into the
detector. A single regression over all features would lean on
`p_emit`, which the training organisms' errors mostly expose; the residual rows show what adding the residual
stream of another model costs."""),
    ("code", """\
held_out = claims_of("cooccurrence", 48, seed=1)
sweep = detection_sweep(train, held_out, n_boot=200)
labels = [m if pd.isna(l) else f"{m} L{int(l)}" for m, l in zip(sweep.method, sweep.layer)]
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(labels, sweep.auroc, xerr=[sweep.auroc - sweep.ci_low, sweep.ci_high - sweep.auroc], color="#4C72B0")
ax.axvline(0.5, color="grey", lw=0.8, ls=":")
ax.set_xlim(0.3, 1.0)
ax.set_xlabel("AUROC on organism:cooccurrence (held out)")
plt.tight_layout()
sweep[["method", "layer", "auroc", "ci_low", "ci_high", "n", "n_misaligned"]].round(3)"""),
    ("md", """\
## 3. What the features see

The co-occurrence organism was trained on scenes where a circle almost always came with a square; on scenes with
a circle and no square it still names a square, with the output probability of a correct word. The presence
probes, fitted token by token on the model's own image tokens of labelled probe scenes (which class covers each
token, and each attribute's value there), find no square at any token of these images: the invented square gets
a low `p_present`."""),
    ("code", """\
t = held_out.table
obj = t[(t.kind == "object") & (t.task == "caption")]
fig, ax = plt.subplots(figsize=(5, 3.5))
for y, colour, name in [(0, "#4C72B0", "correct"), (1, "#C44E52", "misaligned")]:
    part = obj[obj.misaligned == y]
    ax.scatter(part.p_present, 1 - part.p_emit, s=14, c=colour, alpha=0.7, label=f"{name} ({len(part)})")
ax.set_yscale("log")
ax.set_xlabel("p_present (presence probe on the image tokens)")
ax.set_ylabel("1 - p_emit (output)")
ax.legend(frameon=False)
plt.tight_layout()
obj.groupby("misaligned")[["p_emit", "p_present", "internal_confidence", "pmi_img"]].median().round(3)"""),
    ("md", """\
## 4. Tracing without ground truth

The realistic use: judged claims of a model (here seed-0 scenes of the co-occurrence organism, with the other
organisms) fit the detector once; then the same model's generations on items **without scene graphs** are
scored. `trace_claims` flags claims the detector gives at least 0.5 and runs the cascade on them with the
evidence that needs no true value (training prior, image use, decoding, position). The encoder and projector rules
need the true value, so they are never tried: a flagged claim no other rule explains reads `needs ground truth`."""),
    ("code", """\
model = lp.load("organism:cooccurrence", device="cpu")
unlabelled = [lp.Item(id=it.id, image=it.image, prompt=it.prompt, task=it.task, meta=it.meta)
              for it in default_items("organism:cooccurrence", n=24, seed=2)]
det = HallucinationDetector().fit(ClaimSet.concat([train, claims_of("cooccurrence", 32, seed=0)]))
traced = trace_claims(model, unlabelled, det, progress=False)
print(f"{len(traced)} claims, {int(traced.flagged.sum())} flagged")
traced[traced.flagged].groupby(["kind", "stage"]).size().rename("claims").to_frame()"""),
    ("code", """\
traced[traced.flagged & (traced.kind == "object")][["item_id", "value", "p_misaligned", "stage", "rule"]].head(8)"""),
    ("md", """\
Where no truth-free rule holds, the table says so instead of guessing an encoder or projector cause.
`benchmarks/detection.py` runs the leave-one-organism-out evaluation over the whole zoo; the measured numbers
(pooled AUROC on held-out organisms 0.970 on the recipe v2 zoo, where the presence probe alone gives 0.980) and what
they do not show are in
[the docs](../docs/detection.md).

## 5. One run, with and without ground truth

`diagnose` takes both kinds of items at once: items with a scene graph go through the judge and the full cascade,
the others through the detector. The detector is saved as JSON (no pickle) and read back, as `--detector FILE`
does on the command line; the flagged claims are `report.detected` / `report.flagged()` and a section of the
report."""),
    ("code", """\
import tempfile
from pathlib import Path

tmp = Path(tempfile.mkdtemp())
det.save(tmp / "detector.json")
from dataclasses import replace

judged = [replace(it, id=f"judged-{it.id}") for it in default_items("organism:cooccurrence", n=8, seed=5)]
rep = lp.diagnose(model, unlabelled[:8] + judged, lp.DiagnoseConfig(n_probe_items=60, curve_sites=None),
                  detector=HallucinationDetector.load(tmp / "detector.json"), progress=False)
print(rep)
rep.flagged()[["item_id", "kind", "subject", "value", "p_misaligned", "stage"]].head(6)"""),
]


NOTEBOOKS: dict[str, Cells] = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_probing.ipynb": PROBING,
    "03_attribution.ipynb": ATTRIBUTION,
    "04_diagnosis.ipynb": DIAGNOSIS,
    "05_real_models.ipynb": REAL_MODELS,
    "06_detection.ipynb": DETECTION,
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
