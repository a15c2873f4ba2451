import os, torch, numpy as np
torch.set_num_threads(1)
from lvlm_probe.data.world import SceneWorld, WorldConfig
from lvlm_probe.organisms.train import build_organism_model, _encode_texts, _tokens_per_image
from lvlm_probe.models.llava import LLAVA_CHAT_TEMPLATE, LlavaAdapter
w = SceneWorld(WorldConfig(), seed=0)
model, tok, ip = build_organism_model(64, 0)
ad = LlavaAdapter(model.config, tok, ip, model)
n = _tokens_per_image(ad, w)
its = w.items(3, "relation", seed=1) + w.items(2, "attribute", seed=2)+ w.items(2, "exists", seed=2)
ids, m, lab = _encode_texts(tok, ad, LLAVA_CHAT_TEMPLATE, [i.prompt for i in its], [i.answer for i in its], n)
for r in ids: print(tok.convert_ids_to_tokens(r.tolist()))
print(n, len(tok), model.config.text_config)
print(sum(p.numel() for p in model.parameters()))
