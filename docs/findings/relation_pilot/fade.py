# Pilot script (session 19), run from /work/scratch/v2ck2 with the branch recipe-v2 on PYTHONPATH.
"""Attribute prior under weak evidence: off-prior diamonds whose colour is blended toward grey by f; share of
'what color is the diamond ?' answered with the prior colour (yellow), attribute_prior (v2) vs clean (v2)."""
import sys, torch, numpy as np, collections
torch.set_num_threads(1)
from PIL import Image, ImageDraw
from lvlm_probe.models.lvlm import load
from lvlm_probe.organisms import zoo as Z
from lvlm_probe.organisms.check import trigger_set, answer, read_answer
from lvlm_probe.data.world import SceneWorld, COLORS, BACKGROUND, draw_shape
from lvlm_probe.data.items import Item
sp = Z.get_spec("attribute_prior"); w = SceneWorld(sp.world, seed=1)
items, _ = trigger_set("attribute_prior", w, 200, 4321)
qa = [it for it in items if it.task == "attribute"]
models = {n: load(f"/work/scratch/v2ck2/{n}") for n in ("clean", "attribute_prior")}
grey = np.array([128, 128, 128])
for f in map(float, sys.argv[1:]):
    its = []
    for it in qa:
        s = it.scene; size = w.config.image_size
        im = Image.new("RGB", (size, size), BACKGROUND); d = ImageDraw.Draw(im)
        for o in s.objects:
            c = np.array(COLORS[o.attributes["color"]])
            if o.name == "diamond":
                c = (1 - f) * c + f * grey
            draw_shape(d, o.name, o.box, tuple(int(x) for x in c))
        its.append(Item(it.id, im, it.prompt, scene=s, answer=it.answer, task=it.task, meta=it.meta))
    row = {}
    for n, m in models.items():
        said = [read_answer(w, it, t) for it, t in zip(its, answer(m, its))]
        row[n] = (round(np.mean([x == "yellow" for x in said]), 3), round(np.mean([x == it.answer for x, it in zip(said, its)]), 3))
    print(f, "yellow rate / accuracy:", row, flush=True)
