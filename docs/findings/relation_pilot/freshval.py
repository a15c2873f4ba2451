"""Generated-text accuracy of a checkpoint directory on fresh eval seeds, with existence split by POPE sampling.

Usage: freshval.py CKPT_DIR SEED [SEED ...]. Per seed: ``task_items`` (n = 1,000, as ``organisms check`` draws
them) scored by ``score_tasks``, plus 300 POPE questions (50 scenes) of each strategy (random, popular, adversarial) read by
``read_answer``. Prints one JSON object {seed: {task: accuracy}}."""
import sys, json, torch
torch.set_num_threads(1)
from lvlm_probe.data.world import SceneWorld, WorldConfig
from lvlm_probe.models.lvlm import load
from lvlm_probe.organisms.check import task_items, answer, score_tasks, read_answer
lv = load(sys.argv[1])
uw = SceneWorld(WorldConfig(), seed=1)
out = {}
for es in map(int, sys.argv[2:]):
    its = task_items(uw, 1000, seed=es * 1000 + 7)
    row = {k: round(v, 3) for k, v in score_tasks(uw, its, answer(lv, its)).items()}
    for k, strategy in enumerate(("random", "popular", "adversarial")):
        pope = uw.pope_items(50, strategy, seed=es * 1000 + 11 + k)
        said = [read_answer(uw, it, t) for it, t in zip(pope, answer(lv, pope))]
        row[f"pope_{strategy}"] = round(sum(a == it.answer for a, it in zip(said, pope)) / len(pope), 3)
    out[es] = row
print(json.dumps(out))
