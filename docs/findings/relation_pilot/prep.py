"""Stages 0-1 with position: stage 0 learns per-patch class/colour/size + row/column; stage 1 target adds a fixed
position code (and an object marker). Saves the model state and the codes. Usage: prep.py KIND(rand|ramp) [s0] [s1]"""
import sys, time, torch, numpy as np
from common import *
kind = sys.argv[1]; s0 = int(sys.argv[2]) if len(sys.argv) > 2 else 500; s1 = int(sys.argv[3]) if len(sys.argv) > 3 else 300
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
tag = kind if seed == 0 else f"{kind}_s{seed}"
t0 = time.time()
world = SceneWorld(WorldConfig(), seed=seed)
model, tok, ip = build_organism_model(64, seed)
codes = make_codes(kind, seed=12345 + seed)
stage0(model, ip, world, s0, 64, 3e-3, seed, rowcol=True)
t1 = time.time(); print("stage0 s", round(t1 - t0, 1), flush=True)
stage1(model, tok, ip, world, s1, 64, 3e-3, seed, codes)
scale_image_tokens(model, 40.0)
t2 = time.time(); print("stage1 s", round(t2 - t1, 1), flush=True)
pr = probe_image_tokens(model, ip, world)
print("probe", pr, flush=True)
torch.save({"state": model.state_dict(), "codes": codes, "seconds": t2 - t0, "probe": pr}, f"prep_{tag}.pt")
print("done", round(time.time() - t0, 1))
