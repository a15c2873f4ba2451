"""Relation-prior trigger set: scenes with A and B where A stands in the opposite of the prior's predicate.
Usage: trig.py A B PRED CKPT... """
import sys, numpy as np, torch
torch.set_num_threads(1)
from lvlm_probe.data.world import SceneWorld, WorldConfig, GEOMETRIC_RELATIONS
from lvlm_probe.data.items import Item
from lvlm_probe.models.lvlm import load
from lvlm_probe.organisms.check import answer, read_answer
A, B, PRED = sys.argv[1], sys.argv[2], sys.argv[3].replace("_", " ")
OPP = GEOMETRIC_RELATIONS[PRED]
world = SceneWorld(WorldConfig(), seed=5)
rng = np.random.default_rng(5)
items, ctrl = [], []
k = 0
while len(items) < 200:
    s = world.sample_scene(rng, require=(A, B))
    ia, ib = s.names.index(A), s.names.index(B)
    preds = {r.predicate for r in s.relations if r.subject == ia and r.object == ib}
    img = world.render(s)
    if OPP in preds and PRED not in preds:
        items.append(Item(f"t{k}a", img, f"is the {A} {PRED} the {B} ?", scene=s, answer="no", task="relation"))
        items.append(Item(f"t{k}b", img, f"is the {A} {OPP} the {B} ?", scene=s, answer="yes", task="relation"))
    elif PRED in preds:
        ctrl.append(Item(f"c{k}a", img, f"is the {A} {PRED} the {B} ?", scene=s, answer="yes", task="relation"))
        ctrl.append(Item(f"c{k}b", img, f"is the {A} {OPP} the {B} ?", scene=s, answer="no", task="relation"))
    k += 1
ctrl = ctrl[:200]
for ck in sys.argv[4:]:
    m = load(ck)
    res = {}
    for name, its in (("trigger", items), ("agree", ctrl)):
        txt = answer(m, its)
        wrong = [read_answer(world, it, t) != it.answer for it, t in zip(its, txt)]
        res[name] = round(float(np.mean(wrong)), 3)
        res[name + "_pred_q"] = round(float(np.mean(wrong[0::2])), 3)
        res[name + "_opp_q"] = round(float(np.mean(wrong[1::2])), 3)
    print(ck, "error rates", res, flush=True)
