"""Relation pilot, stage 2 with captions and the existence schedule back in (frozen prior head + aux loss).
Usage: stage2c.py --prep rand --seed 0 --steps 3000 --out NAME"""
import argparse, json, time, os, torch, numpy as np
from common import *
from common import _render_batch, _cell_labels, _vision_features, _schedule, _encode_texts, _tokens_per_image

ap = argparse.ArgumentParser()
ap.add_argument("--prep", default="rand")
ap.add_argument("--steps", type=int, default=3000)
ap.add_argument("--bs", type=int, default=64)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--warmup", type=int, default=50)
ap.add_argument("--mix", default="caption:0.3,relation:0.35,attribute:0.2,exists:0.15")
ap.add_argument("--exists_every", type=int, default=0, help="every k-th step existence-only (0: never)")
ap.add_argument("--a", type=float, default=2.0)
ap.add_argument("--b", type=float, default=5.0)
ap.add_argument("--eval_every", type=int, default=1000)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--aux", type=float, default=1.0)
ap.add_argument("--aux_layer", type=int, default=2)
ap.add_argument("--class_head", type=int, default=0, help="head 1 of layer 0 copies the matched class")
ap.add_argument("--relation_prior", default="", help="A,B,predicate,p")
ap.add_argument("--presence_head", type=float, default=0.0, help="sink weight c of a presence head (head 1)")
ap.add_argument("--presence_scale", type=float, default=1.0)
ap.add_argument("--curriculum", type=int, default=0, help="existence-only steps first, on layers < curr_layers")
ap.add_argument("--curr_layers", type=int, default=1)
ap.add_argument("--img_beta", type=float, default=0.0, help="head 0: weight of an image-ness key (row codes) in RoPE slot 6")
ap.add_argument("--aux_exists", type=float, default=0.0, help="weight of an existence aux loss: the queried class's cell or absent")
ap.add_argument("--out", required=True)
args = ap.parse_args()
print(vars(args), flush=True)

t_start = time.time()
if args.relation_prior:
    _a, _b, _pr, _p = args.relation_prior.split(",")
    world = SceneWorld(WorldConfig(relation_prior=((_a, _b, _pr, float(_p)),)), seed=args.seed)
else:
    world = SceneWorld(WorldConfig(), seed=args.seed)
model, tok, ip = build_organism_model(64, args.seed)
ck = torch.load(f"prep_{args.prep}.pt", weights_only=False)
model.load_state_dict(ck["state"])
codes = ck["codes"]
lm = model.model.language_model
cfg = world.config
att0 = lm.layers[0].self_attn
h = write_copy_head(lm, tok, cfg, codes, args.a, args.b)
B, Dm, idx, q, kk, cls_rows = h["B"], h["Dm"], h["idx"], h["q"], h["k"], h["cls_rows"]
with torch.no_grad():
    if args.img_beta:
        q[6] = args.img_beta * torch.stack(cls_rows).sum(0)
        kk[6] = torch.stack([Dm[idx[("row", r)]] for r in range(4)]).sum(0)
        att0.q_proj.weight[:HD] = q; att0.k_proj.weight[:HD] = kk
    if args.presence_head:
        q1 = q.clone(); k1 = kk.clone()
        s2 = LOWFREQ_SLOTS[len(cfg.classes) + 1]
        q1[s2] = args.presence_head * torch.stack(cls_rows).sum(0); k1[s2] = Dm[idx[("img", 0)]]
        gen_u = torch.Generator().manual_seed(999)
        u = torch.randn(D_MODEL, generator=gen_u) * 0.1
        v1 = torch.zeros(HD, D_MODEL); o1 = torch.zeros(D_MODEL, HD)
        v1[0] = Dm[idx[("mobj", 0)]]; o1[:, 0] = u
        att0.q_proj.weight[HD:2 * HD] = q1 * args.presence_scale; att0.k_proj.weight[HD:2 * HD] = k1
        att0.v_proj.weight[HD:2 * HD] = v1; att0.o_proj.weight[:, HD:2 * HD] = o1
    if args.class_head:
        v1 = torch.zeros(HD, D_MODEL); o1 = torch.zeros(D_MODEL, HD)
        for j, c in enumerate(cfg.classes):
            v1[j] = Dm[idx[("cls", c)]]; o1[:, j] = B[:, idx[("cls", c)]]
        att0.q_proj.weight[HD:2 * HD] = q; att0.k_proj.weight[HD:2 * HD] = kk
        att0.v_proj.weight[HD:2 * HD] = v1; att0.o_proj.weight[:, HD:2 * HD] = o1
NH = 2 if (args.class_head or args.presence_head) else 1
snap = {n: p.detach().clone() for n, p in att0.named_parameters()}

sets = eval_sets(world, seed=9001)
if args.presence_head:
    with torch.no_grad():
        its = sets["exists"][:120]
        ad0 = LlavaAdapter(model.config, tok, ip, model)
        ids, mask, lab = _encode_texts(tok, ad0, LLAVA_CHAT_TEMPLATE, [i.prompt for i in its], [i.answer for i in its], 16)
        px = pixel_tensor([np.asarray(i.image) for i in its], ip)
        model.set_attn_implementation("eager")
        outd = model(input_ids=ids, attention_mask=mask, pixel_values=px, output_attentions=True)
        model.set_attn_implementation("sdpa")
        A1 = outd.attentions[0][:, 1]
        pres, absn = [], []
        for b, it in enumerate(its):
            toks = tok.convert_ids_to_tokens(ids[b].tolist())
            cls_w = it.prompt.split()[3]
            t = toks.index(cls_w, 18)
            objcells = set()
            for o_ in it.scene.objects:
                cx, cy = o_.center; objcells.add(int(cy // world.cell) * cfg.grid + int(cx // world.cell))
            m = float(sum(A1[b, t, 2 + k] for k in objcells))
            (pres if it.answer == "yes" else absn).append(m)
        print("presence head: object-token mass present %.3f absent %.3f" % (np.mean(pres), np.mean(absn)), flush=True)
mix = [(t.split(":")[0], float(t.split(":")[1])) for t in args.mix.split(",")]
tasks, w = zip(*mix); w = np.array(w) / sum(w)
iters = {t: world.iter_items(10 ** 9, t, seed=400 + args.seed * 10 + i) for i, t in enumerate(tasks)}
ex_iter = world.iter_items(10 ** 9, "exists", seed=499 + args.seed * 10)
rng = np.random.default_rng(args.seed + 300)
for p in model.model.vision_tower.parameters(): p.requires_grad_(False)
lm.embed_tokens.weight.requires_grad_(False)
for p in model.model.multi_modal_projector.parameters(): p.requires_grad_(False)
torch.manual_seed(args.seed + 77)
aux_head = torch.nn.Linear(D_MODEL, 16)
ex_head = torch.nn.Linear(D_MODEL, 17)
params = [p for p in model.parameters() if p.requires_grad] + list(aux_head.parameters()) + (list(ex_head.parameters()) if args.aux_exists else [])
opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
ad = LlavaAdapter(model.config, tok, ip, model)
model.train(); model.model.vision_tower.eval()
hist = []
t_train = 0.0


def aux_loss(hs, lab, items):
    rel = [b for b, it in enumerate(items) if it.task == "relation"]
    if not rel:
        return None
    first = (lab != -100).float().argmax(1)
    lg = aux_head(hs[torch.tensor(rel), first[rel] - 1]).view(len(rel), 4, 4)
    tgt = []
    for b in rel:
        it = items[b]; row = []
        for nm in (it.meta["subject"], it.meta["object"]):
            ob = it.scene.objects[it.scene.names.index(nm)]
            row += [int(ob.center[1] // world.cell), int(ob.center[0] // world.cell)]
        tgt.append(row)
    return torch.nn.functional.cross_entropy(lg.reshape(-1, 4), torch.tensor(tgt).reshape(-1))


for step in range(args.steps):
    t0 = time.time()
    if step < args.curriculum:
        fac = _schedule(step, args.curriculum, args.warmup)
    else:
        fac = _schedule(step - args.curriculum, args.steps - args.curriculum, args.warmup)
    for gr in opt.param_groups: gr["lr"] = args.lr * fac
    if step < args.curriculum:
        items = [next(ex_iter) for _ in range(args.bs)]
    elif args.exists_every and step % args.exists_every == args.exists_every - 1:
        items = [next(ex_iter) for _ in range(args.bs)]
    else:
        names = rng.choice(len(tasks), size=args.bs, p=w)
        items = [next(iters[tasks[k]]) for k in names]
    px = pixel_tensor([np.asarray(i.image) for i in items], ip)
    opt.zero_grad(set_to_none=True)
    parts = [[k for k, it in enumerate(items) if (it.task == "caption") == cap] for cap in (False, True)]
    enc = [(ix, _encode_texts(tok, ad, LLAVA_CHAT_TEMPLATE, [items[k].prompt for k in ix], [items[k].answer for k in ix], 16)) for ix in parts if ix]
    weight = [float((e[2] != -100).sum()) for _, e in enc]
    total = 0.0
    for (ix, (ids, mask, lab)), wt in zip(enc, weight):
        out_ = model(input_ids=ids, attention_mask=mask, pixel_values=px[ix], labels=lab, output_hidden_states=True)
        loss = out_.loss * (wt / sum(weight))
        al = aux_loss(out_.hidden_states[args.aux_layer], lab, [items[k] for k in ix])
        if al is not None:
            loss = loss + args.aux * al * len([k for k in ix if items[k].task == "relation"]) / len(items)
        if args.aux_exists:
            exi = [b for b, k in enumerate(ix) if items[k].task == "exists"]
            if exi:
                first = (lab != -100).float().argmax(1)
                hsel = out_.hidden_states[args.aux_layer][torch.tensor(exi), first[exi] - 1]
                tgt = []
                for b in exi:
                    it = items[ix[b]]
                    cls_q = it.prompt.split()[3]
                    ks = it.scene.find(cls_q)
                    if ks:
                        cx, cy = it.scene.objects[ks[0]].center
                        tgt.append(int(cy // world.cell) * 4 + int(cx // world.cell))
                    else:
                        tgt.append(16)
                el = torch.nn.functional.cross_entropy(ex_head(hsel), torch.tensor(tgt))
                loss = loss + args.aux_exists * el * len(exi) / len(items)
        loss.backward(); total += float(loss.detach())
    if step < args.curriculum:
        low = {id(p) for l in lm.layers[:args.curr_layers] for p in l.parameters()} | {id(p) for p in ex_head.parameters()}
        for p_ in params:
            if id(p_) not in low:
                p_.grad = None
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    with torch.no_grad():
        for nm in ("q_proj", "k_proj", "v_proj"):
            getattr(att0, nm).weight[:NH * HD] = snap[f"{nm}.weight"][:NH * HD]
        att0.o_proj.weight[:, :NH * HD] = snap["o_proj.weight"][:, :NH * HD]
    t_train += time.time() - t0
    if step % 100 == 0:
        print(f"step {step} loss {total:.3f} t {t_train:.0f}s", flush=True)
    if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
        r = evaluate(model, tok, ip, world, sets)
        model.model.vision_tower.eval()
        hist.append({"step": step + 1, **r, "train_s": t_train})
        print("eval", hist[-1], flush=True)

# full generation eval through the package
import tempfile
from lvlm_probe.models.lvlm import load
from lvlm_probe.organisms.check import task_items, answer, score_tasks
model.eval()
d = f"ckpt_{args.out}"
os.makedirs(d, exist_ok=True)
for part in (model, tok, ip): part.save_pretrained(d)
lv = load(d)
full = {}
uw = SceneWorld(WorldConfig(), seed=1)
for es in (1, 4242):
    its = task_items(uw, 1000, seed=es * 1000 + 7)
    full[es] = score_tasks(uw, its, answer(lv, its))
    print("generated eval seed", es, full[es], flush=True)
out = {"args": vars(args), "hist": hist, "full": full, "train_s": t_train, "mb_fp16": model_mb(model), "wall_s": time.time() - t_start}
json.dump(out, open(f"res_{args.out}.json", "w"), indent=1)
print("done", round(time.time() - t_start), flush=True)
