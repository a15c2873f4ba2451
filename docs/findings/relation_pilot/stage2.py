"""Stage 2 of the relation pilot: optional structured match-and-copy head in decoder layer 0, then QA training.
Usage: stage2.py --prep rand --prior head --steps 400 --out NAME"""
import argparse, json, time, torch, numpy as np
from common import *
from common import _render_batch, _cell_labels, _vision_features, _schedule, _encode_texts, _tokens_per_image

ap = argparse.ArgumentParser()
ap.add_argument("--prep", default="rand")
ap.add_argument("--prior", default="head", choices=["none", "head"])
ap.add_argument("--steps", type=int, default=400)
ap.add_argument("--bs", type=int, default=64)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--warmup", type=int, default=50)
ap.add_argument("--mix", default="relation:0.5,exists:0.2,attribute:0.3")
ap.add_argument("--freeze", default="none", choices=["none", "head", "head_emb", "head_emb_proj"])
ap.add_argument("--a", type=float, default=1.5)
ap.add_argument("--b", type=float, default=3.0)
ap.add_argument("--g", type=float, default=1.0)
ap.add_argument("--other_scale", type=float, default=1.0, help="scale of layer-0 o_proj columns of the other heads")
ap.add_argument("--eval_every", type=int, default=200)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--aux", type=float, default=0.0, help="weight of an auxiliary subject/object row+col loss at the answer position")
ap.add_argument("--aux_layer", type=int, default=2)
ap.add_argument("--init_from", default="")
ap.add_argument("--out", required=True)
args = ap.parse_args()
print(vars(args), flush=True)

t_start = time.time()
world = SceneWorld(WorldConfig(), seed=0)
model, tok, ip = build_organism_model(64, 0)
ck = torch.load(f"prep_{args.prep}.pt", weights_only=False)
model.load_state_dict(ck["state"])
codes = ck["codes"]
lm = model.model.language_model
cfg = world.config
att0 = lm.layers[0].self_attn

# ---- structured match-and-copy head (head 0 of layer 0) ----
if args.prior == "head":
    h = write_copy_head(lm, tok, cfg, codes, args.a, args.b, args.g)
    with torch.no_grad():
        att0.o_proj.weight[:, HD:] *= args.other_scale
    print("prior: copy features", h["n_copy"], "basis", h["B"].shape, flush=True)
prior_snapshot = {n: p.detach().clone() for n, p in att0.named_parameters()}

# ---- diagnostic: head-0 attention of the subject word on its object's image token ----
@torch.no_grad()
def diag(items):
    ad = LlavaAdapter(model.config, tok, ip, model)
    ids, mask, lab = _encode_texts(tok, ad, LLAVA_CHAT_TEMPLATE, [i.prompt for i in items], [i.answer for i in items], 16)
    px = pixel_tensor([np.asarray(i.image) for i in items], ip)
    model.set_attn_implementation("eager")
    out = model(input_ids=ids, attention_mask=mask, pixel_values=px, output_attentions=True)
    model.set_attn_implementation("sdpa")
    A = out.attentions[0][:, 0]  # head 0 of layer 0: B x T x T
    g = cfg.grid; cell = world.cell
    mass = []
    for b, it in enumerate(items):
        toks = tok.convert_ids_to_tokens(ids[b].tolist())
        subj = it.meta["subject"]; t = toks.index(subj, 18)
        o = it.scene.objects[it.scene.names.index(subj)]
        cx, cy = o.center
        k = int(cy // cell) * g + int(cx // cell)
        mass.append(float(A[b, t, 2 + k]))
    return float(np.mean(mass))

sets = eval_sets(world, seed=9001)
res0 = evaluate(model, tok, ip, world, sets)
d0 = diag(sets["relation"][:100])
print("init eval", res0, "head0 subject->object-token attention", round(d0, 3), flush=True)

# ---- training ----
mix = [(t.split(":")[0], float(t.split(":")[1])) for t in args.mix.split(",")]
tasks, w = zip(*mix); w = np.array(w) / sum(w)
iters = {t: world.iter_items(10 ** 9, t, seed=400 + args.seed * 10 + i) for i, t in enumerate(tasks)}
rng = np.random.default_rng(args.seed + 300)
for p in model.model.vision_tower.parameters(): p.requires_grad_(False)
frozen = set()
if args.freeze in ("head_emb", "head_emb_proj"):
    lm.embed_tokens.weight.requires_grad_(False)
if args.freeze == "head_emb_proj":
    for p in model.model.multi_modal_projector.parameters(): p.requires_grad_(False)
aux_head = torch.nn.Linear(D_MODEL, 16)
params = [p for p in model.parameters() if p.requires_grad] + (list(aux_head.parameters()) if args.aux > 0 else [])
opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
ad = LlavaAdapter(model.config, tok, ip, model)
model.train()
hist = [{"step": 0, **res0, "diag": d0}]
t_train = 0.0
for step in range(args.steps):
    t0 = time.time()
    for gr in opt.param_groups: gr["lr"] = args.lr * _schedule(step, args.steps, args.warmup)
    names = rng.choice(len(tasks), size=args.bs, p=w)
    items = [next(iters[tasks[k]]) for k in names]
    ids, mask, lab = _encode_texts(tok, ad, LLAVA_CHAT_TEMPLATE, [i.prompt for i in items], [i.answer for i in items], 16)
    px = pixel_tensor([np.asarray(i.image) for i in items], ip)
    out_ = model(input_ids=ids, attention_mask=mask, pixel_values=px, labels=lab, output_hidden_states=args.aux > 0)
    loss = out_.loss
    if args.aux > 0:
        rel = [b for b, it in enumerate(items) if it.task == "relation"]
        if rel:
            first = (lab != -100).float().argmax(1)
            hsel = out_.hidden_states[args.aux_layer][torch.tensor(rel), first[rel] - 1]
            lg = aux_head(hsel).view(len(rel), 4, 4)
            tgt = []
            for b in rel:
                it = items[b]
                row = []
                for nm in (it.meta["subject"], it.meta["object"]):
                    ob = it.scene.objects[it.scene.names.index(nm)]
                    row += [int(ob.center[1] // world.cell), int(ob.center[0] // world.cell)]
                tgt.append(row)
            loss = loss + args.aux * torch.nn.functional.cross_entropy(lg.reshape(-1, 4), torch.tensor(tgt).reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if args.freeze != "none" and args.prior == "head":
        with torch.no_grad():
            for nm in ("q_proj", "k_proj", "v_proj"):
                getattr(att0, nm).weight[:HD] = prior_snapshot[f"{nm}.weight"][:HD]
            att0.o_proj.weight[:, :HD] = prior_snapshot["o_proj.weight"][:, :HD]
    t_train += time.time() - t0
    if step % 50 == 0:
        print(f"step {step} loss {float(loss.detach()):.3f} t {t_train:.0f}s", flush=True)
    if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
        r = evaluate(model, tok, ip, world, sets)
        dd = diag(sets["relation"][:100])
        hist.append({"step": step + 1, **r, "diag": dd, "train_s": t_train})
        print("eval", hist[-1], flush=True)
out = {"args": vars(args), "prep_seconds": ck["seconds"], "probe": ck["probe"], "hist": hist,
       "train_s": t_train, "mb_fp16": model_mb(model), "wall_s": time.time() - t_start}
json.dump(out, open(f"res_{args.out}.json", "w"), indent=1)
torch.save(model.state_dict(), f"model_{args.out}.pt")
print("final", json.dumps(out["hist"][-1]), "MB", out["mb_fp16"], flush=True)
