"""Linear probes on relation prompts: subject/object row & column at the subject/object word and at the answer
position, per layer. Usage: probe_words.py model_X.pt"""
import sys, torch, numpy as np
from common import *
from common import _encode_texts
from sklearn.linear_model import LogisticRegression
world = SceneWorld(WorldConfig(), seed=0)
model, tok, ip = build_organism_model(64, 0)
model.load_state_dict(torch.load(sys.argv[1], weights_only=False)); model.eval()
items = balanced_relation_items(world, 800, 4242)
ad = LlavaAdapter(model.config, tok, ip, model)
g, cell = world.config.grid, world.cell
H = {}
with torch.no_grad():
    for k in range(0, 800, 100):
        ch = items[k:k+100]
        ids, mask, lab = _encode_texts(tok, ad, LLAVA_CHAT_TEMPLATE, [i.prompt for i in ch], [i.answer for i in ch], 16)
        px = pixel_tensor([np.asarray(i.image) for i in ch], ip)
        hs = model(input_ids=ids, attention_mask=mask, pixel_values=px, output_hidden_states=True).hidden_states
        first = (lab != -100).float().argmax(1)
        for b, it in enumerate(ch):
            toks = tok.convert_ids_to_tokens(ids[b].tolist())
            s, o = it.meta["subject"], it.meta["object"]
            ts = toks.index(s, 18); to = len(toks) - 1 - toks[::-1].index(o)
            pos = {}
            for nm in (s, o):
                ob = it.scene.objects[it.scene.names.index(nm)]
                pos[nm] = (int(ob.center[1] // cell), int(ob.center[0] // cell))
            for l, h in enumerate(hs):
                for where, t in (("subj", ts), ("obj", to), ("ans", int(first[b]) - 1)):
                    H.setdefault((l, where), []).append(h[b, t].numpy())
            H.setdefault("y", []).append((pos[s][0], pos[s][1], pos[o][0], pos[o][1], it.answer == "yes"))
y = np.array(H["y"]).astype(int)
def pr(X, yy):
    c = LogisticRegression(max_iter=3000).fit(X[:600], yy[:600]); return round(c.score(X[600:], yy[600:]), 2)
for l in range(len(hs)):
    row = []
    for where in ("subj", "obj", "ans"):
        X = np.array(H[(l, where)])
        row.append(f"{where}: sR {pr(X, y[:,0])} sC {pr(X, y[:,1])} oR {pr(X, y[:,2])} oC {pr(X, y[:,3])}" + (f" ans {pr(X, y[:,4])}" if where == "ans" else ""))
    print("layer", l, " | ".join(row), flush=True)
