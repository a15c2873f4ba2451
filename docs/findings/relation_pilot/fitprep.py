"""How well stages 0-1 fit small objects: for a prep_*.pt, per object size, the share of object patches whose image
token has its largest class coordinate (dual basis of the class/colour/size words, codes, marker, `image`) on the
right class, a logistic probe of the vision features (half the patches to fit, half to score) and the colour
coordinate's argmax. Usage: fitprep.py prep_X.pt [seed]"""
import sys, numpy as np, torch
from common import *
from lvlm_probe.organisms.train import _vision_features, _render_batch, _cell_labels
from sklearn.linear_model import LogisticRegression
p = torch.load(sys.argv[1], weights_only=False); seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
model, tok, ip = build_organism_model(64, seed); model.load_state_dict(p["state"]); model.eval()
codes = p["codes"]
w = SceneWorld(WorldConfig(), seed=1); cfg = w.config
rng = np.random.default_rng(5)
scenes = [w.sample_scene(rng) for _ in range(1200)]
with torch.no_grad():
    f = _vision_features(model.model.vision_tower, pixel_tensor(_render_batch(w, scenes), ip))
    x = model.model.multi_modal_projector(f)
cls, col, siz = _cell_labels(w, scenes)
emb = model.model.language_model.embed_tokens.weight.detach()
word = lambda s: emb[tok.convert_tokens_to_ids(s)]
B = torch.stack([word(c) for c in cfg.classes] + [word(c) for c in cfg.colors] + [word(s) for s in cfg.sizes]
  + [codes['R'][r] for r in range(4)] + [codes['C'][c] for c in range(4)] + [codes['m_obj'], word('image')], 1)
co = x @ torch.linalg.pinv(B).T
nc = len(cfg.classes); c = co[..., :nc]; obj = cls < nc
out = {}
for s in (0, 1):
    sel = obj & (siz == s); cc = c[sel]; y = cls[sel]
    X = f[sel].numpy(); yy = y.numpy(); h = len(yy) // 2
    vp = LogisticRegression(max_iter=3000).fit(X[:h], yy[:h]).score(X[h:], yy[h:])
    colacc = float((co[..., nc:nc+6][sel].argmax(1) == col[sel]).float().mean())
    print(cfg.sizes[s], 'class coord argmax %.3f' % float((cc.argmax(1) == y).float().mean()), 'vision probe %.3f' % vp, 'colour coord %.3f' % colacc)
