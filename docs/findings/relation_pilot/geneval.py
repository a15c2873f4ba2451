"""Generated-text accuracy of a checkpoint directory, as stage2c.py ends (task_items n=1000, eval seeds 1 and 4242)."""
import sys, json, torch
torch.set_num_threads(1)
from lvlm_probe.data.world import SceneWorld, WorldConfig
from lvlm_probe.models.lvlm import load
from lvlm_probe.organisms.check import task_items, answer, score_tasks
lv = load(sys.argv[1])
uw = SceneWorld(WorldConfig(), seed=1)
out = {}
for es in (1, 4242):
    its = task_items(uw, 1000, seed=es * 1000 + 7)
    out[es] = {k: round(v, 3) for k, v in score_tasks(uw, its, answer(lv, its)).items()}
print(json.dumps(out))
