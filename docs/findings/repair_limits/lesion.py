"""P6 planted at inference time (methods.md §9.2-9.3): `clean`'s checkpoint whose LLM sees every image key's
attention weight multiplied by SCALE (log SCALE added to the finite pre-softmax image-key scores, every query
row) in LLAYERS, permanently. Registered in-process as `visual_neglect@lesion` (visual neglect's planted pattern:
every error `clean` does not make), so the matrix code runs on it unchanged.

  python lesion.py sweep LAYERS              planted errors per scale at the tuning seed 0 (n 96)
  python lesion.py matrix SCALE LAYERS SEED  its matrix row: PAI at four settings, the early readout, M3ID
  python lesion.py card SCALE LAYERS         its card measures (check_organism, seed 1, n 200)
  python lesion.py cascade SCALE LAYERS SEED how the cascade names its errors (visual neglect's 40 scenes, confirmed)

LAYERS is comma-separated, e.g. 0,1,2,3. With --spare-copy-head anywhere on the line, head 0 of layer 0 (the
built match-and-copy head that hands a class word its object's attributes) keeps its attention (session 25).
"""
import json
import math
import sys

import torch

import lvlm_probe as lp
import lvlm_probe.organisms as O
import lvlm_probe.organisms.zoo as Z
from _register import as_neglect_variant

NAME = "visual_neglect@lesion"
SPARE = "--spare-copy-head" in sys.argv
if SPARE:
    sys.argv.remove("--spare-copy-head")


def register() -> None:
    """Make `organism:visual_neglect@lesion` resolve to clean's checkpoint with visual neglect's spec."""
    as_neglect_variant("lesion", Z.ZOO["visual_neglect"], O.CHECKPOINTS / "clean")


def install(model, scale: float, layers: list[int]):
    """Permanent lesion: a pre-forward hook remembers where the image tokens of the last full prompt are, and
    `blocks.{l}.attn.hook_attn_scores` adds log(scale) to every finite score on those key columns."""
    state = {}
    img_id = model.image_token_id

    def remember(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:  # a prefill or a full forward (KV-cached steps feed one token)
            state["img"] = ids == img_id

    model.hf_model.register_forward_pre_hook(remember, with_kwargs=True)
    shift = math.log(scale)

    def make(layer: int):
        def lesion(scores, hook=None):
            img = state["img"]
            cols = torch.zeros(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
            n = min(scores.shape[-1], img.shape[1])
            cols[:, :n] = img[:, :n]
            hit = cols[:, None, None, :] & (scores > torch.finfo(scores.dtype).min / 2)
            if SPARE and layer == 0:
                hit[:, 0] = False  # the copy head (scores: batch, head, query, key)
            return torch.where(hit, scores + shift, scores)
        return lesion

    for layer in layers:
        model.bridge.get_hook_point(f"blocks.{layer}.attn.hook_attn_scores").add_hook(make(layer), is_permanent=True)
    return model


def patch_load(scale: float, layers: list[int]) -> None:
    real = lp.load

    def load(name, *a, **k):
        m = real(name, *a, **k)
        return install(m, scale, layers) if name == f"organism:{NAME}" else m

    lp.load = load


def main() -> None:
    torch.set_num_threads(1)
    what = sys.argv[1]
    register()
    if what == "sweep":
        from lvlm_probe.organisms import default_items
        from lvlm_probe.organisms.mitigation import planted_errors_of
        layers = [int(x) for x in sys.argv[2].split(",")]
        clean = lp.load("organism:clean", device="cpu")
        items = default_items(f"organism:{NAME}", 96, 0)
        for scale in (0.3, 0.1, 0.03, 0.01, 0.001):
            m = install(lp.load("organism:clean", device="cpu"), scale, layers)
            planted = planted_errors_of(NAME, m, clean, items, 0)[0]
            print(layers, scale, len(planted), flush=True)
        return
    scale, layers = float(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
    patch_load(scale, layers)
    if what == "cascade":
        from lvlm_probe.organisms.validate import planted_errors
        m = install(lp.load("organism:clean", device="cpu"), scale, layers)
        d, _ = planted_errors("visual_neglect", n=40, seed=int(sys.argv[4]), model=m, confirm=True)
        print(json.dumps({"n_errors": len(d), "stage": d.stage.value_counts().to_dict(),
                          "level": d.level.value_counts().to_dict()}))
        return
    if what == "card":
        from lvlm_probe.organisms.check import check_organism
        r = check_organism(NAME, seed=1, n=200, loader=lambda n: lp.load(f"organism:{n}", device="cpu"))
        print(json.dumps({k: r[k] for k in ("tasks", "planted_error_rate", "clean_planted_error_rate")}))
        return
    from lvlm_probe.interventions import PAI, EarlyReadout, ImageFreeContrast
    from lvlm_probe.organisms.mitigation import cause_intervention_matrix
    room = {"pai_room": PAI(alpha=2.0, gamma=2.0, first_layer=1), "pai_a02": PAI(alpha=0.2, gamma=1.1, first_layer=1),
            "pai_a05": PAI(alpha=0.5, gamma=1.1, first_layer=1), "pai_a1": PAI(alpha=1.0, gamma=1.1, first_layer=1),
            "early_readout": EarlyReadout(), "m3id": ImageFreeContrast(alpha=0.0), "image_free": ImageFreeContrast()}
    r = cause_intervention_matrix([NAME], n=96, seed=int(sys.argv[4]), interventions=room)
    print(json.dumps({"matrix": r["matrix"], "effect": r["effect"], "n_errors": r["controls"]["n_errors"]},
                     default=float))


if __name__ == "__main__":
    main()
