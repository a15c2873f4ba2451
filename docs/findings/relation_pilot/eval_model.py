"""Re-evaluate saved pilot models on held-out eval seeds. Usage: eval_model.py model_A.pt [model_B.pt ...]"""
import sys, json, torch
from common import *
world = SceneWorld(WorldConfig(), seed=0)
model, tok, ip = build_organism_model(64, 0)
sets = {s: eval_sets(world, seed=s) for s in (9001, 31337)}
for path in sys.argv[1:]:
    model.load_state_dict(torch.load(path, weights_only=False))
    for s, st in sets.items():
        r = evaluate(model, tok, ip, world, st)
        print(path, "evalseed", s, json.dumps({k: round(v, 4) for k, v in r.items()}), flush=True)
