"""Shared pieces of the relation pilot (read-only use of the lvlm_probe package)."""
import math, time, json
import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)

from lvlm_probe.data.world import SceneWorld, WorldConfig
from lvlm_probe.organisms.train import (build_organism_model, pixel_tensor, _render_batch, _cell_labels,
                                        _vision_features, _schedule, _encode_texts, scale_image_tokens,
                                        _tokens_per_image)
from lvlm_probe.models.llava import LLAVA_CHAT_TEMPLATE, LlavaAdapter

D_MODEL = 96
HD = 24


def pos_labels(world, n):
    g = world.config.grid
    r = torch.arange(g * g) // g
    c = torch.arange(g * g) % g
    return r[None].expand(n, -1), c[None].expand(n, -1)


def make_codes(kind, seed=12345, d=D_MODEL, std=0.1):
    """Fixed position codes: rows [4, d], cols [4, d], object marker [d]."""
    gen = torch.Generator().manual_seed(seed)
    m_obj = torch.randn(d, generator=gen) * std
    if kind == "rand":
        R = torch.randn(4, d, generator=gen) * std
        C = torch.randn(4, d, generator=gen) * std
        basis = {"row": R, "col": C}
    elif kind == "ramp":
        ur = torch.randn(d, generator=gen) * std
        uc = torch.randn(d, generator=gen) * std
        ramp = (torch.arange(4).float() - 1.5) / 1.5  # -1 .. 1
        R = ramp[:, None] * ur[None] * 1.5
        C = ramp[:, None] * uc[None] * 1.5
        basis = {"row": ur[None] * 1.5, "col": uc[None] * 1.5}
    else:
        raise ValueError(kind)
    return dict(R=R, C=C, m_obj=m_obj, basis=basis, kind=kind)


def stage0(model, ip, world, steps, bs, lr, seed, rowcol=True, warmup=150):
    cfg = world.config
    vt = model.model.vision_tower
    d = vt.config.hidden_size
    n_cls, n_col, n_siz = len(cfg.classes) + 1, len(cfg.colors), len(cfg.sizes)
    torch.manual_seed(seed + 1)
    head = nn.Linear(d, n_cls + n_col + n_siz + 8)
    opt = torch.optim.AdamW(list(vt.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed + 100)
    ce = nn.CrossEntropyLoss(ignore_index=-100)
    vt.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * _schedule(step, steps, warmup)
        scenes = [world.sample_scene(rng) for _ in range(bs)]
        px = pixel_tensor(_render_batch(world, scenes), ip)
        cls, col, siz = _cell_labels(world, scenes)
        rr, cc = pos_labels(world, bs)
        logits = head(_vision_features(vt, px))
        lc, lo, ls, lr_, lcc = logits.split([n_cls, n_col, n_siz, 4, 4], dim=-1)
        loss = ce(lc.reshape(-1, n_cls), cls.reshape(-1)) + ce(lo.reshape(-1, n_col), col.reshape(-1)) \
            + ce(ls.reshape(-1, n_siz), siz.reshape(-1))
        if rowcol:
            loss = loss + ce(lr_.reshape(-1, 4), rr.reshape(-1)) + ce(lcc.reshape(-1, 4), cc.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"stage0 {step} loss {float(loss):.3f}", flush=True)
    vt.eval()


def targets(emb, vocab, cfg, cls, col, siz, codes, world, marker=True):
    obj = cls < len(cfg.classes)
    ids = lambda names, idx: torch.tensor([vocab[n] for n in names])[idx.clamp(min=0)]  # noqa
    cls_emb = emb[ids(cfg.classes, cls.clamp(max=len(cfg.classes) - 1))]
    t = emb[vocab["image"]].expand(*cls.shape, -1).clone()
    words = cls_emb + emb[ids(cfg.colors, col)] + emb[ids(cfg.sizes, siz)]
    if marker and codes is not None:
        words = words + codes["m_obj"]
    t[obj] = words[obj]
    if codes is not None:
        rr, cc = pos_labels(world, cls.shape[0])
        t = t + codes["R"][rr] + codes["C"][cc]
    return t


def stage1(model, tok, ip, world, steps, bs, lr, seed, codes):
    cfg = world.config
    emb = model.get_input_embeddings().weight.detach()
    vocab = {w: tok.convert_tokens_to_ids(w) for w in [*cfg.classes, *cfg.colors, *cfg.sizes, "image"]}
    proj = model.model.multi_modal_projector
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed + 500)
    vt = model.model.vision_tower
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * _schedule(step, steps, min(150, steps // 4 + 1))
        scenes = [world.sample_scene(rng) for _ in range(bs)]
        with torch.no_grad():
            feats = _vision_features(vt, pixel_tensor(_render_batch(world, scenes), ip))
        cls, col, siz = _cell_labels(world, scenes)
        target = targets(emb, vocab, cfg, cls, col, siz, codes, world)
        loss = ((proj(feats) - target) ** 2).sum(-1).mean() / float(emb.pow(2).sum(-1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"stage1 {step} loss {float(loss):.4f}", flush=True)


@torch.no_grad()
def probe_image_tokens(model, ip, world, seed=777, n=400):
    """Logistic-regression probe of row/column (all patches and object patches) from the image tokens."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(seed)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    px = pixel_tensor(_render_batch(world, scenes), ip)
    toks = model.model.multi_modal_projector(_vision_features(model.model.vision_tower, px))
    cls, col, siz = _cell_labels(world, scenes)
    rr, cc = pos_labels(world, n)
    x = toks.reshape(n, 16, -1)
    res = {}
    ntr = int(n * 0.7)
    for name, y in (("row", rr), ("col", cc)):
        for sub in ("all", "obj"):
            xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
            for b in range(n):
                m = torch.ones(16, dtype=torch.bool) if sub == "all" else cls[b] < len(world.config.classes)
                (xs_tr if b < ntr else xs_te).append(x[b][m]); (ys_tr if b < ntr else ys_te).append(y[b][m])
            clf = LogisticRegression(max_iter=2000).fit(torch.cat(xs_tr).numpy(), torch.cat(ys_tr).numpy())
            res[f"{name}_{sub}"] = float(clf.score(torch.cat(xs_te).numpy(), torch.cat(ys_te).numpy()))
    return res


def balanced_relation_items(world, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    k = 0
    while len(out) < n:
        s = world.sample_scene(rng)
        if len(s.objects) < 2:
            continue
        lab = "yes" if len(out) % 2 == 0 else "no"
        out.append(world.make_item(s, "relation", rng, item_id=f"rel{k}", label=lab))
        k += 1
    return out


def eval_sets(world, seed=9001):
    return {
        "relation": balanced_relation_items(world, 400, seed),
        "color": world.items(200, "attribute", seed=seed + 1, prefix="c", attribute="color"),
        "size": world.items(200, "attribute", seed=seed + 2, prefix="s", attribute="size"),
        "exists": world.items(200, "exists", seed=seed + 3, prefix="e"),
    }


@torch.no_grad()
def evaluate(model, tok, ip, world, sets, bs=100):
    """Teacher-forced first answer token: argmax among the task's answer words."""
    ad = LlavaAdapter(model.config, tok, ip, model)
    n_img = 16
    model.eval()
    cfg = world.config
    choices = {"relation": ["yes", "no"], "exists": ["yes", "no"], "color": list(cfg.colors), "size": list(cfg.sizes)}
    res = {}
    for task, items in sets.items():
        cid = torch.tensor([tok.convert_tokens_to_ids(w) for w in choices[task]])
        correct, yes, greedy = 0, 0, 0
        for k in range(0, len(items), bs):
            ch = items[k:k + bs]
            ids, mask, lab = _encode_texts(tok, ad, LLAVA_CHAT_TEMPLATE, [i.prompt for i in ch], [i.answer for i in ch], n_img)
            px = pixel_tensor([np.asarray(i.image) for i in ch], ip)
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=px).logits
            first = (lab != -100).float().argmax(1)  # first answer token index
            full = logits[torch.arange(len(ch)), first - 1]
            lg = full[:, cid]
            pred = lg.argmax(1)
            gtok = full.argmax(1)
            for j, it in enumerate(ch):
                p = choices[task][int(pred[j])]
                correct += p == it.answer
                yes += p == "yes"
                greedy += int(gtok[j]) == tok.convert_tokens_to_ids(it.answer)
        res[task] = correct / len(items)
        res[task + "_greedy"] = greedy / len(items)
        if task == "relation":
            res["rel_yes_rate"] = yes / len(items)
    model.train()
    return res


def model_mb(model):
    return sum(p.numel() for p in model.parameters()) * 2 / 1e6


LOWFREQ_SLOTS = [11, 23, 10, 22, 9, 21, 8, 20, 7, 19, 6, 18]  # RoPE pairs (i, i+12), lowest frequency first


@torch.no_grad()
def write_copy_head(lm, tok, cfg, codes, a, b, g=1.0):
    """Structured match-and-copy head written into head 0 of layer 0 (docs/organisms.md, "A pilot that learns
    relations"). Returns the basis B [d, K], its dual Dm [K, d], the key index, q, k and the class rows of Dm."""
    att0 = lm.layers[0].self_attn
    E = lm.embed_tokens.weight
    wid = lambda w: tok.convert_tokens_to_ids(w)  # noqa
    feats = {}
    for c in cfg.classes: feats[("cls", c)] = E[wid(c)].clone()
    for c in cfg.colors: feats[("col", c)] = E[wid(c)].clone()
    for s in cfg.sizes: feats[("siz", s)] = E[wid(s)].clone()
    for k, v in enumerate(codes["basis"]["row"]): feats[("row", k)] = v.clone()
    for k, v in enumerate(codes["basis"]["col"]): feats[("colm", k)] = v.clone()
    feats[("mobj", 0)] = codes["m_obj"].clone()
    feats[("img", 0)] = E[wid("image")].clone()
    keys = list(feats)
    B = torch.stack([feats[k] for k in keys], 1)  # d x K
    Dm = torch.linalg.pinv(B)  # K x d, Dm @ B = I
    idx = {k: i for i, k in enumerate(keys)}
    q = torch.zeros(HD, D_MODEL); kk = torch.zeros(HD, D_MODEL); v = torch.zeros(HD, D_MODEL); o = torch.zeros(D_MODEL, HD)
    cls_rows = [Dm[idx[("cls", c)]] for c in cfg.classes]
    for j, c in enumerate(cfg.classes):
        s = LOWFREQ_SLOTS[j]
        q[s] = a * cls_rows[j]; kk[s] = cls_rows[j]
    s = LOWFREQ_SLOTS[len(cfg.classes)]
    q[s] = b * torch.stack(cls_rows).sum(0); kk[s] = Dm[idx[("mobj", 0)]]
    copy = [k for k in keys if k[0] in ("row", "colm", "col", "siz", "mobj")]
    for j, k in enumerate(copy):
        v[j] = Dm[idx[k]]; o[:, j] = g * B[:, idx[k]]
    att0.q_proj.weight[:HD] = q; att0.k_proj.weight[:HD] = kk; att0.v_proj.weight[:HD] = v
    att0.o_proj.weight[:, :HD] = o
    return {"B": B, "Dm": Dm, "idx": idx, "q": q, "k": kk, "cls_rows": cls_rows, "n_copy": len(copy)}
