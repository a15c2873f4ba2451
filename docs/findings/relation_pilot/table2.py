"""Summary of the stage2c runs (res_*.json with a "full" entry): generated accuracy per task on two eval seeds."""
import glob, json
for f in sorted(glob.glob("res_*.json")):
    r = json.load(open(f))
    if "full" not in r:
        continue
    a = r["args"]
    full = r["full"]
    cells = " ".join(k + "=" + "/".join("%.3f" % full[s][k] for s in full) for k in full["1"])
    print(f"{a['out']:8s} seed={a['seed']} steps={a['steps']} mix={a['mix']} every={a['exists_every']} "
          f"curr={a.get('curriculum', 0)} class={a.get('class_head', 0)} presence={a.get('presence_head', 0)} "
          f"prior={a.get('relation_prior', '')} | {cells} | train {r['train_s']:.0f}s")
