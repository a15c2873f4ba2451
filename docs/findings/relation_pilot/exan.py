import sys, numpy as np, torch, collections
torch.set_num_threads(1)
from lvlm_probe.data.world import SceneWorld, WorldConfig
from lvlm_probe.models.lvlm import load
from lvlm_probe.organisms.check import answer, read_answer
uw = SceneWorld(WorldConfig(), seed=1)
its = uw.pope_items(100, "random", seed=77) + uw.pope_items(50, "adversarial", seed=78)
m = load(sys.argv[1])
txt = answer(m, its)
c = collections.Counter()
for it, t in zip(its, txt):
    a = read_answer(uw, it, t)
    q = it.prompt.split()[3] if len(it.prompt.split()) > 3 else "?"
    sz = None
    if it.answer == "yes":
        k = it.scene.find(q)
        sz = it.scene.objects[k[0]].attributes["size"] if k else None
    c[(it.answer, a == it.answer, sz, len(it.scene.objects))] += 1
for k in sorted(c, key=str): print(k, c[k])
print(its[0].prompt)
