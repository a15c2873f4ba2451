"""Neglect trained into the attention (session 25 pilot, not shipped): `clean`'s recipe (matched images) whose
stage 2 adds LAM times the mean attention mass that text queries after the image put on image keys, over every
head but the copy head (head 0 of layer 0). Registered in-process as `visual_neglect@attnLAM` (visual neglect's
scenes and planted pattern), so the card and matrix code run on it unchanged.

  python attention_penalty.py train LAM OUT        train it (shipped recipe and seed 0, 1 thread; about 8 min)
  python attention_penalty.py card LAM OUT         its card measures (check_organism, seed 1, n 200)
  python attention_penalty.py matrix LAM OUT SEED  its matrix row: PAI (room, alpha 0.5, alpha 1), early readout
  python attention_penalty.py mass CKPT            image-attention mass per layer and head (32 caption prompts)
  python attention_penalty.py generated NAME       the same for the tokens of organism:NAME's own greedy captions

CKPT is a checkpoint directory or organism:NAME.
"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

import lvlm_probe.organisms as O
import lvlm_probe.organisms.train as T
import lvlm_probe.organisms.zoo as Z
from _register import as_neglect_variant


def register(lam: float, out: Path | None = None) -> str:
    """``visual_neglect@attnLAM``: clean's training spec under visual neglect's scenes and pattern."""
    neglect = Z.ZOO["visual_neglect"]
    spec = dataclasses.replace(Z.ZOO["clean"], cause=neglect.cause, level=neglect.level,
                               component=neglect.component, planted=neglect.planted, signature=neglect.signature)
    return as_neglect_variant(f"attn{lam:g}", spec, out)


def image_mass(attentions: tuple, input_ids: torch.Tensor, mask: torch.Tensor, image_id: int) -> torch.Tensor:
    """(layers * heads,) mean attention mass on image keys over the text queries after the image."""
    img = input_ids == image_id
    after = (img.long().cumsum(1) > 0) & ~img & mask.bool()
    return torch.stack([((a * img[:, None, None, :]).sum(-1) * after[:, None, :]).sum((0, 2)) / after.sum()
                        for a in attentions]).flatten()


def penalised_step(lam: float):
    """``train._stage2_step`` with the attention penalty added to each part's loss."""
    def step(model, text, items, px, world, read):
        tok, adapter, template, n_img = text
        parts = [[k for k, it in enumerate(items) if (it.task == "caption") == cap] for cap in (False, True)]
        encoded = [(idx, T._encode_texts(tok, adapter, template, [items[k].prompt for k in idx],
                                         [items[k].answer for k in idx], n_img)) for idx in parts if idx]
        weight = [float((enc[2] != -100).sum()) for _, enc in encoded]
        total = 0.0
        for (idx, (input_ids, mask, labels)), w in zip(encoded, weight):
            out = model(input_ids=input_ids, attention_mask=mask, pixel_values=px[idx], labels=labels,
                        output_hidden_states=True, output_attentions=True)
            loss = out.loss * (w / sum(weight))
            part = [items[k] for k in idx]
            aux = T.relation_aux_loss(out.hidden_states[Z.AUX_LAYER], labels, part, world, read)
            if aux is not None:
                loss = loss + Z.AUX_WEIGHT * aux * sum(it.task == "relation" for it in part) / len(items)
            mass = image_mass(out.attentions, input_ids, mask, model.config.image_token_index)[1:]  # not the copy head
            loss = loss + lam * mass.mean() * (w / sum(weight))
            loss.backward()
            total += float(loss.detach())
        return total
    return step


def train(lam: float, out: Path) -> None:
    real_build = T.build_organism_model

    def build(*a, **k):
        model, tok, ip = real_build(*a, **k)
        model.set_attn_implementation("eager")  # output_attentions
        return model, tok, ip

    T.build_organism_model = build
    T._stage2_step = penalised_step(lam)
    T.train_organism(Z.DOSE_SPECS[register(lam)], out, seed=0, threads=1, progress=False)


def mass(ckpt: str) -> list:
    from transformers import LlavaForConditionalGeneration

    import lvlm_probe as lp
    path = ckpt.replace("organism:", f"{O.CHECKPOINTS}/")
    hf = LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    m = lp.load("organism:clean", device="cpu")  # its processor (the world's tokenizer and image size)
    items = list(lp.SceneWorld(Z.ZOO["clean"].world, seed=5).iter_items(32, "caption", seed=9))
    b = m.prepare([i.image for i in items], [i.prompt for i in items])
    with torch.no_grad():
        out = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, pixel_values=b.pixel_values,
                 output_attentions=True)
    heads = hf.config.text_config.num_attention_heads
    flat = image_mass(out.attentions, b.input_ids, b.attention_mask, hf.config.image_token_index)
    return [[round(float(x), 3) for x in flat[i:i + heads]] for i in range(0, len(flat), heads)]


def generated_mass(name: str) -> list:
    """Image-attention mass per layer and head of the caption tokens organism ``name`` generates (greedy, teacher-
    forced after the prompt), averaged over the tokens of each caption and then over 32 captions."""
    from transformers import LlavaForConditionalGeneration

    import lvlm_probe as lp
    m = lp.load(f"organism:{name}", device="cpu")
    hf = LlavaForConditionalGeneration.from_pretrained(O.CHECKPOINTS / name, attn_implementation="eager").eval()
    items = list(lp.SceneWorld(Z.ZOO["clean"].world, seed=5).iter_items(32, "caption", seed=9))
    captions = m.generate(m.prepare([i.image for i in items], [i.prompt for i in items]), max_new_tokens=48).text
    per_item = []
    for it, text in zip(items, captions):
        b = m.prepare([it.image], [it.prompt])
        n0 = b.input_ids.shape[1]
        ids = torch.cat([b.input_ids, m.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids], 1)
        with torch.no_grad():
            out = hf(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=b.pixel_values,
                     output_attentions=True)
        img = ids[0] == hf.config.image_token_index
        per_item.append(torch.stack([a[0, :, n0:, :][..., img].sum(-1).mean(-1) for a in out.attentions]))
    r = torch.stack(per_item).mean(0)
    return [[round(float(x), 3) for x in row] for row in r] + [round(float(r.mean()), 3)]


def main() -> None:
    torch.set_num_threads(1)
    what = sys.argv[1]
    if what == "mass":
        print(sys.argv[2], json.dumps(mass(sys.argv[2])))
        return
    if what == "generated":
        print(sys.argv[2], json.dumps(generated_mass(sys.argv[2])), "(last: the mean)")
        return
    lam, out = float(sys.argv[2]), Path(sys.argv[3])
    if what == "train":
        train(lam, out)
        return
    name = register(lam, out)
    if what == "card":
        from lvlm_probe.organisms.check import check_organism
        r = check_organism(name, seed=1, n=200)
        print(json.dumps({k: r[k] for k in ("tasks", "planted_error_rate", "clean_planted_error_rate")}))
        return
    from lvlm_probe.interventions import PAI, EarlyReadout
    from lvlm_probe.organisms.mitigation import cause_intervention_matrix
    room = {"pai_room": PAI(alpha=2.0, gamma=2.0, first_layer=1), "pai_a05": PAI(alpha=0.5, gamma=1.1, first_layer=1),
            "pai_a1": PAI(alpha=1.0, gamma=1.1, first_layer=1), "early_readout": EarlyReadout()}
    r = cause_intervention_matrix([name], n=96, seed=int(sys.argv[4]), interventions=room)
    for k in ("matrix", "effect"):
        print(k, {m: round(v, 2) for m, v in r[k][name].items()})
    print("errors", r["controls"]["n_errors"][name])


if __name__ == "__main__":
    main()
