"""Head-0 attention of a recipe-v2 checkpoint under other copy-head weights (a, b, image-ness beta in RoPE slot 6).
Needs the branch recipe-v2 on PYTHONPATH (position_codes, build_copy_head)."""
import sys, numpy as np, torch
torch.set_num_threads(1)
from transformers import LlavaForConditionalGeneration, AutoTokenizer, CLIPImageProcessor
from lvlm_probe.data.world import SceneWorld, WorldConfig
from lvlm_probe.models.llava import LLAVA_CHAT_TEMPLATE, LlavaAdapter
import lvlm_probe.organisms.train as T
import lvlm_probe.organisms.zoo as Z
d = sys.argv[1]
model = LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
tok, ip = AutoTokenizer.from_pretrained(d), CLIPImageProcessor.from_pretrained(d)
model.set_attn_implementation("eager")
w = SceneWorld(WorldConfig(), seed=1)
its = w.pope_items(60, "random", seed=77)
ad = LlavaAdapter(model.config, tok, ip, model)
ids, mask, lab = T._encode_texts(tok, ad, LLAVA_CHAT_TEMPLATE, [i.prompt for i in its], [i.answer for i in its], 16)
px = pixel_tensor = T.pixel_tensor([np.asarray(i.image) for i in its], ip)
img = (ids[0] == ad.image_token_id).nonzero()[:, 0]
codes = T.position_codes(w.config.grid, 96, 0)
import itertools
cfg = w.config
for a, b, beta in [(2, 5, 0), (2, 5, 1), (2, 5, 2), (3, 5, 2), (3, 5, 4), (4, 5, 4), (4, 5, 6), (3, 3, 5), (4, 3, 7), (3, 0, 7)]:
    T.COPY_HEAD_MATCH, T.COPY_HEAD_MARKER = a, b
    head = T.build_copy_head(model, tok, cfg, codes)
    lm = model.model.language_model
    emb = lm.embed_tokens.weight.detach()
    word = lambda x: emb[tok.convert_tokens_to_ids(x)]
    keys = [("class", c) for c in cfg.classes] + [("color", c) for c in cfg.colors] + [("size", z) for z in cfg.sizes] + [("row", r) for r in range(cfg.grid)] + [("col", c) for c in range(cfg.grid)] + [("marker", 0), ("image", 0)]
    vec = {"row": lambda r: codes["row"][r], "col": lambda c: codes["col"][c], "marker": lambda _: codes["marker"], "image": lambda _: word("image")}
    basis = torch.stack([vec[k](v) if k in vec else word(v) for k, v in keys], 1)
    dual = torch.linalg.pinv(basis)
    at = {k: i for i, k in enumerate(keys)}
    cls_rows = torch.stack([dual[at["class", c]] for c in cfg.classes]).sum(0)
    slot = 6
    with torch.no_grad():
        head["q"][slot] = beta * cls_rows
        head["k"][slot] = torch.stack([dual[at["row", r]] for r in range(cfg.grid)]).sum(0)
        T._write_copy_head(lm.layers[0].self_attn, head)
    with torch.no_grad():
        out = model.model.language_model.layers[0]  # noqa
        o = model(input_ids=ids, attention_mask=mask, pixel_values=px, output_attentions=True)
    A = o.attentions[0][:, 0]
    res = {"small": [], "large": [], "absent": []}
    for k, it in enumerate(its):
        cls = it.prompt.split()[3]
        t = ids[k].tolist().index(tok.convert_tokens_to_ids(cls), int(img[-1]) + 1)
        cells = {ob.name: int(ob.center[1] // w.cell) * w.config.grid + int(ob.center[0] // w.cell) for ob in it.scene.objects}
        att = A[k, t, img]
        if cls in cells:
            res[it.scene.objects[it.scene.names.index(cls)].attributes["size"]].append(float(att[cells[cls]]))
        else:
            res["absent"].append(float(max(att[c] for c in cells.values())))
        res.setdefault("self", []).append(float(A[k, t, t]))
    print(a, b, beta, {k: (round(float(np.mean(v)), 3), round(float(np.percentile(v, 10)), 3)) for k, v in res.items()}, flush=True)
